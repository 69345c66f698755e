"""The network monitor every NETWORK task shares (spec 8.2 rules 8-10).

One observation program, one analyzer thread and one report timer serve all NETWORK
tasks. A task adds its processes; a process is watched while any task lists it (reference
counted, unlike Rover, spec 8.15 rule 6) and its sampling rules are those of the latest
task that covers it (Rover appends every task's rules to one shared list, rule 5). The
program is loaded when the first process is watched and freed when the last one leaves;
that last interval is reported, not dropped as in Rover.

The analyzer thread reads the kernel's events, parses HTTP per connection and folds the
exchanges into per-connection statistics; every ``report_interval`` it groups connections
into traffics and hands them to the sender, which runs in a thread of its own so a slow
backend never stops the reading of events.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from rover.config.model import NetworkConfig
from rover.hostfs import HostFS
from rover.network.model import (
    ConnectionClosed,
    ConnectionStats,
    DataSyscall,
    HttpExchange,
    Retransmit,
    SampledExchange,
    SamplingRule,
    SocketAddress,
    Traffic,
)
from rover.network.parsers import ConnectionParser, ConnectionParsers
from rover.network.sockets import SocketTable, host_addresses
from rover.network.traffic import (
    TOP_N,
    ConnectionTracker,
    LocalEntity,
    PeerContext,
    build_traffics,
)
from rover.process.model import Entity

log = logging.getLogger(__name__)

Event = DataSyscall | ConnectionClosed | Retransmit


class Observer(Protocol):
    def add_pid(self, pid: int) -> None: ...
    def remove_pid(self, pid: int) -> None: ...
    def poll(self, timeout_ms: int, max_events: int | None = None) -> list[Event]: ...
    def connections(self) -> list[ConnectionStats]: ...
    def counters(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class ReportSender(Protocol):
    def send(self, traffics: list[Traffic], flush_ms: int) -> None:
        """Deliver one report; logs and counts its own failures."""
        ...


Sampler = Callable[[HttpExchange, list[SamplingRule]], SampledExchange | None]


@dataclass
class _Watched:
    pid: int
    entities: dict[str, Entity] = field(default_factory=dict)  # process id -> entity
    tasks: dict[str, set[str]] = field(default_factory=dict)  # process id -> task ids
    rules: list[SamplingRule] = field(default_factory=list)
    exited: bool = False  # its connections were forgotten when it was seen gone


class NetworkMonitor:
    def __init__(
        self,
        config: NetworkConfig,
        make_observer: Callable[[], Observer],
        make_parser: Callable[[int, int], ConnectionParser],
        sample: Sampler,
        sender: ReportSender,
        hostfs: HostFS | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.make_observer = make_observer
        self.sample = sample
        self.sender = sender
        self.hostfs = hostfs or HostFS()
        self.clock = clock
        self.counters: dict[str, int] = defaultdict(int)
        self._lock = threading.RLock()
        self._watched: dict[int, _Watched] = {}
        # pid -> entities of processes no task lists any more, named until the next report
        self._leaving: dict[int, dict[str, Entity]] = {}
        self._observer: Observer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._tracker = ConnectionTracker(config.max_connections)
        self._parsers = ConnectionParsers(make_parser, config.max_connections)
        self._by_tuple: dict[tuple[SocketAddress, SocketAddress], int] = {}
        self._reports: queue.Queue[tuple[list[Traffic], int] | None] = queue.Queue(maxsize=2)
        self._sender_thread: threading.Thread | None = None

    # -- tasks -----------------------------------------------------------------
    def watch(
        self,
        task_id: str,
        pid: int,
        process_id: str,
        entity: Entity,
        rules: list[SamplingRule],
    ) -> None:
        """Watch ``pid`` for a task (loads the program on first use: may take seconds and
        raise BPFLoadError)."""
        with self._lock:
            self._ensure_running()
            assert self._observer is not None
            watched = self._watched.get(pid)
            if watched is None:
                self._observer.add_pid(pid)
                watched = self._watched[pid] = _Watched(pid)
            watched.entities[process_id] = entity
            watched.tasks.setdefault(process_id, set()).add(task_id)
            watched.rules = list(rules)

    def unwatch_task(self, task_id: str) -> None:
        """The task ended: its processes leave unless another task still lists them. What
        they did since the last report is still reported (they stay named until then)."""
        with self._lock:
            last = all(
                tasks <= {task_id} for w in self._watched.values() for tasks in w.tasks.values()
            )
        if last:  # the final report names every process: stop before forgetting them
            self.stop()
            return
        with self._lock:
            for pid, watched in list(self._watched.items()):
                for process_id, tasks in list(watched.tasks.items()):
                    tasks.discard(task_id)
                    if not tasks:
                        del watched.tasks[process_id]
                        self._leaving.setdefault(pid, {})[process_id] = watched.entities.pop(
                            process_id
                        )
                if not watched.tasks:
                    del self._watched[pid]
                    if self._observer is not None and not watched.exited:
                        self._observer.remove_pid(pid)
                    self._tracker.forget_pid(pid)
                    self._parsers.forget_pid(pid)

    def prepare(self) -> None:
        """Load the program if no task has yet (seconds: the caller holds no lock of its
        own meanwhile)."""
        with self._lock:
            self._ensure_running()

    def watching(self) -> dict[int, list[str]]:
        with self._lock:
            return {pid: sorted(w.entities) for pid, w in self._watched.items()}

    # -- the analyzer thread -------------------------------------------------
    def _ensure_running(self) -> None:
        if self._observer is not None:
            return
        self._observer = self.make_observer()  # compiles: BPFLoadError goes to the task
        self._stop.clear()
        self._tracker = ConnectionTracker(self.config.max_connections)
        self._thread = threading.Thread(target=self._run, name="network-analyzer", daemon=True)
        self._sender_thread = threading.Thread(
            target=self._send_reports, name="network-report", daemon=True
        )
        self._thread.start()
        self._sender_thread.start()
        log.info("network monitor started")

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # a bug here must be seen: monitoring stops, the log says why
            log.exception("the network analyzer stopped")
            self.counters["analyzer_crashes"] += 1

    def _loop(self) -> None:
        period = self.config.report_interval
        next_report = time.monotonic() + period
        while not self._stop.is_set():
            wait_ms = max(0, int((next_report - time.monotonic()) * 1000))
            self._poll(min(wait_ms, 200))
            if time.monotonic() >= next_report:
                next_report += period
                self._refresh_tls()
                self._report()
        self._poll(0)
        self._report()  # the last, partial interval is sent too

    def _refresh_tls(self) -> None:
        """TLS libraries the watched processes loaded since they were added (an observer
        without TLS support has no ``refresh_tls``)."""
        refresh = getattr(self._observer, "refresh_tls", None)
        if refresh is None:
            return
        try:
            with self._lock:
                refresh()
        except Exception:  # never fatal: the plaintext of new libraries is what is lost
            self.counters["tls_refresh_errors"] += 1
            log.exception("TLS libraries could not be looked for")

    def _poll(self, timeout_ms: int) -> None:
        observer = self._observer
        if observer is None:
            return
        try:
            events = observer.poll(timeout_ms, self.config.protocol_analyze.queue_size)
        except Exception:  # a broken read must not end monitoring of every task
            log.exception("network events could not be read")
            self.counters["event_read_errors"] += 1
            time.sleep(timeout_ms / 1000)
            return
        with self._lock:
            for event in events:
                try:
                    if isinstance(event, DataSyscall):
                        self._on_data(event)
                    elif isinstance(event, ConnectionClosed):
                        self._on_close(event)
                    else:
                        self._on_retransmit(event)
                except Exception:  # one bad event must not end the analyzer: logged once
                    self.counters["events_failed"] += 1
                    if self.counters["events_failed"] == 1:
                        log.exception("a network event could not be analyzed (counted)")

    def _on_data(self, syscall: DataSyscall) -> None:
        self._take(syscall.pid, self._parsers.feed(syscall))

    def _take(self, pid: int, exchanges: list[HttpExchange]) -> None:
        watched = self._watched.get(pid)
        for exchange in exchanges:
            self._tracker.add_exchange_stats(exchange.conn_id, exchange)
            if watched is None or not watched.rules:
                continue
            sampled = self.sample(exchange, watched.rules)
            if sampled is not None:
                self._tracker.add_sampled(exchange.conn_id, sampled)

    def _on_close(self, closed: ConnectionClosed) -> None:
        self._take(closed.stats.pid, self._parsers.close(closed.stats.conn_id))
        self._tracker.closed(closed.stats)

    def _on_retransmit(self, event: Retransmit) -> None:
        conn_id = self._by_tuple.get((event.local, event.remote))
        if conn_id is None:
            self.counters["retransmits_unattributed"] += 1
            return
        self._tracker.add_retransmit(conn_id)

    def _report(self) -> None:
        observer = self._observer
        if observer is None:
            return
        try:
            live = observer.connections()
        except Exception:
            log.exception("network connections could not be read")
            self.counters["connection_read_errors"] += 1
            return
        with self._lock:
            named: dict[int, dict[str, Entity]] = {
                pid: dict(entities) for pid, entities in self._leaving.items()
            }
            for pid, w in self._watched.items():
                named.setdefault(pid, {}).update(w.entities)
            self._leaving.clear()
            tables: dict[int, SocketTable] = {}

            def table(pid: int) -> SocketTable:
                if pid not in tables:
                    tables[pid] = SocketTable(self.hostfs, pid)
                return tables[pid]

            context = PeerContext(
                host_addresses=host_addresses(),
                entities={
                    pid: [LocalEntity(process_id, entity) for process_id, entity in items.items()]
                    for pid, items in named.items()
                },
                listening=lambda pid: table(pid).listening_ports(),
            )
            intervals = self._tracker.report(c for c in live if c.pid in named)
            traffics = build_traffics(
                intervals, self._tracker, context, lambda pid, fd: table(pid).addresses(fd)
            )
            self._by_tuple = {
                (i.stats.local, i.stats.remote): i.stats.conn_id
                for i in intervals
                if i.stats.local is not None and i.stats.remote is not None
            }
            self._parsers.collect_counters()
            self._parsers.expire()  # closes that never came (lost events)
            for traffic in traffics:
                traffic.sampled = _top_n(traffic.sampled)
            self._forget_exited(observer, live)
        if not traffics:
            return
        try:
            self._reports.put_nowait((traffics, int(self.clock() * 1000)))
        except queue.Full:
            self.counters["reports_dropped_backend_slow"] += 1
            log.warning("network report dropped: the previous ones are still being sent")

    def _forget_exited(self, observer: Observer, live: list[ConnectionStats]) -> None:
        """A process that exited closed its sockets without close(): the kernel never
        says so. Its connections were reported a last time just now; they go, with the
        process (a task still listing it keeps it listed, with nothing to watch)."""
        for pid, watched in self._watched.items():
            if watched.exited or self.hostfs.is_running(pid):
                continue
            watched.exited = True
            observer.remove_pid(pid)
            self._tracker.forget_pid(pid)
            left_open = sum(1 for c in live if c.pid == pid)
            self.counters["processes_exited"] += 1
            self.counters["connections_open_at_exit"] += left_open
            self._parsers.forget_pid(pid, close=True)
            log.info("network: process %d exited (%d connections open)", pid, left_open)

    def _send_reports(self) -> None:
        while True:
            item = self._reports.get()
            if item is None:
                return
            traffics, flush_ms = item
            try:
                self.sender.send(traffics, flush_ms)
            except Exception:  # the sender counts its own failures; this is a bug guard
                log.exception("network report could not be sent")
                self.counters["report_errors"] += 1

    def stop(self, timeout: float = 5.0) -> None:
        """Report the last interval, free the program, end the threads."""
        with self._lock:
            thread, sender = self._thread, self._sender_thread
            self._thread = self._sender_thread = None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        with self._lock:
            observer, self._observer = self._observer, None
            for name, n in (observer.counters() if observer else {}).items():
                self.counters[f"kernel_{name}"] = n
            self._parsers.clear()
            self._watched.clear()
            self._leaving.clear()
        if observer is not None:
            observer.close()
        self._reports.put(None)
        if sender is not None:
            sender.join(timeout)
        log.info("network monitor stopped")

    def metrics(self) -> dict[str, int]:
        """Counters for /metrics: the analyzer's and, while running, the kernel's."""
        with self._lock:
            values = dict(self.counters)
            values.update(self._parsers.counters)
            values.update({f"tracker_{k}": v for k, v in self._tracker.counters.items()})
            observer = self._observer
        if observer is not None:
            for name, n in observer.counters().items():
                values[f"kernel_{name}"] = n
        return values


def _top_n(sampled: list[SampledExchange]) -> list[SampledExchange]:
    """Per reason, the TOP_N slowest; ties keep the earlier (spec 8.8 rule 4)."""
    by_reason: dict[str, list[SampledExchange]] = defaultdict(list)
    for item in sampled:
        by_reason[item.reason].append(item)
    kept: list[SampledExchange] = []
    for items in by_reason.values():
        # sorted() is stable: among equal durations the earlier stays first
        kept.extend(sorted(items, key=lambda s: -s.exchange.duration_ms)[:TOP_N])
    return kept
