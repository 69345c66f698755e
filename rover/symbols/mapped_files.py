"""Opening the file behind a process's mapping, as the process sees it.

A mapped file is reached through the process's root (resolved inside it, so a
process in another mount namespace resolves to its own file and a symlink it
planted cannot send us out of its root), or through
``/proc/PID/map_files/<start>-<end>``, which opens exactly the mapped inode
even when it was deleted or replaced since. Either way it must be a regular
file of at most :data:`MAX_MAPPED_FILE` bytes.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from typing import BinaryIO

from rover.hostfs import HostFS, ProcessGone
from rover.symbols.maps import Mapping

MAX_MAPPED_FILE = 4 << 30  # ELF files are read lazily; the biggest binaries are ~2 GB
_MAX_VDSO_BYTES = 1 << 20


def open_mapped_file(hostfs: HostFS, pid: int, mapping: Mapping) -> tuple[BinaryIO, os.stat_result]:
    """``mapping``'s file opened for reading, and its stat.

    The file at the mapping's path in the process's root is used when it still
    is the mapped inode; otherwise the map_files entry. Raises the first
    ``OSError`` when neither can be opened.
    """
    openers = [] if mapping.deleted else [_by_root]
    openers.append(_by_range)
    fallback: tuple[BinaryIO, os.stat_result] | None = None
    error: OSError | None = None
    for opener in openers:
        try:
            stream, st = opener(hostfs, pid, mapping)
        except ProcessGone as exc:
            error = error or FileNotFoundError(errno.ENOENT, str(exc))
            continue
        except OSError as exc:
            error = error or exc
            continue
        if st.st_ino == mapping.inode or not mapping.inode:
            if fallback is not None:
                fallback[0].close()
            return stream, st
        # A different inode (replaced file, or overlayfs numbering): prefer map_files.
        if fallback is None:
            fallback = (stream, st)
        else:
            stream.close()
    if fallback is not None:
        return fallback
    raise error or FileNotFoundError(errno.ENOENT, "no path to the mapped file", mapping.path)


def _by_root(hostfs: HostFS, pid: int, mapping: Mapping) -> tuple[BinaryIO, os.stat_result]:
    return hostfs.open_target_file(pid, mapping.path, MAX_MAPPED_FILE)


def _by_range(hostfs: HostFS, pid: int, mapping: Mapping) -> tuple[BinaryIO, os.stat_result]:
    # A magic link the kernel resolves to the mapped inode itself: nothing to escape.
    path = hostfs.proc_path(pid, "map_files", mapping.map_files_name)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > MAX_MAPPED_FILE:
            raise OSError(errno.EFBIG, f"over the {MAX_MAPPED_FILE >> 20} MiB limit", str(path))
        return os.fdopen(fd, "rb"), st
    except BaseException:
        os.close(fd)
        raise


def read_vdso(hostfs: HostFS, pid: int, mapping: Mapping) -> io.BytesIO:
    """The vDSO image of ``pid``, read from its memory (it exists in no file)."""
    size = min(mapping.end - mapping.start, _MAX_VDSO_BYTES)
    with open(hostfs.proc_path(pid, "mem"), "rb", buffering=0) as mem:
        mem.seek(mapping.start)
        return io.BytesIO(mem.read(size))
