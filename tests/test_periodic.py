import logging
import threading
import time

import pytest

from rover.deadline import Deadline
from rover.periodic import PeriodicLoop


class SimulatedTime:
    """A clock that moves only when the loop waits or an action takes time, and a stop
    event and wake-up condition that end the loop after some waits: the schedule without
    real time."""

    def __init__(self, waits: int) -> None:
        self.now = 1000.0
        self.waits: list[float] = []
        self.left = waits

    def clock(self) -> float:
        return self.now

    def is_set(self) -> bool:
        return self.left <= 0

    def wait(self, delay: float) -> bool:
        self.waits.append(delay)
        self.now += delay
        self.left -= 1
        return self.is_set()

    def __enter__(self) -> "SimulatedTime":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def notify(self) -> None:
        pass


def simulated_loop(time_: SimulatedTime, action) -> PeriodicLoop:
    loop = PeriodicLoop("tick", 1.0, action, clock=time_.clock)
    loop._stop = time_  # type: ignore[assignment]  # the loop's only uses of its event
    loop._wake = time_  # type: ignore[assignment]  # and of its condition
    return loop


def test_runs_at_once_then_every_period_and_never_bursts_after_a_slow_run() -> None:
    time_ = SimulatedTime(waits=6)
    calls: list[float] = []
    took = iter([0.0, 0.3, 2.5, 0.0, 0.0, 0.0, 0.0])  # the third run outlasts its period

    def action() -> None:
        calls.append(time_.now)
        time_.now += next(took)

    simulated_loop(time_, action)._run()
    assert calls == pytest.approx([1000.0, 1001.0, 1002.0, 1004.5, 1005.5, 1006.5, 1007.5])
    assert time_.waits == pytest.approx([1.0, 0.7, 1.0, 1.0, 1.0, 1.0])


def test_an_early_run_asked_for_comes_in_time_and_keeps_the_cadence() -> None:
    time_ = SimulatedTime(waits=4)
    calls: list[float] = []
    loop = simulated_loop(time_, lambda: calls.append(time_.now))
    loop.run_by(1000.0 + 0.25)  # e.g. a task started: its first flush within 0.25 s
    loop._run()
    assert calls == pytest.approx([1000.0, 1000.25, 1001.0, 1002.0])
    assert time_.waits == pytest.approx([0.25, 0.75, 1.0, 1.0])


def test_run_by_wakes_a_waiting_loop() -> None:
    ran = threading.Event()
    calls: list[float] = []

    def action() -> None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            ran.set()

    loop = PeriodicLoop("flush", 3600.0, action)
    loop.start()
    try:
        time.sleep(0.1)
        asked = time.monotonic()
        loop.run_by(asked + 0.2)
        assert ran.wait(5)
        assert asked + 0.19 <= calls[1] < asked + 60  # long before the hour
    finally:
        loop.stop()


def test_a_started_loop_runs_repeatedly_until_stopped() -> None:
    calls: list[float] = []
    third = threading.Event()

    def action() -> None:
        calls.append(time.monotonic())
        if len(calls) == 3:
            third.set()

    loop = PeriodicLoop("tick", 0.01, action)
    loop.start()
    assert third.wait(30)
    loop.stop()
    assert loop.join(0)  # stop() waited for the thread
    count = len(calls)
    time.sleep(0.05)
    assert len(calls) == count  # really stopped
    # never early: run i comes no sooner than i periods after the first (a late run does
    # not make the next one early either: the cadence only ever slips later)
    assert all(at - calls[0] >= i * 0.01 - 0.001 for i, at in enumerate(calls))


def test_failures_are_logged_once_per_error_and_the_loop_survives(caplog):
    state = {"n": 0}
    recovered = threading.Event()

    def flaky():
        state["n"] += 1
        if state["n"] <= 4:
            raise ConnectionError("backend down")
        recovered.set()

    loop = PeriodicLoop("upload", 0.01, flaky)
    with caplog.at_level(logging.INFO, logger="rover.periodic"):
        loop.start()
        assert recovered.wait(30)
        loop.stop()
    failures = [r for r in caplog.records if "backend down" in r.getMessage()]
    assert len(failures) == 1 and loop.failures == 4
    assert any("working again" in r.getMessage() for r in caplog.records)


def test_period_must_be_positive():
    with pytest.raises(ValueError, match="period must be positive"):
        PeriodicLoop("bad", 0, lambda: None)


def test_many_loops_stop_together_under_one_deadline():
    """A loop stuck in a slow call (a backend that never answers) costs the others nothing:
    every loop is asked first, then each is waited for with what is left of one deadline."""
    release, entered = threading.Event(), threading.Event()

    def hang() -> None:
        entered.set()
        release.wait(30)

    stuck = PeriodicLoop("stuck", 0.01, hang)
    quick = [PeriodicLoop(f"quick-{i}", 0.01, lambda: None) for i in range(4)]
    loops = [stuck, *quick]
    for loop in loops:
        loop.start()
    assert entered.wait(30)  # the stuck loop is inside its call
    deadline = Deadline(0.5)
    for loop in loops:
        loop.request_stop()
    ended = [loop.join(deadline.remaining()) for loop in loops]
    assert deadline.elapsed() < 1.0
    assert ended == [False, True, True, True, True]
    release.set()
    assert stuck.join(2)


def test_deadline_shares_what_is_left():
    now = [100.0]
    deadline = Deadline(7.0, clock=lambda: now[0])
    assert deadline.remaining(keep=2.0) == 5.0
    now[0] = 104.0
    assert deadline.remaining() == 3.0 and deadline.remaining(keep=5.0) == 0.0
    now[0] = 200.0
    assert deadline.expired and deadline.elapsed() == 100.0
