"""Profiling tasks: command parsing, scheduling, shared engines, dispatch, upload."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from rover.bpf.engine import EngineConfig
from rover.bpf.headers import HeaderSearch
from rover.bpf.loader import BPFLoadError
from rover.process.model import DiscoveredProcess, Entity, ProcessKind
from rover.profile import ProfileType
from rover.symbols import Symbolizer
from rover.tasks.engines import EngineSet
from rover.tasks.manager import TaskManager
from rover.tasks.model import (
    MAX_DURATION_S,
    MAX_START_AHEAD_S,
    TASK_COMMAND,
    TaskCommandError,
    parse_task_command,
)
from rover.tasks.poller import TaskPoller


def task_args(**overrides):
    now = int(time.time() * 1000)
    args = {
        "SerialNumber": "5c8a0c7e-1111-2222-3333-444455556666",
        "TaskId": "t1",
        "ProcessId": "p1",
        "TaskUpdateTime": str(now),
        "TriggerType": "FIXED_TIME",
        "TargetType": "ON_CPU",
        "TaskStartTime": str(now),
        "ExtensionConfigJSON": "null",
        "FixedTriggerDuration": "60",
    }
    args.update({k: str(v) for k, v in overrides.items() if v is not None})
    for k, v in overrides.items():
        if v is None:
            del args[k]
    return args


# -- parsing ---------------------------------------------------------------


def test_parse_valid_command_ignores_serial_number_and_extra_keys():
    task = parse_task_command({**task_args(ProcessId="b,a"), "Unexpected": "x"})
    assert task.task_id == "t1" and task.process_ids == ("a", "b")
    assert task.target_type == "ON_CPU" and task.duration_s == 60 and task.supported


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"TaskId": None}, "TaskId"),
        ({"FixedTriggerDuration": None}, "FixedTriggerDuration"),
        ({"TaskStartTime": "soon"}, "TaskStartTime is not an integer"),
        ({"TaskUpdateTime": "12.5"}, "TaskUpdateTime is not an integer"),
        ({"FixedTriggerDuration": "0"}, "must be positive"),
        ({"TargetType": "GPU"}, "unknown TargetType"),
        ({"TriggerType": "CONTINUOUS_PROFILING"}, "TriggerType"),
        ({"ExtensionConfigJSON": "{not json"}, "not JSON"),
        ({"ProcessId": " , "}, "empty ProcessId"),
        ({"ExtensionConfigJSON": "[" * 100_000 + "]" * 100_000}, "nests too deeply"),
        ({"FixedTriggerDuration": "99999999999999999999"}, "not a 64-bit integer"),
        ({"FixedTriggerDuration": str(MAX_DURATION_S + 1)}, "longer than the maximum"),
        ({"TaskUpdateTime": str(2**63)}, "not a 64-bit integer"),
        ({"TaskStartTime": "9" * 5000}, "not a 64-bit integer"),
        ({"TaskStartTime": int((time.time() + 50 * 365 * 86400) * 1000)}, "days ahead"),
    ],
)
def test_malformed_commands_name_the_problem(overrides, needle):
    with pytest.raises(TaskCommandError, match=needle):
        parse_task_command(task_args(**overrides))


def test_bounds_are_inclusive():
    now = int(time.time() * 1000)
    start = now + MAX_START_AHEAD_S * 1000
    task = parse_task_command(
        task_args(FixedTriggerDuration=MAX_DURATION_S, TaskStartTime=start), now_ms=now
    )
    assert task.duration_s == MAX_DURATION_S and task.start_time_ms == start


def test_network_task_parses_with_its_rules_and_runs_only_where_a_monitor_is():
    rules = {"NetworkSamplings": [{"URIRegex": "^/api", "When5xx": True}]}
    task = parse_task_command(
        task_args(TargetType="NETWORK", ExtensionConfigJSON=json.dumps(rules))
    )
    assert not task.supported and task.extension_config == rules


# -- the manager with real engines ----------------------------------------


@dataclass
class RecordingUploader:
    added: list = field(default_factory=list)
    flushes: int = 0
    forgotten: list = field(default_factory=list)

    def add(self, task_id, process_id, profiling_start_ms, profile):
        self.added.append((task_id, process_id, profiling_start_ms, profile))

    def flush(self):
        self.flushes += 1
        return True

    def forget_task(self, task_id, process_id=None):
        self.forgotten.append((task_id, process_id))

    def leaf_names(self, task_id):
        names = []
        for tid, _, _, profile in self.added:
            if tid == task_id:
                for key, values in profile:
                    user = [f.name for f in key.frames if not f.is_kernel]
                    names += [user[-1]] * values[0] if user else []
        return names


@pytest.fixture(scope="module")
def engines():
    engine_set = EngineSet(lambda: HeaderSearch().find(), EngineConfig())
    yield engine_set
    engine_set.close()


def make_manager(engines, processes):
    uploader = RecordingUploader()

    def resolve(process_id):
        pid = processes.get(process_id)
        if pid is None:
            return None
        return DiscoveredProcess(pid, Entity("OS_LINUX", "svc", "inst", "proc"), ProcessKind.HOST)

    return TaskManager(engines, Symbolizer(), uploader, resolve), uploader


def run_until(manager, seconds, step=0.25):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        manager.tick()
        manager.flush()
        time.sleep(step)


def run_until_true(manager, condition, timeout=60.0):
    """Tick and flush until ``condition()``: events, not time (a first compile on a loaded
    machine takes seconds, inside a tick)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        run_until(manager, 0.25)


