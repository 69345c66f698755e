"""What the fetch rounds must read and which windows to keep, derived from the watches."""

from __future__ import annotations

from dataclasses import dataclass

from rover.continuous.metrics import ProcessKey
from rover.continuous.policy import MonitorType
from rover.continuous.policy_cache import Watch
from rover.process.model import DiscoveredProcess

# Process metrics have one series per (monitor, process); system load one for the host.
SeriesKey = tuple[MonitorType, ProcessKey | None]


def process_key(process: DiscoveredProcess) -> ProcessKey:
    return (process.pid, process.start_time)


def series_key(monitor: MonitorType, process: DiscoveredProcess) -> SeriesKey:
    if monitor is MonitorType.SYSTEM_LOAD:
        return (monitor, None)
    return (monitor, process_key(process))


@dataclass(frozen=True, slots=True)
class FetchPlan:
    cpu: frozenset[ProcessKey] = frozenset()
    threads: frozenset[ProcessKey] = frozenset()
    load: bool = False

    @property
    def processes(self) -> frozenset[ProcessKey]:
        return self.cpu | self.threads

    @property
    def empty(self) -> bool:
        return not (self.cpu or self.threads or self.load)


def plan_fetch(watches: list[Watch], skip: frozenset[ProcessKey] = frozenset()) -> FetchPlan:
    """Read only what some measured item watches; ``skip`` holds vanished processes."""
    cpu: set[ProcessKey] = set()
    threads: set[ProcessKey] = set()
    load = False
    for watch in watches:
        monitor = watch.item.monitor
        key = process_key(watch.process)
        if monitor is MonitorType.SYSTEM_LOAD:
            load = True
        elif key in skip:
            continue
        elif monitor is MonitorType.PROCESS_CPU:
            cpu.add(key)
        elif monitor is MonitorType.PROCESS_THREAD_COUNT:
            threads.add(key)
    return FetchPlan(frozenset(cpu), frozenset(threads), load)


def window_capacities(watches: list[Watch]) -> dict[SeriesKey, int]:
    """Each measured series with the longest period of the items reading it."""
    capacities: dict[SeriesKey, int] = {}
    for watch in watches:
        if not watch.item.measured:
            continue
        key = series_key(watch.item.monitor, watch.process)
        capacities[key] = max(capacities.get(key, 0), watch.item.period)
    return capacities
