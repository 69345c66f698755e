import logging
import threading
import time

import pytest

from rover.deadline import Deadline
from rover.periodic import PeriodicLoop


def test_runs_at_once_then_every_period_until_stopped():
    calls = []
    loop = PeriodicLoop("tick", 0.05, lambda: calls.append(time.monotonic()))
    loop.start()
    time.sleep(0.28)
    loop.stop()
    count = len(calls)
    assert 5 <= count <= 7
    time.sleep(0.1)
    assert len(calls) == count  # really stopped


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
        assert recovered.wait(2)
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
    release = threading.Event()
    stuck = PeriodicLoop("stuck", 0.01, lambda: release.wait(10))
    quick = [PeriodicLoop(f"quick-{i}", 0.01, lambda: None) for i in range(4)]
    loops = [stuck, *quick]
    for loop in loops:
        loop.start()
    time.sleep(0.05)
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
