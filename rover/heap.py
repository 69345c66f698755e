"""The C heap of a long-running rover process: kept small and given back.

glibc keeps memory freed by C code (LLVM, a parse's buffers) in its arenas, and by
default gives each thread that allocates an arena of its own (up to 8 per core), so
a short burst on one thread leaves its peak behind for the process's whole life.
The agent limits the arenas and serves big buffers from mmap (returned on free),
and returns free heap after the bursts it knows of. Elsewhere than glibc nothing
here does anything.
"""

from __future__ import annotations

import ctypes
import functools

_M_MMAP_THRESHOLD = -3  # mallopt parameters (malloc.h)
_M_ARENA_MAX = -8
AGENT_ARENAS = 2
AGENT_MMAP_THRESHOLD = 128 * 1024  # fixed: glibc's default grows it up to 32 MiB


def release_free_heap() -> None:
    """Return the C heap's free memory to the system (glibc's malloc_trim)."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def limit_arenas() -> bool:
    """Two malloc arenas for the whole process, and buffers above 128 KiB from mmap;
    call before threads start. False where mallopt is missing (not glibc)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(
        mallopt(_M_ARENA_MAX, AGENT_ARENAS) and mallopt(_M_MMAP_THRESHOLD, AGENT_MMAP_THRESHOLD)
    )


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the C library this process already uses
    except OSError:  # pragma: no cover - no dynamic loader
        return None