pytestmark_bpf = pytest.mark.bpf


@pytest.mark.bpf
def test_task_profiles_uploads_and_stops_after_its_duration(engines, spawn, workloads):
    busy = spawn([workloads.build("hot_c_fp")])
    manager, uploader = make_manager(engines, {"p1": busy.pid})
    task = parse_task_command(task_args(FixedTriggerDuration=4))
    assert manager.apply(task)
    assert manager.apply(task)  # the same task again is not run twice
    assert len(manager.runs()) == 1
    manager.tick()  # starts it (and loads the engine, if no test did yet)
    run_until(manager, 1.5)
    assert manager.runs()[0].state == "running"  # not before its 4 s are over
    run_until_true(manager, lambda: not manager.runs())  # finished once its 4 s were over
    leaves = uploader.leaf_names("t1")
    assert leaves.count("c_hot_spin") > 0.5 * len(leaves) >= 5  # sampling accuracy: test_engine
    starts = {start for _, _, start, _ in uploader.added}
    assert len(starts) == 1  # profilingStartTime stays constant for the run
    assert {pid for _, pid, _, _ in uploader.added} == {"p1"}
    assert busy.pid not in engines.loaded()[task_type(task)].pids
    assert uploader.forgotten == [("t1", "p1")]  # its stack-id tables can go


def task_type(task):
    from rover.profile import ProfileType

    return ProfileType.ON_CPU if task.target_type == "ON_CPU" else ProfileType.OFF_CPU


@pytest.mark.bpf
def test_future_task_waits_for_its_start_time(engines, spawn, workloads):
    busy = spawn([workloads.build("hot_c_fp")])
    manager, uploader = make_manager(engines, {"p1": busy.pid})
    start = int(time.time() * 1000) + 4000
    manager.apply(parse_task_command(task_args(TaskStartTime=start, FixedTriggerDuration=1)))
    run_until(manager, 1.0)
    assert manager.runs()[0].state == "waiting" and uploader.added == []
    run_until_true(manager, lambda: uploader.added)
    assert uploader.added[0][2] >= start


@pytest.mark.bpf
def test_one_task_several_processes_and_shared_pids(engines, spawn, workloads):
    first = spawn([workloads.build("hot_c_fp")])
    second = spawn([workloads.build("hot_cpp")])
    manager, uploader = make_manager(engines, {"p1": first.pid, "p2": second.pid})
    manager.apply(parse_task_command(task_args(TaskId="both", ProcessId="p1,p2")))
    manager.apply(parse_task_command(task_args(TaskId="one", ProcessId="p1")))
    expected = {("both", "p1"), ("both", "p2"), ("one", "p1")}
    run_until_true(manager, lambda: {(tid, pid) for tid, pid, _, _ in uploader.added} >= expected)
    by_process = {(tid, pid) for tid, pid, _, _ in uploader.added}
    assert by_process == expected
    assert "c_hot_spin" in uploader.leaf_names("one")
    assert "ns::Worker::spin()" in uploader.leaf_names("both")


@pytest.mark.bpf
def test_process_dying_mid_task_ends_it_without_error(engines, spawn, workloads):
    busy = spawn([workloads.build("hot_c_fp")])
    manager, uploader = make_manager(engines, {"p1": busy.pid})
    manager.apply(parse_task_command(task_args(FixedTriggerDuration=60)))
    run_until_true(manager, lambda: "c_hot_spin" in uploader.leaf_names("t1"))
    busy.stop()
    run_until_true(manager, lambda: not manager.runs(), timeout=10)


