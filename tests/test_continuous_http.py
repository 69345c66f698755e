"""Continuous profiling's HTTP monitors without root: series and filters, slot values,
causes, meters, NETWORK triggers' rules (spec 4.7, 8.13), and the HTTP event source over
a fake observer with the real HTTP/1 parser."""

from __future__ import annotations

import threading
import time

from test_continuous_profiler import (
    FakeClock,
    FakeMeters,
    FakeMetrics,
    FakePolicies,
    FakeProcesses,
    FakeTasks,
    FakeTriggers,
    process,
)

from rover.config import ContinuousConfig
from rover.continuous import CheckItem, ContinuousProfiler, MonitorType, ServicePolicy, TargetType
from rover.continuous.http_monitor import HttpMonitor, event_of
from rover.continuous.http_series import GLOBAL, PATH, REGEX, HttpEvent, SlotTotals, Uri, item_uris
from rover.continuous.trigger import Cause
from rover.continuous.windows import SlotWindow
from rover.network.http1 import Http1Parser
from rover.network.model import (
    ConnectionClosed,
    ConnectionStats,
    DataSyscall,
    Direction,
    SamplingRule,
    SamplingSettings,
)

ERRORS = MonitorType.HTTP_ERROR_RATE
LATENCY = MonitorType.HTTP_AVG_RESPONSE_TIME


def http_item(
    monitor=ERRORS, threshold=20.0, period=5, count=2, target=TargetType.NETWORK, uris=(), regex=""
) -> CheckItem:
    return CheckItem(target, monitor, threshold, period, count, tuple(uris), regex)


# -- series, filters and values ------------------------------------------------------------


def test_an_item_has_one_series_per_listed_path_else_its_regex_else_one_global():
    assert item_uris(http_item(uris=["/a", "/b", "/a"], regex="x")) == (
        Uri(PATH, "/a"),
        Uri(PATH, "/b"),
    )
    assert item_uris(http_item(regex="^/api")) == (Uri(REGEX, "^/api"),)
    assert item_uris(http_item()) == (Uri(GLOBAL),)
    assert Uri(PATH, "/a").matches("/a") and not Uri(PATH, "/a").matches("/a/b")
    assert Uri(REGEX, "pay").matches("/api/pay/1")  # unanchored
    assert not Uri(REGEX, "^pay").matches("/api/pay")
    assert not Uri(REGEX, "(").matches("/(")  # an invalid regex matches nothing
    assert Uri(GLOBAL).matches("/anything")
    assert [u.label for u in (Uri(PATH, "/a"), Uri(REGEX, "^/x"), Uri(GLOBAL))] == [
        "/a",
        "^/x",
        "global",
    ]


def test_slot_values_are_error_percent_and_mean_ms_and_none_without_requests():
    totals = SlotTotals()
    assert totals.value(ERRORS) is None and totals.value(LATENCY) is None
    for error, ms in ((True, 10), (False, 20), (False, 30), (True, 40)):
        totals.add(HttpEvent(1, "/", 0.0, ms, error))
    assert totals.value(ERRORS) == 50.0
    assert totals.value(LATENCY) == 25.0


def test_a_window_takes_late_values_of_older_slots_within_its_length():
    window = SlotWindow(5)
    window.put(10, 1.0)
    window.put(12, 3.0)
    window.put(11, 2.0)  # between
    window.put(10, 1.5)  # replaced
    window.put(7, 9.0)  # older than the window: ignored
    assert window.between(0, 100) == [(10, 1.5), (11, 2.0), (12, 3.0)]
    assert window.between(10, 11) == [(11, 2.0)]


# -- through the profiler ---------------------------------------------------------------------


class FakeHttp:
    def __init__(self) -> None:
        self.pids: list[list[int]] = []
        self.events: list[HttpEvent] = []

    def watch(self, pids) -> None:
        self.pids.append(list(pids))

    def drain(self) -> list[HttpEvent]:
        events, self.events = self.events, []
        return events


