"""The one way to read another process's files and the host's files.

The agent may run in a container with the host's ``/`` mounted somewhere (for
example ``/host``), and the host's ``/proc`` possibly somewhere else again (Rover's
``ROVER_HOST_PROC_MAPPING``); every path to ``/proc`` or to host files goes through
:class:`HostFS` so both mappings are honoured in one place. Files that belong to
a target process (its executable, its libraries) are opened through
``/proc/PID/root`` so processes in other mount namespaces resolve.

Files we read on behalf of a target (its executable and libraries, perf maps,
debug files) are opened with :meth:`HostFS.open_target_file`, which resolves
them inside the target's root (symlinks and ``..`` included, see
:mod:`rover.rooted_open`) and accepts only bounded regular files; host files
found for a target (its debug files under the host's ``/usr/lib/debug``) with
:meth:`HostFS.open_host_file`, inside the host's root.

A process that exits while we read it is a normal event: it surfaces as
:class:`ProcessGone`, never as a bare ``FileNotFoundError``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from rover.rooted_open import open_in_root


class ProcessGone(Exception):
    """The process no longer exists (or never did)."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"process {pid} does not exist (it may have exited)")
        self.pid = pid


_GONE_ERRNOS = {errno.ENOENT, errno.ESRCH}


class HostFS:
    """Paths on the host, given where the host's root and its ``/proc`` are mounted.

    ``proc`` defaults to ``<root>/proc``; an empty string counts as not given.
    """

    def __init__(
        self, root: str | os.PathLike[str] = "/", proc: str | os.PathLike[str] | None = None
    ) -> None:
        self.root = Path(root)
        self.proc = Path(proc) if proc else self.root / "proc"

    def host_path(self, path: str | os.PathLike[str]) -> Path:
        """A host absolute path (``/lib/modules``) as seen from here; ``/proc`` and paths
        under it resolve in the proc mapping."""
        relative = str(path).lstrip("/")
        parts = PurePosixPath(relative).parts
        if parts[:1] == ("proc",):
            return self.proc.joinpath(*parts[1:])
        return self.root / relative

    def proc_path(self, pid: int, *parts: str) -> Path:
        """``/proc/PID/<parts>`` of the host's procfs."""
        return self.proc.joinpath(str(pid), *parts)

    def target_path(self, pid: int, path: str) -> Path:
        """A path inside the target process's own root (its mount namespace)."""
        return self.proc_path(pid, "root", path.lstrip("/"))

    def open_target_file(
        self, pid: int, path: str, max_bytes: int | None
    ) -> tuple[BinaryIO, os.stat_result]:
        """``path`` as process ``pid`` sees it, opened inside its root, and its stat.

        Raises :class:`ProcessGone` when the process (its root) is gone, ``OSError``
        when the file is missing, escapes nowhere (see :func:`open_in_root`), is not
        a regular file or is bigger than ``max_bytes`` (None: the caller reads only a
        bounded part of it).
        """
        try:
            return open_in_root(self.proc_path(pid, "root"), path, max_bytes)
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS and not self.exists(pid):
                raise ProcessGone(pid) from exc
            raise

    def open_host_file(self, path: str, max_bytes: int | None) -> tuple[BinaryIO, os.stat_result]:
        """A host file opened inside the host's root (absolute symlinks in it point
        into the host's tree, not ours), and its stat; the same checks as
        :meth:`open_target_file`."""
        return open_in_root(self.root, path, max_bytes)

    def exists(self, pid: int) -> bool:
        return self.proc_path(pid).is_dir()

    def is_running(self, pid: int) -> bool:
        """Alive and not a zombie (an exited process its parent has not reaped yet)."""
        try:
            stat = self.read_text(pid, "stat")
        except (ProcessGone, OSError):
            return False
        state = stat.rsplit(")", 1)[-1].split()[:1]
        return state not in (["Z"], ["X"])

    def read_text(self, pid: int, *parts: str) -> str:
        """Read ``/proc/PID/<parts>``; raise :class:`ProcessGone` if it vanished."""
        try:
            return self.proc_path(pid, *parts).read_text(errors="replace")
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                raise ProcessGone(pid) from exc
            raise

    def read_bytes(self, pid: int, *parts: str) -> bytes:
        try:
            return self.proc_path(pid, *parts).read_bytes()
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                raise ProcessGone(pid) from exc
            raise

    def comm(self, pid: int) -> str:
        """The process's short name (``/proc/PID/comm``)."""
        return self.read_text(pid, "comm").strip()

    def cmdline(self, pid: int) -> list[str]:
        raw = self.read_bytes(pid, "cmdline")
        return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