@pytest.mark.bpf
def test_off_cpu_task(engines, spawn, workloads):
    blocker = spawn([workloads.build("block_c"), "100", "10"])
    manager, uploader = make_manager(engines, {"p1": blocker.pid})
    manager.apply(parse_task_command(task_args(TargetType="OFF_CPU")))
    manager.tick()
    blocker.send_line("go")
    assert blocker.read_line(timeout=60) == "done 100"  # every sleep is over
    manager.flush()
    sleeps = [
        values
        for _, _, _, profile in uploader.added
        for key, values in profile
        if "block_loop" in [f.name for f in key.frames]
    ]
    switches = sum(v[0] for v in sleeps)
    assert 90 <= switches <= 110, switches


def test_unknown_process_and_expired_and_unsupported_tasks():
    manager, _ = make_manager(EngineSet(lambda: None, EngineConfig()), {"p1": 1})
    assert not manager.apply(parse_task_command(task_args(ProcessId="nobody")))
    old = int(time.time() * 1000) - 3_600_000
    assert manager.apply(parse_task_command(task_args(TaskStartTime=old)))  # resolved...
    assert manager.runs() == []  # ...but expired
    assert manager.apply(parse_task_command(task_args(TargetType="NETWORK")))
    assert manager.runs() == [] and manager.counters["tasks_unsupported"] == 1


def test_finished_tasks_are_remembered_only_until_their_end_time():
    """What stops a finished task from running twice is kept until the task would have
    ended anyway; then it goes, so the memory follows the live tasks, not the history."""
    now = [time.time()]
    gone = _unused_pid()
    uploader = RecordingUploader()
    manager = TaskManager(
        EngineSet(lambda: None, EngineConfig()),
        Symbolizer(),
        uploader,
        resolve=lambda _: DiscoveredProcess(gone, Entity("L", "s", "i", "p"), ProcessKind.HOST),
        clock=lambda: now[0],
    )

    def task(task_id, target_type="ON_CPU"):
        start = int(now[0] * 1000)
        args = task_args(TaskId=task_id, TaskStartTime=start, TargetType=target_type)
        return parse_task_command(args)

    assert manager.apply(task("t1"))
    manager.tick()  # its process is gone: the task fails, and is remembered as run
    assert manager.runs() == [] and manager.counters["tasks_failed"] == 1
    assert manager.apply(task("t1")) and manager.runs() == []  # not run twice
    assert manager.counters["tasks_failed"] == 1
    assert manager.apply(task("n1", "NETWORK"))
    assert len(manager._finished) == 1 and list(manager._unsupported_logged) == ["n1"]
    now[0] += 3600  # both are long over
    assert manager.apply(task("t2"))
    manager.tick()
    assert manager.counters["tasks_failed"] == 2
    assert [key[0] for key in manager._finished] == ["t2"]
    assert manager._unsupported_logged == {}


def _unused_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 1
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


# -- the poller --------------------------------------------------------------


@dataclass
class Cmd:
    name: str
    args: dict


class FakeSource:
    def __init__(self, replies):
        self.replies = list(replies)
        self.queries = []

    def query_tasks(self, agent_id, latest):
        self.queries.append((agent_id, latest))
        return self.replies.pop(0) if self.replies else []


def test_poller_advances_latest_update_time_only_for_usable_commands():
    manager, _ = make_manager(EngineSet(lambda: None, EngineConfig()), {"p1": 1})
    old = int(time.time() * 1000) - 3_600_000
    replies = [
        [
            Cmd(TASK_COMMAND, task_args(TaskUpdateTime=100, TaskStartTime=old)),  # expired: counts
            Cmd(TASK_COMMAND, task_args(TaskUpdateTime=900, ProcessId="unknown")),  # unresolved
            Cmd(TASK_COMMAND, task_args(TaskUpdateTime=800, TaskStartTime="x")),  # malformed
            Cmd("ConfigurationDiscoveryCommand", {"SerialNumber": "1"}),  # other agents' command
        ],
        [],
    ]
    source = FakeSource(replies)
    poller = TaskPoller(source, "agent-1", manager)
    poller.poll()
    poller.poll()
    assert source.queries == [("agent-1", 0), ("agent-1", 100)]
    assert poller.malformed == 1 and poller.ignored == 1