class HttpHarness:
    def __init__(self, processes, **config) -> None:
        self.clock = FakeClock()
        self.http = FakeHttp()
        self.policies = FakePolicies()
        self.triggers = FakeTriggers()
        self.tasks = FakeTasks()
        self.meters = FakeMeters()
        self.profiler = ContinuousProfiler(
            ContinuousConfig(**config),
            policies=self.policies,
            triggers=self.triggers,
            tasks=self.tasks,
            meters=self.meters,
            processes=FakeProcesses(processes),
            metrics=FakeMetrics(),
            http=self.http,
            clock=self.clock,
            wall_clock=lambda: 1_700_000_000.0 + self.clock.now,
        )

    def policy(self, *items: CheckItem) -> None:
        self.policies.replies.append([ServicePolicy("svc", "v1", tuple(items))])
        self.profiler.check_once()

    def second(self, pid: int, *requests: tuple[str, int, bool]) -> None:
        """One second of (path, ms, error) requests, then a fetch round."""
        at = self.clock.now - 0.2
        self.http.events += [HttpEvent(pid, p, at, ms, e) for p, ms, e in requests]
        self.profiler.fetch_once()
        self.clock.now += 1

    def check(self) -> None:
        self.clock.now -= 1
        self.profiler.check_once()
        self.clock.now += 1

    def meters_sent(self):
        return [m for batch in self.meters.sent for m in batch]


FAIL = ("/fail", 1, True)
OK = ("/ok", 1, False)
SLOW = ("/slow", 300, False)


def test_error_rate_over_the_threshold_triggers_a_network_task_with_catch_all_rules():
    h = HttpHarness({"p1": process(1)})
    h.policy(http_item(ERRORS, 20, period=5, count=2))
    assert h.http.pids[-1] == [1]
    h.second(1, FAIL, OK, OK)  # 33 %
    h.second(1, OK, OK, OK, OK)  # 0 %
    h.second(1, FAIL, FAIL, OK)  # 67 %
    h.check()
    (trigger,) = h.triggers.reports
    assert trigger.target is TargetType.NETWORK
    (cause,) = trigger.causes
    assert cause.monitor is ERRORS and cause.uri == Uri(GLOBAL) and cause.threshold == 20
    assert round(cause.current, 1) == 66.7  # the most recent matching slot
    assert trigger.sampling_uri_regexes() == ("",)
    settings = SamplingSettings(True, -1, True, -1)
    assert h.tasks.rules == [[SamplingRule("", 0, True, True, settings)]]
    assert h.tasks.started[0][1] == "NETWORK"
    # meters: one per second with requests, uri "global", stamped with the slot's time
    meters = h.meters_sent()
    assert [round(m.value) for m in meters] == [33, 0, 67]
    assert {m.name for m in meters} == {"rover_con_p_http_error_rate"}
    assert all(dict(m.labels)["uri"] == "global" for m in meters)
    assert dict(meters[0].labels).keys() == {"uri", "process_name", "layer"}
    assert [m.timestamp_ms for m in meters] == sorted({m.timestamp_ms for m in meters})
    # silenced: still failing, no second trigger; meters keep flowing
    for _ in range(3):
        h.second(1, FAIL, FAIL)
    h.check()
    assert len(h.triggers.reports) == 1
    assert len(h.meters_sent()) == 6


def test_uri_list_counts_only_listed_paths_each_in_its_own_series():
    h = HttpHarness({"p1": process(1)})
    h.policy(
        http_item(LATENCY, 200, period=5, count=2, target=TargetType.ON_CPU, uris=["/slow"]),
    )
    for _ in range(3):
        h.second(1, SLOW, OK, OK, OK)  # the mean of all would be 75 ms
    h.check()
    (trigger,) = h.triggers.reports
    assert trigger.causes == (Cause(LATENCY, 200, 300.0, Uri(PATH, "/slow")),)
    assert h.tasks.rules == [None]  # ON_CPU: no sampling rules
    meters = h.meters_sent()
    assert {(m.name, dict(m.labels)["uri"], m.value) for m in meters} == {
        ("rover_con_p_http_avg_response_time", "/slow", 300.0)
    }


