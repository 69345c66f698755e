"""What the fetch rounds must read and which windows to keep, derived from the watches."""

from __future__ import annotations

from dataclasses import dataclass

from rover.continuous.http_series import Uri, item_uris
from rover.continuous.metrics import ProcessKey
from rover.continuous.policy import MonitorType
from rover.continuous.policy_cache import Watch
from rover.process.model import DiscoveredProcess

# Process metrics have one series per (monitor, process); system load one for the host;
# HTTP monitors one per (monitor, process, request filter) (spec 4.7.2).
SeriesKey = tuple[MonitorType, ProcessKey | None, Uri | None]


def process_key(process: DiscoveredProcess) -> ProcessKey:
    return (process.pid, process.start_time)


def series_key(monitor: MonitorType, process: DiscoveredProcess) -> SeriesKey:
    """The one series of a non-HTTP monitor."""
    if monitor is MonitorType.SYSTEM_LOAD:
        return (monitor, None, None)
    return (monitor, process_key(process), None)


def watch_series(watch: Watch) -> list[tuple[SeriesKey, Uri | None]]:
    """Every series a watch evaluates, with its request filter (HTTP items only).

    Two HTTP items with the same monitor and filter on one process (e.g. ON_CPU and
    NETWORK) share their series: the values are the same."""
    item = watch.item
    if not item.http:
        return [(series_key(item.monitor, watch.process), None)]
    key = process_key(watch.process)
    return [((item.monitor, key, uri), uri) for uri in item_uris(item)]


@dataclass(frozen=True, slots=True)
class FetchPlan:
    cpu: frozenset[ProcessKey] = frozenset()
    threads: frozenset[ProcessKey] = frozenset()
    load: bool = False
    http: frozenset[ProcessKey] = frozenset()  # processes whose served requests are watched

    @property
    def processes(self) -> frozenset[ProcessKey]:
        """Processes the metrics reader reads."""
        return self.cpu | self.threads

    @property
    def empty(self) -> bool:
        return not (self.cpu or self.threads or self.load or self.http)


def plan_fetch(watches: list[Watch], skip: frozenset[ProcessKey] = frozenset()) -> FetchPlan:
    """Read only what some measured item watches; ``skip`` holds vanished processes."""
    cpu: set[ProcessKey] = set()
    threads: set[ProcessKey] = set()
    http: set[ProcessKey] = set()
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
        elif watch.item.http:
            http.add(key)
    return FetchPlan(frozenset(cpu), frozenset(threads), load, frozenset(http))


def window_capacities(watches: list[Watch]) -> dict[SeriesKey, int]:
    """Each measured series with the longest period of the items reading it."""
    capacities: dict[SeriesKey, int] = {}
    for watch in watches:
        if not watch.item.measured:
            continue
        for key, _ in watch_series(watch):
            capacities[key] = max(capacities.get(key, 0), watch.item.period)
    return capacities
