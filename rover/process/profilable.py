"""The ``support_ebpf_profiling`` property: can the process's executable be read for symbols?

A cheap check (readable, ELF magic) rather than loading symbols: it runs for every discovered
process on every scan, and the symbolizer reports its own failures at profiling time.
"""

from __future__ import annotations

from typing import BinaryIO

from rover.hostfs import HostFS, ProcessGone
from rover.process.procfs import HostProcess
from rover.symbols.mapped_files import MAX_MAPPED_FILE

_ELF_MAGIC = b"\x7fELF"
_DELETED_SUFFIX = " (deleted)"


def executable_is_readable_elf(hostfs: HostFS, process: HostProcess) -> bool:
    """Through the process's own root first (its mount namespace, resolved inside it),
    then ``/proc/PID/exe``, which still opens a binary that was deleted or replaced."""
    by_root = process.exe_path and not process.exe_path.endswith(_DELETED_SUFFIX)
    for through_root in (True, False) if by_root else (False,):
        try:
            with _open_executable(hostfs, process, through_root) as f:
                if f.read(len(_ELF_MAGIC)) == _ELF_MAGIC:
                    return True
        except (OSError, ProcessGone):
            continue
    return False


def _open_executable(hostfs: HostFS, process: HostProcess, through_root: bool) -> BinaryIO:
    if through_root:
        return hostfs.open_target_file(process.pid, process.exe_path, MAX_MAPPED_FILE)[0]
    return open(hostfs.proc_path(process.pid, "exe"), "rb")  # noqa: SIM115 - the caller's `with`


class ProfilingSupport:
    """Remembers the answer per process (pid and start time) while the process lives."""

    def __init__(self, hostfs: HostFS) -> None:
        self._hostfs = hostfs
        self._known: dict[tuple[int, int], bool] = {}

    def property_value(self, process: HostProcess) -> str:
        key = (process.pid, process.start_time)
        if key not in self._known:
            self._known[key] = executable_is_readable_elf(self._hostfs, process)
        return "true" if self._known[key] else "false"

    def retain(self, alive: set[tuple[int, int]]) -> None:
        """Forget processes that are gone, so the memory follows the live set."""
        for key in self._known.keys() - alive:
            del self._known[key]