def test_a_listed_fast_path_does_not_trigger_although_another_path_is_slow():
    h = HttpHarness({"p1": process(1)})
    h.policy(http_item(LATENCY, 200, period=5, count=2, uris=["/ok", "/missing"]))
    for _ in range(4):
        h.second(1, SLOW, SLOW, OK)
    h.check()
    assert h.triggers.reports == []
    labels = {dict(m.labels)["uri"] for m in h.meters_sent()}
    assert labels == {"/ok"}  # /missing had no request: no meter at all


def test_regex_series_and_several_paths_firing_give_one_cause_each():
    h = HttpHarness({"p1": process(1)})
    h.policy(
        http_item(ERRORS, 50, period=5, count=1, uris=["/a", "/b"]),
        http_item(LATENCY, 100, period=5, count=1, regex="^/s"),
    )
    h.second(1, ("/a", 1, True), ("/b", 1, True), ("/slow", 150, False), ("/x/slow", 900, False))
    h.check()
    (trigger,) = h.triggers.reports
    assert {(c.monitor, c.uri, c.current) for c in trigger.causes} == {
        (ERRORS, Uri(PATH, "/a"), 100.0),
        (ERRORS, Uri(PATH, "/b"), 100.0),
        (LATENCY, Uri(REGEX, "^/s"), 150.0),
    }
    assert trigger.sampling_uri_regexes() == ("/a", "/b", "^/s")
    assert [r.uri_regex for r in h.tasks.rules[0]] == ["/a", "/b", "^/s"]


def test_rings_advance_by_the_clock_so_old_errors_age_out():
    h = HttpHarness({"p1": process(1)})
    h.policy(http_item(ERRORS, 20, period=3, count=2, target=TargetType.OFF_CPU))
    h.second(1, FAIL)
    h.second(1, FAIL)
    for _ in range(5):
        h.second(1)  # no traffic: the window moves on (Rover's rings would not)
    h.check()
    assert h.triggers.reports == []


def test_requests_of_other_processes_and_late_ones_are_counted_not_measured():
    h = HttpHarness({"p1": process(1)})
    h.policy(http_item())
    h.second(1)
    h.http.events.append(HttpEvent(99, "/", h.clock.now, 1, True))
    h.http.events.append(HttpEvent(1, "/", h.clock.now - 100, 1, True))
    h.second(1)
    stats = h.profiler.stats
    assert (stats.http_events, stats.http_events_unwatched, stats.http_events_late) == (2, 1, 1)


def test_a_late_request_updates_its_own_second():
    h = HttpHarness({"p1": process(1)})
    h.policy(http_item(LATENCY, 250, period=5, count=1))
    h.second(1, ("/", 100, False))
    # a slow request read in the previous second, completed in this one
    h.http.events.append(HttpEvent(1, "/", h.clock.now - 1.2, 500, False))
    h.second(1)
    h.check()
    (trigger,) = h.triggers.reports
    assert trigger.causes[0].current == 300.0  # (100 + 500) / 2 in the first second


def test_no_http_item_left_releases_the_source():
    h = HttpHarness({"p1": process(1)})
    h.policy(http_item())
    h.policies.replies.append([ServicePolicy("svc", "v2", ())])
    h.profiler.check_once()
    assert h.http.pids == [[1], []]


# -- the event source over a fake observer ------------------------------------------------------


class FakeObserver:
    def __init__(self) -> None:
        self.pids: set[int] = set()
        self.events: list = []
        self.closed = False
        self.lock = threading.Lock()

    def add_pid(self, pid: int) -> None:
        self.pids.add(pid)

    def remove_pid(self, pid: int) -> None:
        self.pids.discard(pid)

    def poll(self, timeout_ms: int) -> list:
        with self.lock:
            events, self.events = self.events, []
        if not events:
            time.sleep(timeout_ms / 1000 / 10)
        return events

    def push(self, *events) -> None:
        with self.lock:
            self.events += events

    def connections(self) -> list:
        return []

    def counters(self) -> dict[str, int]:
        return {"ringbuf_drops": 0}

    def close(self) -> None:
        self.closed = True


