"""Prometheus metrics of the agent, read from the counters its parts already keep.

Nothing is counted twice: a scrape reads the task manager's counters, the
uploader's, the engines' kernel-side event counts, the backend client's state,
the loops' run counts and the caches' sizes at that moment (prometheus_client
custom collector).

Metric names (all prefixed ``rover_``) are listed in docs/deploy.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rover.backend import BackendClient, ProcessReporter, ProfileUploader
from rover.bpf.engine import LOSS_COUNTERS
from rover.byte_cache import CacheStats
from rover.periodic import PeriodicLoop
from rover.profile import ProfileType
from rover.tasks.engines import EngineSet
from rover.tasks.manager import TaskManager
from rover.unwind.kernel_tables import LOSS_COUNTERS as TABLE_LOSS_COUNTERS

log = logging.getLogger(__name__)

# What engines lose, as the task manager sums it from every drain: the kernel's losses
# (named in bpf/profile_common.h), stacks deleted in the instant an event referenced them
# (rover.bpf.engine), and unwind rows the kernel could not hold (rover.unwind).
DROP_REASONS: tuple[str, ...] = (*LOSS_COUNTERS, *TABLE_LOSS_COUNTERS)
TASK_OUTCOMES: tuple[str, ...] = ("started", "failed", "unresolved", "unsupported")


@dataclass(frozen=True)
class AgentParts:
    """What the collector reads; the agent hands over its own objects."""

    tasks: TaskManager
    engines: EngineSet
    uploader: ProfileUploader
    client: BackendClient
    reporter: ProcessReporter
    loops: Sequence[PeriodicLoop]
    discovered: Callable[[], int]  # processes found by the latest scan
    caches: Callable[[], Sequence[CacheStats]] = list  # every cache bounded in bytes
    network: Callable[[], dict[str, int]] = dict  # the network monitor's counters


class AgentCollector(Collector):
    def __init__(self, parts: AgentParts) -> None:
        self.parts = parts
        self.engine_read_failures = 0  # scrapes that found an engine unreadable
        self._failures_logged: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        yield from self._profiling()
        yield from self._tasks()
        yield from self._upload()
        yield from self._processes()
        yield from self._loops()
        yield from self._caches()
        yield from self._network()

    def _network(self) -> Iterator[Metric]:
        """NETWORK tasks: the kernel's counters (``kernel_*``, losses included), the HTTP
        parser's skips (``http_*``), and the analyzer's own (reports, connections)."""
        events = CounterMetricFamily(
            "rover_network_events",
            "Network monitor counts by name: kernel events and losses, parser skips, reports",
            labels=["counter"],
        )
        for name, value in sorted(self.parts.network().items()):
            events.add_metric([name], value)
        yield events

    def _profiling(self) -> Iterator[Metric]:
        samples = CounterMetricFamily(
            "rover_samples_collected",
            "Events counted in the kernel for profiled processes: on-CPU samples, "
            "off-CPU context switches",
            labels=["profiling_type"],
        )
        drained = CounterMetricFamily(
            "rover_stacks_drained",
            "Distinct (process, user stack, kernel stack) keys drained from the kernel",
            labels=["profiling_type"],
        )
        fill = GaugeMetricFamily(
            "rover_counts_map_fill_ratio",
            "How full the counts map was at the last drain (1.0: events are being dropped)",
            labels=["profiling_type"],
        )
        loaded = self.parts.engines.loaded()
        for profile_type in ProfileType:  # zeros until a task loads the type's engine
            engine = loaded.get(profile_type)
            events, stacks, ratio = 0, 0, 0.0
            if engine is not None:
                try:
                    events = engine.events()
                    stacks, ratio = engine.stacks_drained, engine.last_counts_fill
                except Exception as exc:  # noqa: BLE001 - closed while we read (shutdown)
                    self._engine_unreadable(profile_type, exc)
                    continue
            samples.add_metric([profile_type.name], events)
            drained.add_metric([profile_type.name], stacks)
            fill.add_metric([profile_type.name], ratio)
        yield from (samples, drained, fill)
        counters = self.parts.tasks.counters
        drops = CounterMetricFamily(
            "rover_bpf_dropped",
            "Events or stacks lost in the kernel, by reason (collisions, full maps, ...)",
            labels=["reason"],
        )
        for reason in DROP_REASONS:
            drops.add_metric([reason], counters.get(reason, 0))
        yield drops
        yield CounterMetricFamily(
            "rover_unsymbolized_frames",
            "Frames shown as module+offset because no symbol covered the address",
            value=counters.get("unsymbolized_frames", 0),
        )

    def _engine_unreadable(self, profile_type: ProfileType, exc: Exception) -> None:
        """Counted every time, logged once per kind of failure (each scrape would repeat it)."""
        self.engine_read_failures += 1
        kind = f"{profile_type.name}: {type(exc).__name__}"
        level = logging.DEBUG if kind in self._failures_logged else logging.WARNING
        self._failures_logged.add(kind)
        log.log(level, "metrics: %s engine unreadable: %s", profile_type.name, exc)

    def _tasks(self) -> Iterator[Metric]:
        running = sum(1 for run in self.parts.tasks.runs() if run.state == "running")
        yield GaugeMetricFamily("rover_tasks_running", "Profiling tasks running now", running)
        outcomes = CounterMetricFamily(
            "rover_tasks",
            "Profiling tasks by outcome: started, failed, unresolved (unknown process), "
            "unsupported (target type)",
            labels=["outcome"],
        )
        counters = self.parts.tasks.counters
        for outcome in TASK_OUTCOMES:
            outcomes.add_metric([outcome], counters.get(f"tasks_{outcome}", 0))
        yield outcomes

    def _upload(self) -> Iterator[Metric]:
        uploader = self.parts.uploader
        yield CounterMetricFamily(
            "rover_upload_messages",
            "Profiling data messages delivered to the backend",
            value=uploader.uploaded,
        )
        yield CounterMetricFamily(
            "rover_upload_failures",
            "Uploads (flushes) that failed; their messages stay queued",
            value=uploader.upload_failures,
        )
        yield CounterMetricFamily(
            "rover_upload_dropped_messages",
            "Queued messages discarded because the upload buffer was full",
            value=uploader.dropped,
        )
        yield GaugeMetricFamily(
            "rover_upload_pending_messages",
            "Messages waiting for the next upload",
            value=uploader.pending,
        )
        yield GaugeMetricFamily(
            "rover_backend_connected",
            "1 while the backend answers calls, else 0",
            value=1 if self.parts.client.connected else 0,
        )

    def _processes(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "rover_processes_discovered",
            "Processes found by the latest discovery scan",
            value=self.parts.discovered(),
        )
        yield GaugeMetricFamily(
            "rover_processes_registered",
            "Processes the backend gave an id (can be profiled by a task)",
            value=len(self.parts.reporter.registered()),
        )

    def _loops(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "rover_loop_runs", "Completed runs of each agent loop", labels=["loop"]
        )
        failures = CounterMetricFamily(
            "rover_loop_failures", "Runs of each agent loop that raised", labels=["loop"]
        )
        for loop in self.parts.loops:
            runs.add_metric([loop.name], loop.runs)
            failures.add_metric([loop.name], loop.failures)
        yield from (runs, failures)

    def _caches(self) -> Iterator[Metric]:
        label = ["cache"]
        budget = GaugeMetricFamily(
            "rover_cache_budget_bytes", "Most bytes each cache may hold (its setting)", labels=label
        )
        size = GaugeMetricFamily(
            "rover_cache_bytes", "Bytes each cache holds now (estimated per entry)", labels=label
        )
        entries = GaugeMetricFamily(
            "rover_cache_entries", "Entries each cache holds now", labels=label
        )
        evictions = CounterMetricFamily(
            "rover_cache_evictions",
            "Least recently used entries dropped to stay within the budget",
            labels=label,
        )
        refused = CounterMetricFamily(
            "rover_cache_refused",
            "Entries not kept because each alone exceeded the whole budget",
            labels=label,
        )
        hits = CounterMetricFamily("rover_cache_hits", "Lookups that found an entry", labels=label)
        misses = CounterMetricFamily(
            "rover_cache_misses", "Lookups that found none (the work is done again)", labels=label
        )
        for stats in self.parts.caches():
            name = [stats.name]
            budget.add_metric(name, stats.budget_bytes)
            size.add_metric(name, stats.bytes)
            entries.add_metric(name, stats.entries)
            evictions.add_metric(name, stats.evictions)
            refused.add_metric(name, stats.refused)
            hits.add_metric(name, stats.hits)
            misses.add_metric(name, stats.misses)
        yield from (budget, size, entries, evictions, refused, hits, misses)


def agent_registry(parts: AgentParts) -> CollectorRegistry:
    """A registry of its own (not the global one): only the agent's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(parts))
    return registry
