"""Why a profile is empty: what the kernel accounted to each target, in words."""

import os
import time

import pytest

from rover.empty_profile import Activity, explain_empty, read_activity
from rover.hostfs import HostFS
from rover.profile import ProfileType

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def activity(cpu_ms=0.0, switches=None, kernel_thread=False, name="idle"):
    return Activity(name, kernel_thread, round(cpu_ms / TICK_MS), switches or {7: 0})


def test_reads_this_process_and_a_kernel_thread():
    found = read_activity(HostFS(), [os.getpid(), 2])
    me, kthreadd = found[os.getpid()], found[2]
    assert not me.kernel_thread and os.getpid() in me.switches_by_thread
    assert kthreadd.kernel_thread and kthreadd.name == "kthreadd"


def test_cpu_time_and_switches_are_those_of_the_whole_process():
    before = read_activity(HostFS(), [os.getpid()])[os.getpid()]
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:
        pass
    time.sleep(0.01)  # leaves the CPU at least once
    after = read_activity(HostFS(), [os.getpid()])[os.getpid()]
    assert after.cpu_ticks > before.cpu_ticks
    assert sum(after.switches_by_thread.values()) > sum(before.switches_by_thread.values())


def test_gone_processes_are_left_out():
    assert read_activity(HostFS(), [2**22 + 1]) == {}


@pytest.mark.parametrize(
    ("profile_type", "end", "reason"),
    [
        (ProfileType.ON_CPU, activity(), "did not run on a CPU while it was sampled"),
        (
            ProfileType.ON_CPU,
            activity(cpu_ms=TICK_MS),
            f"used only {TICK_MS:.0f} ms of CPU, less than one sampling period (50 ms at 20 Hz)",
        ),
        (ProfileType.ON_CPU, activity(cpu_ms=500), "used 500 ms of CPU, yet no sample"),
        (ProfileType.OFF_CPU, activity(), "stayed asleep the whole time"),
        (ProfileType.OFF_CPU, activity(cpu_ms=500), "ran without ever leaving the CPU"),
        (
            ProfileType.OFF_CPU,
            activity(switches={7: 1, 8: 2}),  # thread 8 started during the run
            "left the CPU 3 time(s) but did not come back before the end",
        ),
        (ProfileType.OFF_CPU, None, "exited before anything was recorded"),
    ],
)
def test_each_reason(profile_type, end, reason):
    after = {} if end is None else {42: end}
    text = explain_empty(profile_type, {42: activity()}, after, frequency=20, sampled_seconds=1)
    assert text.startswith(f"pid 42 (idle) {reason}"), text


def test_a_run_shorter_than_one_sampling_period_says_so():
    """Stopped at once: the busy process's CPU time went to reading its maps, not sampled."""
    busy = {42: activity(cpu_ms=500)}
    text = explain_empty(ProfileType.ON_CPU, {42: activity()}, busy, 99, sampled_seconds=0.004)
    assert text == "sampling lasted 4 ms, less than one sampling period (10 ms at 99 Hz)"


def test_a_kernel_thread_is_named_as_one_and_reasons_are_per_process():
    kthread = activity(kernel_thread=True, name="kthreadd")
    both = {2: kthread, 42: activity()}
    text = explain_empty(ProfileType.ON_CPU, both, both, 99, sampled_seconds=1)
    first, second = text.split("; ")
    assert first == (
        "pid 2 (kthreadd) is a kernel thread (no user stack: only kernel frames can be "
        "sampled) and did not run on a CPU while it was sampled (0 ms of CPU time)"
    )
    assert second.startswith("pid 42 (idle) did not run")
