import logging
import threading
import time

import pytest

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
