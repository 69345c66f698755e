"""The continuous profiler: fetch metrics, sync policies, check, send meters, trigger tasks.

Two loops drive it: :meth:`ContinuousProfiler.fetch_once` every
``fetch_interval`` (one window slot per round) and
:meth:`ContinuousProfiler.check_once` every ``check_interval``. Tests call
them directly with a fake clock. One lock guards the shared state; backend
calls and process reads happen outside it so neither loop stalls the other.
Nothing in a round may raise: every failure is logged (once per distinct
message in a row) and counted in :attr:`ContinuousProfiler.stats`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from rover.config import ContinuousConfig
from rover.continuous.checker import Checker
from rover.continuous.http_series import HttpEvent, SlotTotals, Uri
from rover.continuous.meters import MeterSample, collect_meters
from rover.continuous.metrics import MetricsReader, ProcessKey, ProcessVanished, PsutilMetrics
from rover.continuous.plan import (
    FetchPlan,
    SeriesKey,
    plan_fetch,
    process_key,
    watch_series,
    window_capacities,
)
from rover.continuous.policy import MonitorType, TargetType
from rover.continuous.policy_cache import PolicyCache, Watch
from rover.continuous.ports import (
    HttpEventSource,
    MeterSink,
    PolicySource,
    ProcessSource,
    TaskStarter,
    TriggerSink,
)
from rover.continuous.silence import TriggerHistory
from rover.continuous.trigger import Finding, dimension_of, group_triggers
from rover.continuous.windows import WindowStore
from rover.periodic import PeriodicLoop
from rover.process.model import DiscoveredProcess

log = logging.getLogger(__name__)

# Meters kept for a retry when the backend is down (about 20 rounds of 500 processes).
MAX_UNSENT_METERS = 10_000
# Seconds an HTTP slot's totals stay open for requests reported late (a slow response
# completes the request well after it was read); older requests are dropped, counted.
HTTP_LATE_SLOTS = 30


@dataclass
class ProfilerStats:
    fetch_rounds: int = 0
    check_rounds: int = 0
    vanished_processes: int = 0
    read_errors: int = 0
    process_list_failures: int = 0
    policy_query_failures: int = 0
    triggers_reported: int = 0
    report_failures: int = 0
    start_failures: int = 0
    meter_sends: int = 0
    meter_send_failures: int = 0
    meters_dropped: int = 0
    http_events: int = 0  # served requests taken from the HTTP event source
    http_events_unwatched: int = 0  # of a process no HTTP item watches (any more)
    http_events_late: int = 0  # older than HTTP_LATE_SLOTS: dropped


class _RepeatedWarnings:
    """Warn when a kind of failure starts or changes, not on every round."""

    def __init__(self) -> None:
        self._last: dict[str, str] = {}

    def warn(self, kind: str, message: str, same_as: str | None = None) -> None:
        """``same_as``: what makes two warnings "the same" when not the whole message."""
        identity = message if same_as is None else same_as
        if self._last.get(kind) != identity:
            self._last[kind] = identity
            log.warning("continuous profiling: %s", message)
        else:
            log.debug("continuous profiling: %s", message)

    def resolved(self, kind: str) -> None:
        if self._last.pop(kind, None) is not None:
            log.info("continuous profiling: %s works again", kind)


class ContinuousProfiler:
    def __init__(
        self,
        config: ContinuousConfig,
        *,
        policies: PolicySource,
        triggers: TriggerSink,
        tasks: TaskStarter,
        meters: MeterSink,
        processes: ProcessSource,
        metrics: MetricsReader | None = None,
        http: HttpEventSource | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.stats = ProfilerStats()
        self._policy_source = policies
        self._trigger_sink = triggers
        self._task_starter = tasks
        self._meter_sink = meters
        self._process_source = processes
        self._metrics = metrics if metrics is not None else PsutilMetrics(clock)
        self._http = http  # its events' times are on ``clock``
        self._clock = clock
        self._wall_clock = wall_clock

        self._lock = threading.Lock()
        self._cache = PolicyCache()
        self._windows: WindowStore[SeriesKey] = WindowStore()
        self._checker = Checker(http=http is not None)
        # pid -> the HTTP series its served requests may feed, with their filters
        self._http_routes: dict[int, list[tuple[SeriesKey, Uri]]] = {}
        self._http_totals: dict[tuple[SeriesKey, int], SlotTotals] = {}
        self._history = TriggerHistory(
            config.trigger.execute_duration, config.trigger.silence_duration
        )
        self._watches: list[Watch] = []
        self._plan = FetchPlan()
        self._gone: set[ProcessKey] = set()
        self._epoch: float | None = None  # clock time of slot 0
        self._last_fetch_slot: int | None = None
        self._metered_through = -(2**62)  # meters cover samples in slots after this
        self._unsent: list[MeterSample] = []
        self._warnings = _RepeatedWarnings()
        self._loops: list[PeriodicLoop] = []

    # -- loops ---------------------------------------------------------------

    def start(self) -> None:
        self._loops = [
            PeriodicLoop("continuous-check", self.config.check_interval, self.check_once),
            PeriodicLoop("continuous-fetch", self.config.fetch_interval, self.fetch_once),
        ]
        for loop in self._loops:
            loop.start()

    @property
    def loops(self) -> list[PeriodicLoop]:
        """The running loops (for a caller stopping many loops under one deadline)."""
        return list(self._loops)

    def stop(self) -> None:
        for loop in self._loops:
            loop.stop()
        self._loops = []

    # -- fetch ---------------------------------------------------------------

    def fetch_once(self) -> None:
        """Read every watched value once and put it in the current slot."""
        with self._lock:
            plan = self._plan
        self.stats.fetch_rounds += 1
        events = self._drain_http()
        if plan.empty:
            self._metrics.retain(())
            return
        now = self._clock()
        if self._epoch is None:
            self._epoch = now
        slot = self._slot(now)

        values: list[tuple[SeriesKey, float]] = []
        gone: list[ProcessKey] = []
        for key in plan.processes:
            try:
                reading = self._metrics.read_process(key, key in plan.cpu, key in plan.threads)
            except ProcessVanished:
                gone.append(key)
                continue
            except Exception as exc:  # noqa: BLE001 - one unreadable process must not stop the round
                self.stats.read_errors += 1
                self._warnings.warn(
                    "process read",
                    f"cannot read watched process {key[0]} (and maybe others): {exc}",
                    same_as=type(exc).__name__,  # not one warning per pid
                )
                continue
            if reading.cpu_percent is not None:
                values.append(((MonitorType.PROCESS_CPU, key, None), reading.cpu_percent))
            if reading.threads is not None:
                values.append(
                    ((MonitorType.PROCESS_THREAD_COUNT, key, None), float(reading.threads))
                )
        if plan.load:
            try:
                values.append(((MonitorType.SYSTEM_LOAD, None, None), self._metrics.system_load()))
            except Exception as exc:  # noqa: BLE001
                self.stats.read_errors += 1
                self._warnings.warn("system load", f"cannot read the system load: {exc}")
        self._metrics.retain(plan.processes.difference(gone))

        with self._lock:
            for series, value in values:
                self._windows.add(series, slot, value)
            self._add_http(events, slot)
            if gone:
                self._forget_vanished(gone)
            self._last_fetch_slot = slot

    def _drain_http(self) -> list[HttpEvent]:
        if self._http is None:
            return []
        try:
            events = self._http.drain()
        except Exception as exc:  # noqa: BLE001 - a bug guard: the other monitors go on
            self._warnings.warn("http events", f"cannot read HTTP events: {exc}")
            return []
        self.stats.http_events += len(events)
        return events

    def _add_http(self, events: list[HttpEvent], slot: int) -> None:
        """Count each served request in the slot of its read time, in every series of
        its process whose filter takes its path; the slot's value is then re-set."""
        oldest = slot - HTTP_LATE_SLOTS
        touched: set[tuple[SeriesKey, int]] = set()
        for event in events:
            routes = self._http_routes.get(event.pid)
            if not routes:
                self.stats.http_events_unwatched += 1
                continue
            event_slot = self._slot(event.time_s)
            if event_slot < oldest:
                self.stats.http_events_late += 1
                continue
            for key, uri in routes:
                if uri.matches(event.path):
                    totals = self._http_totals.get((key, event_slot))
                    if totals is None:
                        totals = self._http_totals[(key, event_slot)] = SlotTotals()
                    totals.add(event)
                    touched.add((key, event_slot))
        for key, event_slot in touched:
            value = self._http_totals[(key, event_slot)].value(key[0])
            if value is not None:
                self._windows.put(key, event_slot, value)
        for stale in [k for k in self._http_totals if k[1] < oldest]:
            del self._http_totals[stale]

    def _forget_vanished(self, gone: list[ProcessKey]) -> None:
        """Vanished processes are normal: drop their windows and stop reading them."""
        self.stats.vanished_processes += len(gone)
        log.debug("continuous profiling: %d watched process(es) exited", len(gone))
        self._gone.update(gone)
        self._windows.discard(
            (monitor, key, None)
            for key in gone
            for monitor in (MonitorType.PROCESS_CPU, MonitorType.PROCESS_THREAD_COUNT)
        )
        self._plan = FetchPlan(
            self._plan.cpu.difference(gone),
            self._plan.threads.difference(gone),
            self._plan.load,
            self._plan.http,
        )

    def _slot(self, now: float) -> int:
        """One-second slots phase-aligned to the first fetch, so that fetches made
        every second with some jitter land in consecutive slots."""
        assert self._epoch is not None
        return math.floor(now - self._epoch + 0.5)

    # -- check ---------------------------------------------------------------

    def check_once(self) -> None:
        """Sync policies, evaluate every item, send meters, report and start triggers."""
        self.stats.check_rounds += 1
        try:
            registered = self._process_source.registered()
        except Exception as exc:  # noqa: BLE001 - skip this round, the next may work
            self.stats.process_list_failures += 1
            self._warnings.warn("process list", f"cannot list registered processes: {exc}")
            return
        self._warnings.resolved("process list")
        if not registered:
            self._reset()
            return
        self._sync_policies(registered)

        now = self._clock()
        with self._lock:
            findings, samples = self._evaluate(now)
        self._send_meters(samples)
        self._trigger(findings)

    def _reset(self) -> None:
        with self._lock:
            self._cache.clear()
            self._windows.clear()
            self._watches = []
            self._plan = FetchPlan()
            self._gone.clear()
            self._http_routes = {}
            self._http_totals.clear()
        self._watch_http(frozenset())

    def _sync_policies(self, registered: dict[str, DiscoveredProcess]) -> None:
        services = sorted({p.entity.service_name for p in registered.values()})
        with self._lock:
            known = self._cache.known_uuids(services)
        try:
            updates = self._policy_source.fetch(known)
            self._warnings.resolved("policy query")
        except Exception as exc:  # noqa: BLE001 - keep the cached policies
            self.stats.policy_query_failures += 1
            self._warnings.warn("policy query", f"policy query failed, keeping cached: {exc}")
            updates = None

        with self._lock:
            if updates:
                self._cache.apply(updates)
            self._cache.refresh(registered)
            self._watches = self._cache.watches()
            self._gone &= {process_key(p) for p in registered.values()}
            self._windows.retain(window_capacities(self._watches))
            self._plan = plan_fetch(self._watches, frozenset(self._gone))
            self._http_routes = self._routes(self._plan.http)
            http = self._plan.http
        self._watch_http(http)

    def _routes(self, processes: frozenset[ProcessKey]) -> dict[int, list[tuple[SeriesKey, Uri]]]:
        routes: dict[int, dict[SeriesKey, Uri]] = {}
        for watch in self._watches:
            key = process_key(watch.process)
            if not watch.item.http or key not in processes:
                continue
            for series, uri in watch_series(watch):
                if uri is not None:
                    routes.setdefault(key[0], {})[series] = uri
        return {pid: list(series.items()) for pid, series in routes.items()}

    def _watch_http(self, processes: frozenset[ProcessKey]) -> None:
        if self._http is None:
            return
        try:
            self._http.watch(sorted({pid for pid, _ in processes}))
        except Exception as exc:  # noqa: BLE001 - a bug guard: the other monitors go on
            self._warnings.warn("http watch", f"cannot watch HTTP requests: {exc}")

    def _evaluate(self, now: float) -> tuple[list[Finding], list[MeterSample]]:
        if self._last_fetch_slot is None:
            return [], []
        # The window ends at the newest fetched slot, but never lags the clock by
        # more than a slot, so a stalled fetch loop cannot keep old data alive.
        anchor = max(self._last_fetch_slot, self._slot(now) - 1)
        findings = self._checker.evaluate(
            self._watches,
            self._windows,
            anchor,
            lambda dimension: self._history.may_trigger(dimension, now),
        )
        wall_offset = self._wall_clock() - now  # wall clock minus our clock
        epoch = self._epoch if self._epoch is not None else now
        samples = collect_meters(
            self._watches,
            self._windows,
            self.config.meter_prefix,
            self._metered_through,
            int((now + wall_offset) * 1000),
            through=anchor,
            slot_ms=lambda slot: int((epoch + slot + wall_offset) * 1000),
        )
        self._metered_through = anchor
        return findings, samples

    def _send_meters(self, samples: list[MeterSample]) -> None:
        batch = self._unsent + samples
        if not batch:
            return
        try:
            self._meter_sink.send(batch)
        except Exception as exc:  # noqa: BLE001 - keep them for the next round
            self.stats.meter_send_failures += 1
            self._warnings.warn("meters", f"sending {len(batch)} meter(s) failed: {exc}")
            overflow = len(batch) - MAX_UNSENT_METERS
            if overflow > 0:
                self.stats.meters_dropped += overflow
                batch = batch[overflow:]
            self._unsent = batch
            return
        self._unsent = []
        self.stats.meter_sends += 1
        self._warnings.resolved("meters")

    def _trigger(self, findings: list[Finding]) -> None:
        duration_s = int(self.config.trigger.execute_duration)
        for trigger in group_triggers(findings, duration_s):
            dimension = dimension_of(trigger.target, trigger.process_id, trigger.process)
            causes = ", ".join(
                f"{c.monitor}{f' {c.uri.label}' if c.uri else ''} {c.current:g} >= {c.threshold:g}"
                for c in trigger.causes
            )
            try:
                task_id = self._trigger_sink.report(trigger)
            except Exception as exc:  # noqa: BLE001 - skip this round, retry at the next check
                self.stats.report_failures += 1
                self._warnings.warn(
                    "trigger report",
                    f"reporting the {trigger.target} trigger of process {trigger.process_id} "
                    f"failed, will retry at the next check: {exc}",
                )
                continue
            self._warnings.resolved("trigger report")
            self.stats.triggers_reported += 1
            self._history.record(dimension, self._clock())
            log.info(
                "continuous profiling: %s task %s for process %s (pid %d, %s): %s",
                trigger.target,
                task_id,
                trigger.process_id,
                trigger.process.pid,
                trigger.process.entity.service_name,
                causes,
            )
            rules = trigger.sampling_rules() if trigger.target is TargetType.NETWORK else None
            try:
                self._task_starter.start(
                    task_id,
                    trigger.target.value,
                    list(trigger.processes),
                    trigger.duration_s,
                    rules=rules,
                )
            except Exception as exc:  # noqa: BLE001 - the backend's task stays empty
                self.stats.start_failures += 1
                log.warning(
                    "continuous profiling: task %s could not start locally: %s", task_id, exc
                )
        self._history.forget_expired(self._clock())

    # -- introspection (tests, status) ----------------------------------------

    def policies(self) -> dict[str, str]:
        """Service -> cached policy uuid."""
        with self._lock:
            return {p.service: p.uuid for p in self._cache.policies()}

    def fetch_plan(self) -> FetchPlan:
        with self._lock:
            return self._plan
