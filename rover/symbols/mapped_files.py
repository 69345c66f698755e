"""Finding the file behind a process's mapping, as the process sees it.

A mapped file is reached through ``/proc/PID/root/<path>`` (so a process in
another mount namespace resolves to its own file), or through
``/proc/PID/map_files/<start>-<end>``, which opens exactly the mapped inode
even when it was deleted or replaced since.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from rover.hostfs import HostFS
from rover.symbols.maps import Mapping

_MAX_VDSO_BYTES = 1 << 20


def locate_mapped_file(hostfs: HostFS, pid: int, mapping: Mapping) -> tuple[Path, os.stat_result]:
    """A path that opens ``mapping``'s file, and that file's stat.

    The root path is used when it still holds the mapped inode; otherwise the
    map_files entry. Raises the first ``OSError`` when neither can be reached.
    """
    by_root = hostfs.target_path(pid, mapping.path)
    by_range = hostfs.proc_path(pid, "map_files", mapping.map_files_name)
    candidates = [by_range] if mapping.deleted else [by_root, by_range]
    fallback: tuple[Path, os.stat_result] | None = None
    error: OSError | None = None
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError as exc:
            error = error or exc
            continue
        if not stat.S_ISREG(st.st_mode):
            error = error or IsADirectoryError(f"{path} is not a regular file")
            continue
        if st.st_ino == mapping.inode or not mapping.inode:
            return path, st
        # A different inode (replaced file, or overlayfs numbering): prefer map_files.
        fallback = fallback or (path, st)
    if fallback is not None:
        return fallback
    raise error or FileNotFoundError(str(by_root))


def read_vdso(hostfs: HostFS, pid: int, mapping: Mapping) -> io.BytesIO:
    """The vDSO image of ``pid``, read from its memory (it exists in no file)."""
    size = min(mapping.end - mapping.start, _MAX_VDSO_BYTES)
    with open(hostfs.proc_path(pid, "mem"), "rb", buffering=0) as mem:
        mem.seek(mapping.start)
        return io.BytesIO(mem.read(size))
