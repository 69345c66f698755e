"""NETWORK tasks in the task manager: start, extension, end, rules (spec 8.2)."""

from __future__ import annotations

import json
import os

from rover.network.model import SamplingRule
from rover.process.model import DiscoveredProcess, Entity, ProcessKind
from rover.symbols import Symbolizer
from rover.tasks.manager import TaskManager
from rover.tasks.model import parse_task_command

RULES = {"NetworkSamplings": [{"URIRegex": "^/api", "MinDuration": 100, "When5xx": True}]}


class FakeNetwork:
    def __init__(self) -> None:
        self.watched: dict[str, list[tuple[int, str, list[SamplingRule]]]] = {}
        self.ended: list[str] = []
        self.prepared = 0

    def watch(self, task_id, pid, process_id, entity, rules) -> None:
        self.watched.setdefault(task_id, []).append((pid, process_id, rules))

    def unwatch_task(self, task_id) -> None:
        self.ended.append(task_id)

    def prepare(self) -> None:
        self.prepared += 1


class NoEngines:
    def loaded(self) -> dict:
        return {}


class Uploads:
    def add(self, *args) -> None:
        raise AssertionError("a NETWORK task uploads no profiling data")

    def flush(self) -> bool:
        return True

    def forget_task(self, task_id, process_id=None) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(network: FakeNetwork | None, clock: Clock) -> TaskManager:
    processes = {"p1": os.getpid()}

    def resolve(process_id: str) -> DiscoveredProcess | None:
        pid = processes.get(process_id)
        entity = Entity("OS_LINUX", "svc", "inst", "proc")
        return None if pid is None else DiscoveredProcess(pid, entity, ProcessKind.HOST)

    return TaskManager(NoEngines(), Symbolizer(), Uploads(), resolve, clock=clock, network=network)  # type: ignore[arg-type]


def command(clock: Clock, extension: str, duration: int = 600, update: int = 0) -> dict:
    now = int(clock.now * 1000)
    return {
        "TaskId": "net-1",
        "ProcessId": "p1",
        "TaskUpdateTime": str(now + update),
        "TriggerType": "FIXED_TIME",
        "TargetType": "NETWORK",
        "TaskStartTime": str(now),
        "ExtensionConfigJSON": extension,
        "FixedTriggerDuration": str(duration),
    }


def test_a_network_task_watches_its_processes_with_its_rules_until_its_end():
    clock, network = Clock(), FakeNetwork()
    manager = make(network, clock)
    assert manager.apply(
        parse_task_command(command(clock, json.dumps(RULES)), int(clock.now * 1000))
    )
    manager.tick()
    assert network.prepared == 1  # loaded before the manager's lock was taken
    ((pid, process_id, rules),) = network.watched["net-1"]
    assert (pid, process_id) == (os.getpid(), "p1")
    assert rules == [SamplingRule("^/api", min_duration_ms=100, when_5xx=True)]
    manager.flush()  # nothing to upload, nothing fails
    clock.now += 601
    manager.tick()
    assert network.ended == ["net-1"]


def test_keep_profiling_extends_the_task_and_keeps_its_rules_when_resent_without_them():
    clock, network = Clock(), FakeNetwork()
    manager = make(network, clock)
    manager.apply(parse_task_command(command(clock, json.dumps(RULES)), int(clock.now * 1000)))
    manager.tick()
    extended = command(clock, "null", duration=1200, update=5000)
    manager.apply(parse_task_command(extended, int(clock.now * 1000)))
    (run,) = manager.runs()
    assert run.task.duration_s == 1200 and run.task.extension_config == RULES
    clock.now += 601
    manager.tick()
    assert network.ended == []  # still within the extended duration
    clock.now += 600
    manager.tick()
    assert network.ended == ["net-1"]


def test_unusable_rules_fail_the_task_with_a_reason():
    clock, network = Clock(), FakeNetwork()
    manager = make(network, clock)
    bad = {"NetworkSamplings": [{"URIRegex": "^/a", "MinDuration": "soon"}]}
    manager.apply(parse_task_command(command(clock, json.dumps(bad)), int(clock.now * 1000)))
    manager.tick()
    assert "net-1" not in network.watched
    assert manager.counters["tasks_failed"] == 1


def test_without_a_network_monitor_network_tasks_are_skipped_and_counted():
    clock = Clock()
    manager = make(None, clock)
    manager.apply(parse_task_command(command(clock, "null"), int(clock.now * 1000)))
    manager.tick()
    assert manager.runs() == []
    assert manager.counters["tasks_unsupported"] == 1


def test_rules_given_by_the_agent_itself_are_used_as_they_are():
    clock, network = Clock(), FakeNetwork()
    manager = make(network, clock)
    local = [SamplingRule("/cart", min_duration_ms=0, when_4xx=True, when_5xx=True)]
    manager.run_now("cont-1", "NETWORK", {"p1": os.getpid()}, 60, rules=local)
    assert network.watched["cont-1"][0][2] == local
