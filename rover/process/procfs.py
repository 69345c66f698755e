"""The host's processes as seen through ``/proc`` (always via :class:`HostFS`).

A process that exits while it is being read is normal churn: it is skipped and counted, never
an error. Kernel threads and zombies are skipped: they have no user-space code to profile.
"""

from __future__ import annotations

import errno
import os
import posixpath
from dataclasses import dataclass

from rover.hostfs import HostFS, ProcessGone

_PF_KTHREAD = 0x00200000  # task flag of kernel threads (include/linux/sched.h)
_COMM_LIMIT = 15  # TASK_COMM_LEN - 1: longer names are truncated by the kernel


@dataclass(frozen=True)
class HostProcess:
    pid: int
    start_time: int  # clock ticks since boot (field 22 of /proc/PID/stat)
    comm: str  # the kernel's task name, at most 15 characters
    cmdline: tuple[str, ...]
    exe_path: (
        str  # readlink of /proc/PID/exe, in the process's own mount namespace; "" if unreadable
    )
    cgroup: str  # the raw content of /proc/PID/cgroup

    @property
    def command_line(self) -> str:
        return " ".join(self.cmdline)

    @property
    def exe_name(self) -> str:
        """The process name as Rover (gopsutil) reports it: the task name, completed from the
        command line's first word when the kernel truncated it."""
        if len(self.comm) >= _COMM_LIMIT and self.cmdline:
            extended = posixpath.basename(self.cmdline[0])
            if extended.startswith(self.comm):
                return extended
        return self.comm


@dataclass
class ProcessListing:
    processes: list[HostProcess]
    vanished: int = 0  # processes that exited while being read


def list_pids(hostfs: HostFS) -> list[int]:
    return sorted(
        int(entry.name) for entry in hostfs.host_path("/proc").iterdir() if entry.name.isdigit()
    )


def read_process(hostfs: HostFS, pid: int) -> HostProcess | None:
    """One process, or None for kernel threads and zombies; raises :class:`ProcessGone`."""
    stat = hostfs.read_text(pid, "stat")
    head, _, tail = stat.rpartition(")")  # the task name may itself contain ") "
    comm = head.partition("(")[2]
    fields = tail.split()  # fields[0] is field 3 (state)
    if len(fields) < 20:
        raise ProcessGone(pid)  # an exiting task can show a truncated stat
    state, flags, start_time = fields[0], int(fields[6]), int(fields[19])
    if flags & _PF_KTHREAD or state in ("Z", "X"):
        return None
    cmdline = tuple(hostfs.cmdline(pid))
    cgroup = hostfs.read_text(pid, "cgroup")
    return HostProcess(pid, start_time, comm, cmdline, _exe_path(hostfs, pid), cgroup)


def scan_host_processes(hostfs: HostFS) -> ProcessListing:
    listing = ProcessListing([])
    for pid in list_pids(hostfs):
        try:
            process = read_process(hostfs, pid)
        except ProcessGone:
            listing.vanished += 1
            continue
        except PermissionError:
            continue  # hidepid or a foreign user namespace: not ours to see
        if process is not None:
            listing.processes.append(process)
    return listing


def _exe_path(hostfs: HostFS, pid: int) -> str:
    try:
        return os.readlink(hostfs.proc_path(pid, "exe"))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ESRCH) and not hostfs.exists(pid):
            raise ProcessGone(pid) from exc
        return ""  # no permission, or the mapping is gone mid-exit
