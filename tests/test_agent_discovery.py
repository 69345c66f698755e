"""The agent's discovery snapshot: overlapping scans (the heartbeat's first one and the
discovery loop's) must leave the newest result, not whichever finished last."""

from __future__ import annotations

import logging
import threading
import time

import rover.agent
from rover.agent import Agent
from rover.config import load_config
from rover.process.model import DiscoveredProcess, Entity, ProcessKind


def process(pid: int) -> DiscoveredProcess:
    entity = Entity("GENERAL", "svc", "instance", f"proc-{pid}", ())
    return DiscoveredProcess(pid, entity, ProcessKind.HOST, 1, {})


def wait_until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


class FakeFinder:
    """A finder without background work whose view is complete."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def wait_synced(self, timeout_s: float) -> bool:
        return True


class SlowFirstScan(FakeFinder):
    """The first scan saw nothing (taken before the view was complete) and is slow to end;
    every later scan sees the process."""

    def __init__(self) -> None:
        self.scans = 0
        self.first_started = threading.Event()
        self.release_first = threading.Event()

    def scan(self) -> list[DiscoveredProcess]:
        self.scans += 1
        if self.scans == 1:
            self.first_started.set()
            assert self.release_first.wait(10)
            return []
        return [process(42)]


def test_an_older_scan_never_replaces_a_newer_one() -> None:
    finder = SlowFirstScan()
    agent = Agent(load_config(None, {}), finders=[finder])
    try:
        first = threading.Thread(target=agent.discover)
        first.start()
        assert finder.first_started.wait(10)
        second_result: list[list[DiscoveredProcess]] = []
        second = threading.Thread(target=lambda: second_result.append(agent.discover()))
        second.start()
        time.sleep(0.2)  # the second scan is waiting for the first, not running beside it
        assert finder.scans == 1
        finder.release_first.set()
        first.join(10)
        second.join(10)
        assert [p.pid for p in second_result[0]] == [42]
        assert [p.pid for p in agent.discovered] == [42]
    finally:
        finder.release_first.set()
        agent.client.close()


class Watching(FakeFinder):
    """A finder whose watched collections are listed once ``synced`` is set."""

    def __init__(self) -> None:
        self.synced = threading.Event()
        self.scans_before_sync = 0

    def wait_synced(self, timeout_s: float) -> bool:
        return self.synced.wait(timeout_s)

    def scan(self) -> list[DiscoveredProcess]:
        if not self.synced.is_set():
            self.scans_before_sync += 1
            return []
        return [process(7)]


def test_start_waits_for_the_first_lists_so_the_first_scan_sees_everything() -> None:
    finder = Watching()
    threading.Timer(0.3, finder.synced.set).start()  # the API server answers the lists
    agent = Agent(load_config(None, {"ROVER_PROFILING_ACTIVE": "false"}), finders=[finder])
    agent.start()
    try:
        assert finder.synced.is_set()
        wait_until(lambda: agent.discovered)
        assert [p.pid for p in agent.discovered] == [7]
        assert finder.scans_before_sync == 0
    finally:
        agent.stop()


def test_start_waits_a_bounded_time_for_a_finder_that_cannot_list(monkeypatch, caplog) -> None:
    monkeypatch.setattr(rover.agent, "FINDER_SYNC_BUDGET", 0.3)
    agent = Agent(load_config(None, {"ROVER_PROFILING_ACTIVE": "false"}), finders=[Watching()])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rover.agent"):
        agent.start()
    try:
        assert time.monotonic() - started < 5
        assert "Watching has not listed everything it watches" in caplog.text
        discovery = next(loop for loop in agent.loops if loop.name == "discovery")
        wait_until(lambda: discovery.runs > 0)
        assert discovery.runs >= 1  # the agent went on without the finder's view
    finally:
        agent.stop()
