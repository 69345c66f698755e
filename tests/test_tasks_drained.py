"""One drain, one profile: the CLI run and the agent's tasks build it the same way
(rover/tasks/drained.py), so they report the same counters and the same sample period."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import SimpleNamespace

from rover.bpf.engine import DrainResult, RawStack
from rover.hostfs import HostFS
from rover.profile import Frame, FrameKind, ProcessInfo, Profile, ProfileType
from rover.tasks.drained import profile_from_drain, reported_counters, sample_period_ns
from rover.tasks.manager import TaskManager
from rover.tasks.runner import ProfilingRunner

PID = os.getpid()
OTHER = PID + 1_000_000  # a process no run profiles


class NameSymbolizer:
    """Names each address after itself; addresses >= 0x9000 are left unsymbolized."""

    def prepare(self, pid: int) -> None:
        pass

    def forget(self, pid: int) -> None:
        pass

    def user_frames(self, pid: int, addresses) -> list[Frame]:
        return [Frame(f"f{a:x}", FrameKind.USER, "app", symbolized=a < 0x9000) for a in addresses]

    def kernel_frames(self, addresses) -> list[Frame]:
        return [Frame(f"k{a:x}", FrameKind.KERNEL, "[kernel]") for a in addresses]


def a_drain() -> DrainResult:
    return DrainResult(
        stacks=[
            RawStack(PID, (0x1000, 0x2000), (0xF1,), (3,)),
            RawStack(PID, (0x9001,), (), (2,)),
            RawStack(PID, (), (), (1,)),  # nothing captured
            RawStack(OTHER, (0x1000,), (), (5,)),
        ],
        counters={"events": 11, "user_stack_collisions": 2, "counts_map_full": 0},
    )


class FakeEngine:
    """Hands out one prepared drain, then empty ones."""

    def __init__(self, drained: DrainResult, frequency: int = 99) -> None:
        self.type = ProfileType.ON_CPU
        self.config = SimpleNamespace(frequency=frequency)
        self._drains = [drained]

    def drain(self) -> DrainResult:
        return self._drains.pop() if self._drains else DrainResult()

    def add_pid(self, pid: int) -> None:
        pass

    def settle(self, timeout: float) -> bool:
        return True

    def remove_pid(self, pid: int) -> None:
        pass

    def forget_exited_threads(self) -> None:
        pass


class FakeEngines:
    def __init__(self, engine: FakeEngine) -> None:
        self._engine = engine

    def engine(self, profile_type: ProfileType, warm_pids: object = ()) -> FakeEngine:
        return self._engine

    def acquire(self, profile_type: ProfileType, pid: int) -> None:
        pass

    def release(self, profile_type: ProfileType, pid: int) -> None:
        pass

    def loaded(self) -> dict[ProfileType, FakeEngine]:
        return {ProfileType.ON_CPU: self._engine}


@dataclass
class RecordingUploader:
    added: list[tuple[str, str, Profile]] = field(default_factory=list)

    def add(self, task_id: str, process_id: str, profiling_start_ms: int, profile: Profile) -> None:
        self.added.append((task_id, process_id, profile))

    def flush(self) -> bool:
        return True

    def forget_task(self, task_id: str, process_id: str | None = None) -> None:
        pass


def test_the_cli_run_and_an_agent_task_make_the_same_profile_of_one_drain():
    runner = ProfilingRunner(FakeEngine(a_drain()), NameSymbolizer(), [PID], HostFS())
    runner.start()
    by_runner = runner.flush()

    uploader = RecordingUploader()
    engines = FakeEngines(FakeEngine(a_drain()))
    manager = TaskManager(engines, NameSymbolizer(), uploader, resolve=lambda _: None)
    manager.run_now("t1", "ON_CPU", {"p1": PID}, 60)
    manager.flush()
    [(task_id, process_id, by_task)] = uploader.added

    assert (task_id, process_id) == ("t1", "p1")
    assert by_task.samples == by_runner.samples
    assert by_task.period_ns == by_runner.period_ns == 1_000_000_000 // 99
    assert set(by_runner.processes) == set(by_task.processes) == {PID}
    # the drain's counters: in the run's profile, in the agent's counters; never "events"
    expected = {
        "user_stack_collisions": 2,
        "unsymbolized_frames": 1,
        "stacks_empty": 1,
    }
    assert by_runner.counters == expected
    assert {name: manager.counters[name] for name in expected} == expected
    assert "events" not in manager.counters and "counts_map_full" not in manager.counters


def test_counters_reported_are_the_non_zero_ones_but_the_event_total() -> None:
    counters = {"events": 5, "ringbuf_drops": 3, "stacks_unresolved": 0}
    assert reported_counters(counters) == {"ringbuf_drops": 3}


def test_an_on_cpu_sample_weighs_one_period_and_off_cpu_has_none() -> None:
    assert sample_period_ns(ProfileType.ON_CPU, 100) == 10_000_000
    assert sample_period_ns(ProfileType.ON_CPU, 0) == 1_000_000_000
    assert sample_period_ns(ProfileType.OFF_CPU, 100) == 0


def test_off_cpu_values_are_kept_as_drained():
    drained = DrainResult(stacks=[RawStack(PID, (0x1000,), (), (2, 5000))])
    info = {PID: ProcessInfo(PID, "me")}
    profile = profile_from_drain(drained, ProfileType.OFF_CPU, 99, NameSymbolizer(), info)
    assert list(profile.samples.values()) == [[2, 5000]] and profile.period_ns == 0


def test_a_profile_splits_into_one_per_process_with_samples() -> None:
    profile = Profile.new(
        ProfileType.ON_CPU,
        period_ns=7,
        start_time_ns=1,
        duration_ns=2,
        processes={1: ProcessInfo(1, "a"), 2: ProcessInfo(2, "b"), 3: ProcessInfo(3, "c")},
    )
    frames = (Frame("main"),)
    profile.add(1, frames, [1, 7])
    profile.add(2, frames, [2, 14])
    profile.count("user_stack_collisions", 4)
    parts = profile.split_by_process()
    assert set(parts) == {1, 2}
    assert parts[2].total() == 2 and parts[2].processes == {2: ProcessInfo(2, "b")}
    assert (parts[1].period_ns, parts[1].start_time_ns, parts[1].duration_ns) == (7, 1, 2)
    assert parts[1].counters == {}
