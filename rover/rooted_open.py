"""Open a file as if ``root`` were ``/``: symlinks and ``..`` never leave ``root``.

A profiled process controls the files under its own root (``/proc/PID/root``):
if it makes ``/tmp/perf-PID.map`` a symlink to ``/etc/shadow``, a plain open
of ``/proc/PID/root/tmp/perf-PID.map`` follows the absolute link in *our*
root and reads the node's file. Every file read on behalf of a target is
therefore resolved here, the way ``chroot`` would resolve it:

- with ``openat2(RESOLVE_IN_ROOT)`` (Linux 5.6+), where the kernel does it;
- else by walking the path one component at a time with ``O_NOFOLLOW``,
  expanding each symlink ourselves, absolute ones from ``root`` and ``..``
  never above it (the same rules, for older kernels and for seccomp
  profiles that refuse ``openat2``).

Magic links (``/proc/self/root`` inside the target) are refused, the file
must be a regular file (a FIFO would block us, a device has side effects on
open) and no bigger than the caller's limit. Each refusal is an ``OSError``
with a message that says which rule it broke.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from collections import deque
from typing import BinaryIO

_SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_MAX_SYMLINKS = 40  # the kernel's own limit (MAXSYMLINKS)
_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC
_NO_OPENAT2 = {errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL}


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_openat2_works: bool | None = None  # None until first tried


def use_openat2(enabled: bool | None) -> None:
    """Force the walk (False), force openat2 (True) or decide by trying (None); for tests."""
    global _openat2_works
    _openat2_works = enabled


def open_in_root(
    root: str | os.PathLike[str], path: str, max_bytes: int | None
) -> tuple[BinaryIO, os.stat_result]:
    """``path`` resolved inside ``root``, opened for reading, and its stat.

    Raises ``OSError``: the usual ones when it does not exist, ``ELOOP`` for a
    magic link or too many symlinks, ``EINVAL`` when it is not a regular file,
    ``EFBIG`` when it is over ``max_bytes`` (None: the caller bounds what it reads).
    """
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        path_fd = _resolve(root_fd, path)
    finally:
        os.close(root_fd)
    try:
        st = os.fstat(path_fd)
        shown = os.path.join(os.fspath(root), path.lstrip("/"))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", shown)
        if max_bytes is not None and st.st_size > max_bytes:
            raise OSError(
                errno.EFBIG, f"{st.st_size >> 20} MiB, over the {max_bytes >> 20} MiB limit", shown
            )
        # Reopening the O_PATH descriptor opens exactly the inode that was checked.
        fd = os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    finally:
        os.close(path_fd)
    return os.fdopen(fd, "rb"), st


def _resolve(root_fd: int, path: str) -> int:
    """An ``O_PATH`` descriptor of ``path`` resolved inside ``root_fd``."""
    global _openat2_works
    if _openat2_works is not False:
        try:
            return _openat2(root_fd, path)
        except OSError as exc:
            if _openat2_works or exc.errno not in _NO_OPENAT2:
                raise
            _openat2_works = False
    return _walk(root_fd, path)


def _openat2(root_fd: int, path: str) -> int:
    global _openat2_works
    how = _OpenHow(_PATH_FLAGS, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(
        _SYS_OPENAT2, root_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how)
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    _openat2_works = True
    return fd


def _walk(root_fd: int, path: str) -> int:
    """Component by component, as ``RESOLVE_IN_ROOT`` does it."""
    dirs = [os.dup(root_fd)]  # the directories from root down to where we are
    remaining = deque(_components(path))
    links = 0
    try:
        while remaining:
            name = remaining.popleft()
            if name == "..":
                if len(dirs) > 1:
                    os.close(dirs.pop())
                continue
            fd = os.open(name, _PATH_FLAGS | os.O_NOFOLLOW, dir_fd=dirs[-1])
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                os.close(fd)
                links += 1
                if links > _MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, "too many symbolic links", path)
                target = os.readlink(name, dir_fd=dirs[-1])
                if target.startswith("/"):
                    while len(dirs) > 1:
                        os.close(dirs.pop())
                remaining.extendleft(reversed(_components(target)))
            elif remaining:
                if not stat.S_ISDIR(st.st_mode):
                    os.close(fd)
                    raise OSError(errno.ENOTDIR, "not a directory", path)
                dirs.append(fd)
            else:
                return fd
        return os.dup(dirs[-1])  # the path named a directory (or root itself)
    finally:
        for fd in dirs:
            os.close(fd)


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]
