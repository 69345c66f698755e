"""Run a profiling runner for a fixed time, flushing periodically, stoppable early."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rover.profile import Profile
from rover.tasks.runner import ProfilingRunner


@dataclass
class Progress:
    elapsed: float
    duration: float
    events: int
    alive: int


@dataclass
class RunOutcome:
    profile: Profile
    elapsed: float
    ended_by: str  # "duration", "stopped" (signal) or "exited" (every process gone)


def run_for(
    runner: ProfilingRunner,
    duration: float,
    stop: threading.Event,
    on_progress: Callable[[Progress], None] | None = None,
    progress_every: float = 0.5,
    flush_every: float = 2.0,
) -> RunOutcome:
    """Profile until ``duration`` passes, ``stop`` is set, or every target exits.

    Flushing every few seconds keeps kernel maps small and re-reads mappings
    while processes are alive, so a process that exits mid-run still
    symbolizes.
    """
    runner.start()
    total = Profile.new(runner.engine.type, processes=dict(runner.processes))
    base_events = runner.engine.events()
    started = time.monotonic()
    runner.count_until(time.monotonic_ns() + int(duration * 1e9))
    next_flush = started + flush_every
    ended_by = "duration"
    try:
        while True:
            now = time.monotonic()
            elapsed = now - started
            if elapsed >= duration:
                break
            if stop.is_set():
                ended_by = "stopped"
                break
            alive = runner.alive()
            if not alive:
                ended_by = "exited"
                break
            if now >= next_flush:
                runner.refresh_mappings()
                total.merge(runner.flush())
                next_flush = now + flush_every
            if on_progress is not None:
                events = runner.engine.events() - base_events
                on_progress(Progress(elapsed, duration, events, len(alive)))
            stop.wait(min(progress_every, max(0.0, duration - elapsed)))
    finally:
        final = runner.stop()
        total.merge(final)
    # The kernel counted nothing past the deadline: a run that lasted its duration has
    # exactly that window, however late its last drain was.
    elapsed = min(time.monotonic() - started, duration)
    total.start_time_ns = time.time_ns() - int((time.monotonic() - started) * 1e9)
    total.duration_ns = int(elapsed * 1e9)
    total.period_ns = final.period_ns
    return RunOutcome(total, elapsed, ended_by)
