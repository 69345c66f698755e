"""Reading the monitored values: process CPU rate and threads (psutil), system load.

CPU is the RECENT rate, 100 x CPU seconds used since the previous read /
wall seconds since then (may exceed 100 on several cores), not Rover's
lifetime average (spec quirk 6): a process that was busy an hour ago and is
idle now must not look busy. The first read of a process only sets the
baseline, so its first CPU sample comes one fetch later.

psutil honours ``psutil.PROCFS_PATH``; an agent running with the host's root
mounted elsewhere sets it once at start-up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import psutil

# A process's identity across reads: pid plus its start time, so a reused pid
# is a different process.
ProcessKey = tuple[int, int]


class ProcessVanished(Exception):
    """The process exited (or turned zombie) since it was registered."""


@dataclass(frozen=True, slots=True)
class ProcessReading:
    cpu_percent: float | None = None  # None until a baseline exists
    threads: int | None = None


class MetricsReader(Protocol):
    """Where the profiler's fetch rounds get their numbers (fakes in tests)."""

    def read_process(self, key: ProcessKey, cpu: bool, threads: bool) -> ProcessReading:
        """Raises :class:`ProcessVanished` when the process is gone."""
        ...

    def system_load(self) -> float: ...

    def retain(self, keys: Iterable[ProcessKey]) -> None:
        """Forget cached state of every process not in ``keys``."""
        ...


@dataclass(slots=True)
class _Tracked:
    process: psutil.Process
    cpu_seconds: float = -1.0  # at the previous read; < 0 = no baseline yet
    read_at: float = 0.0


class PsutilMetrics:
    """Reads with psutil, reusing one ``psutil.Process`` per process.

    One fetch reads ``/proc/PID/stat`` for CPU and ``/proc/PID/status`` for
    threads, each only when some item wants it (psutil's ``oneshot`` caches
    them when both are read).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tracked: dict[ProcessKey, _Tracked] = {}

    def read_process(self, key: ProcessKey, cpu: bool, threads: bool) -> ProcessReading:
        tracked = self._tracked.get(key)
        try:
            if tracked is None:
                tracked = _Tracked(psutil.Process(key[0]))
                self._tracked[key] = tracked
            process = tracked.process
            with process.oneshot():
                cpu_percent = self._cpu_percent(tracked) if cpu else None
                thread_count = process.num_threads() if threads else None
        except psutil.NoSuchProcess as exc:  # includes ZombieProcess
            self._tracked.pop(key, None)
            raise ProcessVanished(f"process {key[0]} is gone") from exc
        return ProcessReading(cpu_percent=cpu_percent, threads=thread_count)

    def _cpu_percent(self, tracked: _Tracked) -> float | None:
        times = tracked.process.cpu_times()
        now = self._clock()
        used = times.user + times.system
        previous, previous_at = tracked.cpu_seconds, tracked.read_at
        tracked.cpu_seconds, tracked.read_at = used, now
        elapsed = now - previous_at
        if previous < 0 or elapsed <= 0:
            return None
        return max(0.0, 100.0 * (used - previous) / elapsed)

    def system_load(self) -> float:
        return os.getloadavg()[0]

    def retain(self, keys: Iterable[ProcessKey]) -> None:
        keep = set(keys)
        for key in [k for k in self._tracked if k not in keep]:
            del self._tracked[key]

    def __len__(self) -> int:
        return len(self._tracked)
