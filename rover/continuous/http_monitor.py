"""The HTTP event source of continuous profiling (spec 8.13 rules 1-6).

:class:`HttpMonitor` owns a network observer of its own (a second load of
``bpf/network.c``, separate from NETWORK tasks'), loaded in its thread when the
first process is watched and closed when none is left. Each connection's data
calls go through an HTTP/1 parser; of the exchanges only the requests the
process *served* (received) become :class:`HttpEvent` s, which the profiler
takes with :meth:`HttpMonitor.drain` every fetch round.

Times: the request time is when the call that read the request's first bytes
returned; the response time is when the first call sending the response started;
the duration is their difference in whole ms. Times are CLOCK_MONOTONIC, which
is Python's ``time.monotonic`` (the profiler's clock). Unlike Rover, pipelined
requests are all paired (the parser queues them) rather than replaced.

Everything is bounded: parsers (``max_connections``, idle ones expire: see
``rover.network.parsers``), the events waiting for :meth:`drain` (``max_events``);
losses are counted in :meth:`HttpMonitor.metrics`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable

from rover.continuous.http_series import HttpEvent
from rover.network.model import ConnectionClosed, DataSyscall, HttpExchange, Role
from rover.network.monitor import Observer
from rover.network.parsers import IDLE_S, ConnectionParser, ConnectionParsers
from rover.network.sampling import request_path

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 4096  # connections parsed at once
MAX_EVENTS = 100_000  # events waiting for the profiler (about 2 MB)
RETRY_LOAD_S = 60.0  # after the program failed to load
_POLL_MS = 200

COUNTERS = (
    "http_events",  # served requests handed to the profiler
    "http_events_dropped",  # the profiler did not drain in time: oldest dropped
    "http_client_exchanges",  # requests the process made (not measured)
    "observer_loads",
    "observer_load_failures",
    "pid_add_failures",  # a process that could not be watched (gone, /proc unreadable)
    "events_failed",  # an event the analysis raised on (a bug guard)
    "event_read_errors",
)


class HttpMonitor:
    """:class:`rover.continuous.ports.HttpEventSource` over a network observer."""

    def __init__(
        self,
        make_observer: Callable[[], Observer],
        make_parser: Callable[[int, int], ConnectionParser],
        *,
        max_connections: int = MAX_CONNECTIONS,
        max_events: int = MAX_EVENTS,
        parser_idle_s: float = IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.make_observer = make_observer
        self.parser_idle_s = parser_idle_s
        self.clock = clock
        self.counters: dict[str, int] = defaultdict(int, dict.fromkeys(COUNTERS, 0))
        self._lock = threading.Lock()
        self._wanted: frozenset[int] = frozenset()
        self._changed = threading.Event()
        self._events: deque[HttpEvent] = deque(maxlen=max_events)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # owned by the thread
        self._observer: Observer | None = None
        self._watched: set[int] = set()
        self._parsers = ConnectionParsers(make_parser, max_connections, parser_idle_s, clock)

    # -- the profiler's side ---------------------------------------------------
    def watch(self, pids: Iterable[int]) -> None:
        wanted = frozenset(pids)
        with self._lock:
            if wanted == self._wanted:
                return
            self._wanted = wanted
            self._changed.set()
            if wanted and self._thread is None:
                self._stop.clear()
                self._start_thread()

    def drain(self) -> list[HttpEvent]:
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the thread and free the program (the agent's shutdown); False when the
        thread is still busy (compiling) after ``timeout``."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._wanted = frozenset()
        self._stop.set()
        self._changed.set()
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def metrics(self) -> dict[str, int]:
        values = dict(self.counters)
        values.update(self._parsers.counters)
        observer = self._observer
        if observer is not None:
            with contextlib.suppress(Exception):  # closed meanwhile
                values.update({f"kernel_{k}": v for k, v in observer.counters().items()})
        return values

    @property
    def loaded(self) -> bool:
        return self._observer is not None

    # -- the thread --------------------------------------------------------------
    def _run(self) -> None:
        crashed = False
        try:
            self._loop()
        except Exception:  # a bug here must be seen: HTTP monitoring stops, the log says why
            crashed = True
            log.exception("continuous profiling: the HTTP monitor stopped")
        finally:
            with self._lock:
                self._unload()
                if self._thread is threading.current_thread():
                    self._thread = None
                    # watched again while this thread was leaving: a new one takes over
                    if self._wanted and not crashed and not self._stop.is_set():
                        self._start_thread()

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="continuous-http", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        retry_at = 0.0
        next_sweep = self.clock() + self.parser_idle_s
        while not self._stop.is_set():
            if self._changed.is_set() or self._observer is None:
                self._changed.clear()
                with self._lock:
                    wanted = self._wanted
                if not wanted:
                    return  # nothing left to watch: the program is freed
                if self._observer is None:
                    if self.clock() < retry_at:
                        self._changed.wait(_POLL_MS / 1000)
                        continue
                    if not self._load():
                        retry_at = self.clock() + RETRY_LOAD_S
                        continue
                self._sync(wanted)
            self._poll()
            if self.clock() >= next_sweep:
                next_sweep = self.clock() + self.parser_idle_s
                self._parsers.expire()

    def _load(self) -> bool:
        try:
            self._observer = self.make_observer()  # compiles: seconds
        except Exception as exc:  # noqa: BLE001 - HTTP monitors wait; the rest works
            self.counters["observer_load_failures"] += 1
            log.warning(
                "continuous profiling: HTTP monitoring unavailable (retrying in %.0fs): %s",
                RETRY_LOAD_S,
                exc,
            )
            return False
        self.counters["observer_loads"] += 1
        log.info("continuous profiling: HTTP monitoring started")
        return True

    def _unload(self) -> None:
        observer, self._observer = self._observer, None
        self._watched.clear()
        self._parsers.clear()
        if observer is not None:
            observer.close()
            log.info("continuous profiling: HTTP monitoring stopped")

    def _sync(self, wanted: frozenset[int]) -> None:
        observer = self._observer
        assert observer is not None
        for pid in self._watched - wanted:
            self._watched.discard(pid)
            try:
                observer.remove_pid(pid)
            except Exception as exc:  # noqa: BLE001
                log.debug("continuous profiling: HTTP unwatch of %d failed: %s", pid, exc)
            self._parsers.forget_pid(pid)
        for pid in wanted - self._watched:
            try:
                observer.add_pid(pid)
            except Exception as exc:  # noqa: BLE001 - gone already, or /proc unreadable
                self.counters["pid_add_failures"] += 1
                log.debug("continuous profiling: HTTP watch of %d failed: %s", pid, exc)
                continue
            self._watched.add(pid)

    def _poll(self) -> None:
        observer = self._observer
        assert observer is not None
        try:
            events = observer.poll(_POLL_MS)
        except Exception:  # noqa: BLE001 - counted; try again
            self.counters["event_read_errors"] += 1
            if self.counters["event_read_errors"] == 1:
                log.exception("continuous profiling: HTTP events could not be read")
            self._stop.wait(_POLL_MS / 1000)
            return
        found: list[HttpEvent] = []
        for event in events:
            try:
                if isinstance(event, DataSyscall):
                    found += self._on_data(event)
                elif isinstance(event, ConnectionClosed):
                    found += self._on_close(event)
            except Exception:  # one bad event must not end monitoring: logged once
                self.counters["events_failed"] += 1
                if self.counters["events_failed"] == 1:
                    log.exception("continuous profiling: an HTTP event failed (counted)")
        if found:
            with self._lock:
                room = self._events.maxlen or 0
                overflow = len(self._events) + len(found) - room
                if overflow > 0:
                    self.counters["http_events_dropped"] += overflow
                self._events.extend(found)
            self.counters["http_events"] += len(found)

    def _on_data(self, syscall: DataSyscall) -> list[HttpEvent]:
        if syscall.pid not in self._watched:
            return []
        return self._served(self._parsers.feed(syscall))

    def _on_close(self, closed: ConnectionClosed) -> list[HttpEvent]:
        return self._served(self._parsers.close(closed.stats.conn_id))

    def _served(self, exchanges: list[HttpExchange]) -> list[HttpEvent]:
        found = []
        for exchange in exchanges:
            if exchange.side is not Role.SERVER:
                self.counters["http_client_exchanges"] += 1
                continue
            found.append(event_of(exchange))
        return found


def event_of(exchange: HttpExchange) -> HttpEvent:
    """A served exchange as the monitors see it (spec 8.13 rules 4-6)."""
    request, response = exchange.request, exchange.response
    read = request.header_syscalls[0].end_ns if request.header_syscalls else request.start_ns
    return HttpEvent(
        pid=exchange.pid,
        path=request_path(request.target),
        time_s=read / 1e9,
        duration_ms=max(0, response.start_ns - read) // 1_000_000,
        error=response.status >= 500,
    )