def test_a_task_for_a_process_not_registered_yet_is_not_lost_to_a_newer_one():
    """The backend sends tasks updated after the time the agent gives it: a newer task in the
    same reply must not move that time past one still waiting for its process."""
    known = {"p1": 1}
    manager, _ = make_manager(EngineSet(lambda: None, EngineConfig()), known)
    waiting = Cmd(TASK_COMMAND, task_args(TaskId="late", TaskUpdateTime=500, ProcessId="p2"))
    newer = Cmd(TASK_COMMAND, task_args(TaskId="now", TaskUpdateTime=900))
    source = FakeSource([[waiting, newer], [waiting]])
    poller = TaskPoller(source, "agent-1", manager)
    poller.poll()
    assert [run.task.task_id for run in manager.runs()] == ["now"]
    known["p2"] = 2  # the reply to its report arrived
    poller.poll()
    assert source.queries == [("agent-1", 0), ("agent-1", 499)]
    assert sorted(run.task.task_id for run in manager.runs()) == ["late", "now"]
    assert poller.latest_update_time == 500  # "now" comes once more: already running


def test_a_command_that_breaks_the_parser_costs_only_itself():
    """A RecursionError (or any other failure) in one command skips it; the valid one starts."""
    manager, _ = make_manager(EngineSet(lambda: None, EngineConfig()), {"p1": 1})
    deep = "[" * 100_000 + "]" * 100_000
    reply = [
        Cmd(TASK_COMMAND, task_args(TaskId="deep", TaskUpdateTime=900, ExtensionConfigJSON=deep)),
        Cmd(TASK_COMMAND, {**task_args(), "TaskId": 5}),  # a value that is not text
        Cmd(TASK_COMMAND, task_args(TaskId="good", TaskUpdateTime=100)),
    ]
    poller = TaskPoller(FakeSource([reply]), "agent-1", manager)
    poller.poll()
    assert [run.task.task_id for run in manager.runs()] == ["good"]
    assert poller.malformed == 2 and poller.latest_update_time == 100


@pytest.mark.bpf
def test_duration_counts_from_the_real_start_after_a_slow_engine_load(spawn, workloads):
    """A first compile takes seconds; the task must still profile for its whole duration."""
    busy = spawn([workloads.build("hot_c_fp")])

    def slow_headers():
        time.sleep(4.0)  # stands in for a slow first compile on a loaded node
        return HeaderSearch().find()

    engine_set = EngineSet(slow_headers, EngineConfig())
    manager, uploader = make_manager(engine_set, {"p1": busy.pid})
    try:
        # counted from the request, its 3 s would be over once the 4 s load is done
        manager.apply(parse_task_command(task_args(FixedTriggerDuration=3)))
        manager.tick()  # loads the engine (slowly) and starts the task
        run = manager.runs()[0]
        assert run.state == "running"
        assert run.started_ms >= int(time.time() * 1000) - 500  # stamped after the load
        run_until(manager, 1.5)
        assert manager.runs() and manager.runs()[0].state == "running"
    finally:
        engine_set.close()


# -- shutdown -----------------------------------------------------------------


class SlowEngine:
    """Stands in for a BPF engine whose compile is still running at shutdown."""

    def __init__(self, compiling: threading.Event, release: threading.Event) -> None:
        compiling.set()
        release.wait(10)
        self.closed = False
        self.config = EngineConfig()

    def add_pid(self, pid: int) -> None: ...

    def close(self) -> None:
        self.closed = True


def test_close_during_a_compile_leaves_freeing_to_the_compiling_thread(monkeypatch):
    """close() cannot wait for LLVM; the thread that compiled frees the program itself."""
    compiling, release = threading.Event(), threading.Event()
    built: list[SlowEngine] = []
    errors: list[Exception] = []

    def make_engine(*args, **kwargs):
        built.append(SlowEngine(compiling, release))
        return built[-1]

    monkeypatch.setattr("rover.tasks.engines.make_engine", make_engine)
    headers = SimpleNamespace(describe=lambda: "test headers")
    engines = EngineSet(lambda: headers, EngineConfig())

    def start_task():
        try:
            engines.acquire(ProfileType.ON_CPU, 1)
        except BPFLoadError as exc:
            errors.append(exc)

    starter = threading.Thread(target=start_task)
    starter.start()
    assert compiling.wait(5)
    assert engines.close(timeout=0.2) is False  # still compiling
    release.set()
    starter.join(5)
    assert built[0].closed and engines.loaded() == {}
    assert errors and "stopping" in str(errors[0])
    with pytest.raises(BPFLoadError):
        engines.engine(ProfileType.ON_CPU)  # nothing loads after close


def test_stop_all_drains_and_frees_bpf_without_uploading():
    """At shutdown BPF is freed before the upload: a hung backend cannot hold it."""
    engine_set = EngineSet(lambda: None, EngineConfig())
    manager, uploader = make_manager(engine_set, {"p1": 1})
    assert manager.stop_all(timeout=1.0)
    assert uploader.flushes == 0
