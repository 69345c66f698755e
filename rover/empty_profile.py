"""Why a `rover profile` came out empty, in words a person can act on.

An empty profile is not an error (an idle process is a fair answer), but silence leaves
the user guessing between "it did not run" and "the profiler is broken". The kernel's
own accounting of each target, read before and after sampling, tells them apart: CPU
time of the whole thread group (``/proc/PID/stat``), context switches of every thread
(``/proc/PID/task/TID/status``) and whether it is a kernel thread (``PF_KTHREAD``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from rover.hostfs import HostFS, ProcessGone
from rover.profile import ProfileType

_PF_KTHREAD = 0x00200000  # include/linux/sched.h
_SWITCHES = re.compile(r"^(?:non)?voluntary_ctxt_switches:\s*(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Activity:
    """What the kernel accounted to one process up to a moment."""

    name: str
    kernel_thread: bool
    cpu_ticks: int  # utime + stime, in clock ticks
    switches_by_thread: dict[int, int] = field(default_factory=dict)


def read_activity(hostfs: HostFS, pids: list[int]) -> dict[int, Activity]:
    """The activity of each of ``pids`` still alive (gone ones are left out)."""
    found = {}
    for pid in pids:
        try:
            found[pid] = _read_one(hostfs, pid)
        except (ProcessGone, OSError, ValueError, IndexError):
            continue
    return found


def _read_one(hostfs: HostFS, pid: int) -> Activity:
    stat = hostfs.read_text(pid, "stat")
    name = stat[stat.find("(") + 1 : stat.rfind(")")]
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state) of proc(5)
    flags, utime, stime = int(fields[6]), int(fields[11]), int(fields[12])
    switches = {}
    for task in hostfs.proc_path(pid, "task").iterdir():
        try:
            status = hostfs.read_text(pid, "task", task.name, "status")
        except (ProcessGone, OSError):
            continue  # the thread exited
        switches[int(task.name)] = sum(int(n) for n in _SWITCHES.findall(status))
    return Activity(name, bool(flags & _PF_KTHREAD), utime + stime, switches)


def explain_empty(
    profile_type: ProfileType,
    before: dict[int, Activity],
    after: dict[int, Activity],
    frequency: int,
    sampled_seconds: float,
) -> str:
    """Why nothing was recorded: the run was too short, else one sentence per process.

    ``before``/``after`` bracket the sampling (a little wider: reading the targets' maps).
    """
    period_ms = 1000 / frequency
    if profile_type is ProfileType.ON_CPU and sampled_seconds * 1000 < period_ms:
        return (
            f"sampling lasted {sampled_seconds * 1000:.0f} ms, less than one sampling period "
            f"({period_ms:.0f} ms at {frequency} Hz)"
        )
    reasons = []
    for pid, start in sorted(before.items()):
        end = after.get(pid)
        who = f"pid {pid} ({start.name})"
        if start.kernel_thread:
            who += " is a kernel thread (no user stack: only kernel frames can be sampled) and"
        if end is None:
            reasons.append(f"{who} exited before anything was recorded")
        elif profile_type is ProfileType.ON_CPU:
            reasons.append(f"{who} {_on_cpu_reason(start, end, frequency)}")
        else:
            reasons.append(f"{who} {_off_cpu_reason(start, end)}")
    return "; ".join(reasons)


def _cpu_ms(start: Activity, end: Activity) -> int:
    return round((end.cpu_ticks - start.cpu_ticks) * 1000 / os.sysconf("SC_CLK_TCK"))


def _on_cpu_reason(start: Activity, end: Activity, frequency: int) -> str:
    used = _cpu_ms(start, end)
    period = 1000 / frequency
    if used == 0:
        return "did not run on a CPU while it was sampled (0 ms of CPU time)"
    if used < period:
        return (
            f"used only {used} ms of CPU, less than one sampling period "
            f"({period:.0f} ms at {frequency} Hz)"
        )
    return f"used {used} ms of CPU, yet no sample was recorded (run `rover check`)"


def _off_cpu_reason(start: Activity, end: Activity) -> str:
    switches = sum(
        n - start.switches_by_thread.get(tid, 0) for tid, n in end.switches_by_thread.items()
    )
    if switches <= 0 and _cpu_ms(start, end) == 0:
        return (
            "stayed asleep the whole time: off-CPU time is counted when a thread wakes up, "
            "and none did"
        )
    if switches <= 0:
        return "ran without ever leaving the CPU"
    return (
        f"left the CPU {switches} time(s) but did not come back before the end: "
        "off-CPU time is counted when a thread wakes up"
    )