MS = 1_000_000


def call(conn, pid, data_id, direction, payload: bytes, start_ms, end_ms) -> DataSyscall:
    return DataSyscall(
        conn, pid, 3, pid, data_id, "Read" if direction is Direction.RECV else "Write",
        direction, start_ms * MS, end_ms * MS, len(payload), payload,
    )  # fmt: skip


REQUEST = b"GET /api/x?id=1 HTTP/1.1\r\nHost: a\r\n\r\n"


def response(status: int) -> bytes:
    return f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode()


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_the_source_keeps_served_requests_with_their_times_and_status():
    observers: list[FakeObserver] = []

    def make() -> FakeObserver:
        observers.append(FakeObserver())
        return observers[-1]

    monitor = HttpMonitor(make, Http1Parser)
    monitor.watch([7])
    wait_until(lambda: observers and observers[0].pids == {7})
    obs = observers[0]
    obs.push(
        # served: read at 1000-1002 ms, answered from 1052 ms, status 503
        call(1, 7, 1, Direction.RECV, REQUEST, 1000, 1002),
        call(1, 7, 2, Direction.SEND, response(503), 1052, 1053),
        # a call the process made (it sent the request): not measured
        call(2, 7, 1, Direction.SEND, REQUEST, 1000, 1001),
        call(2, 7, 2, Direction.RECV, response(200), 1100, 1101),
        # a process not watched
        call(3, 8, 1, Direction.RECV, REQUEST, 1000, 1001),
        call(3, 8, 2, Direction.SEND, response(200), 1100, 1101),
    )
    wait_until(lambda: monitor.counters["http_events"] == 1)
    (event,) = monitor.drain()
    assert event == HttpEvent(7, "/api/x", 1.002, 50, True)
    assert monitor.counters["http_client_exchanges"] == 1
    assert monitor.drain() == []
    # a request left unanswered when its connection closes: no event
    obs.push(
        call(4, 7, 1, Direction.RECV, REQUEST, 2000, 2001),
        ConnectionClosed(ConnectionStats(4, 7, 3), 2100 * MS),
    )
    monitor.watch([])  # nothing left: the program is freed
    wait_until(lambda: obs.closed and not monitor.loaded)
    assert monitor.close()
    # watched again: a new program
    monitor.watch([9])
    wait_until(lambda: len(observers) == 2 and observers[1].pids == {9})
    assert monitor.close() and observers[1].closed


def test_the_source_is_bounded_and_counts_what_it_loses():
    obs = FakeObserver()
    monitor = HttpMonitor(lambda: obs, Http1Parser, max_connections=1, max_events=2)
    monitor.watch([7])
    wait_until(lambda: obs.pids == {7})
    for i in range(3):
        obs.push(
            call(1, 7, 2 * i + 1, Direction.RECV, REQUEST, 1000 + i, 1001 + i),
            call(1, 7, 2 * i + 2, Direction.SEND, response(200), 1010 + i, 1011 + i),
        )
    obs.push(call(2, 7, 1, Direction.RECV, REQUEST, 1000, 1001))  # a second connection
    wait_until(lambda: monitor.metrics()["http_connections_untracked"] == 1)
    assert len(monitor.drain()) == 2
    assert monitor.counters["http_events_dropped"] == 1
    monitor.close()


def test_a_program_that_fails_to_load_is_logged_and_counted(caplog):
    def broken():
        raise OSError("no BPF here")

    monitor = HttpMonitor(broken, Http1Parser)
    monitor.watch([7])
    wait_until(lambda: monitor.counters["observer_load_failures"] == 1)
    assert "HTTP monitoring unavailable" in caplog.text
    assert monitor.close()


def test_event_of_uses_the_request_read_and_the_response_start():
    parser = Http1Parser(1, 7)
    parser.feed(call(1, 7, 1, Direction.RECV, REQUEST, 100, 130))
    (exchange,) = parser.feed(call(1, 7, 2, Direction.SEND, response(200), 330, 400))
    assert event_of(exchange) == HttpEvent(7, "/api/x", 0.13, 200, False)
