"""The shared network monitor: tasks watching processes, the analyzer loop, reports."""

from __future__ import annotations

import os
import subprocess
import threading
import time

from rover.config.model import NetworkConfig
from rover.network.model import (
    L4_BUCKETS_NS,
    ConnectionClosed,
    ConnectionStats,
    DataSyscall,
    Direction,
    HttpExchange,
    HttpMessage,
    Protocol,
    Role,
    SampledExchange,
    SamplingRule,
    SocketAddress,
    TraceContext,
    Traffic,
)
from rover.network.monitor import NetworkMonitor
from rover.process.model import Entity

HIST = (0,) * len(L4_BUCKETS_NS)
# live processes: the monitor forgets the connections of processes that exited
A, B, C = os.getpid(), os.getppid(), 1
SERVER = SocketAddress("10.0.0.1", 80)
PEER = SocketAddress("10.0.0.9", 5555)


class FakeObserver:
    def __init__(self) -> None:
        self.pids: list[int] = []
        self.events: list = []
        self.live: list[ConnectionStats] = []
        self.closed = False
        self.lock = threading.Lock()

    def add_pid(self, pid: int) -> None:
        self.pids.append(pid)

    def remove_pid(self, pid: int) -> None:
        self.pids.remove(pid)

    def poll(self, timeout_ms: int, max_events: int | None = None) -> list:
        with self.lock:
            events, self.events = self.events, []
        if not events:
            time.sleep(timeout_ms / 1000)
        return events

    def connections(self) -> list[ConnectionStats]:
        with self.lock:
            return list(self.live)

    def counters(self) -> dict[str, int]:
        return {"ringbuf_drops": 0}

    def close(self) -> None:
        self.closed = True


class EchoParser:
    """One exchange per received syscall: enough to see the monitor route them."""

    def __init__(self, conn_id: int, pid: int) -> None:
        self.conn_id, self.pid = conn_id, pid
        self.counters: dict[str, int] = {"http_resyncs": 0}

    def feed(self, syscall: DataSyscall) -> list[HttpExchange]:
        request = HttpMessage(
            is_request=True,
            method="GET",
            target="/x",
            direction=Direction.RECV,
            header_bytes=syscall.payload,
            start_ns=syscall.start_ns,
        )
        response = HttpMessage(is_request=False, status=500, direction=Direction.SEND,
                               start_ns=syscall.end_ns, end_ns=syscall.end_ns)  # fmt: skip
        return [HttpExchange(self.conn_id, self.pid, request, response)]

    def close(self) -> list[HttpExchange]:
        return []


class Reports:
    def __init__(self) -> None:
        self.sent: list[tuple[list[Traffic], int]] = []
        self.event = threading.Event()

    def send(self, traffics: list[Traffic], flush_ms: int) -> None:
        self.sent.append((traffics, flush_ms))
        self.event.set()


def always_5xx(exchange: HttpExchange, rules: list[SamplingRule]) -> SampledExchange | None:
    trace = TraceContext("skywalking", "t", "s", "1")
    return SampledExchange(exchange, "status_5xx", trace, rules[-1])


def entity(name: str) -> Entity:
    return Entity(layer="GENERAL", service_name=name, instance_name="i", process_name=name)


def monitor(reports: Reports, observers: list[FakeObserver]) -> NetworkMonitor:
    def make_observer() -> FakeObserver:
        observers.append(FakeObserver())
        return observers[-1]

    return NetworkMonitor(
        NetworkConfig(report_interval=0.1), make_observer, EchoParser, always_5xx, reports
    )


def server_conn(pid: int, **values) -> ConnectionStats:
    return ConnectionStats(conn_id=7, pid=pid, fd=4, role=Role.SERVER, protocol=Protocol.HTTP1,
                           local=SERVER, remote=PEER, write_hist=HIST, read_hist=HIST,
                           rtt_hist=HIST, **values)  # fmt: skip


def data(pid: int, n: int) -> DataSyscall:
    return DataSyscall(conn_id=7, pid=pid, fd=4, tid=pid, data_id=n, syscall="Read",
                       direction=Direction.RECV, start_ns=n * 10**6, end_ns=n * 10**6 + 5 * 10**6,
                       size=20, payload=b"GET /x HTTP/1.1\r\n\r\n")  # fmt: skip


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_one_program_serves_every_task_and_processes_are_reference_counted():
    reports, observers = Reports(), []
    m = monitor(reports, observers)
    m.watch("task-a", A, "p10", entity("a"), [SamplingRule(None, when_5xx=True)])
    m.watch("task-b", A, "p10", entity("a"), [SamplingRule(None, when_5xx=True)])
    m.watch("task-b", B, "p11", entity("b"), [])
    assert len(observers) == 1 and observers[0].pids == [A, B]
    m.unwatch_task("task-a")  # task-b still lists pid A
    assert observers[0].pids == [A, B] and not observers[0].closed
    m.unwatch_task("task-b")
    assert observers[0].closed and m.watching() == {}
    m.watch("task-c", C, "p12", entity("c"), [])  # a new task loads a new program
    assert len(observers) == 2
    m.stop()


def test_exchanges_are_counted_sampled_and_reported_per_interval():
    reports, observers = Reports(), []
    m = monitor(reports, observers)
    m.watch("task", A, "p10", entity("svc"), [SamplingRule(None, when_5xx=True)])
    observer = observers[0]
    with observer.lock:
        observer.live = [server_conn(A, read_count=15, read_bytes=300)]
        observer.events = [data(A, n) for n in range(15)]
    try:
        wait_for(lambda: sum(t.http.requests for ts, _ in reports.sent for t in ts if t.http) == 15)
        traffics = [t for ts, _ in reports.sent for t in ts]
        assert {(t.process_id, t.role) for t in traffics} == {("p10", Role.SERVER)}
        assert sum(t.l4.read_count for t in traffics) == 15
        statuses = [s for t in traffics if t.http for s in t.http.statuses.elements()]
        assert statuses == [500] * 15
        # at most the top 10 per reason and report
        assert all(len(t.sampled) <= 10 for t in traffics)
        assert sum(len(t.sampled) for t in traffics) >= 10
    finally:
        m.stop()


def test_a_close_reports_the_final_interval_and_the_last_task_flushes_what_is_left():
    reports, observers = Reports(), []
    m = monitor(reports, observers)
    m.watch("task", A, "p10", entity("svc"), [])
    observer = observers[0]
    with observer.lock:
        final = server_conn(A, read_count=3, close_ns=1000)
        observer.events = [ConnectionClosed(final, closed_at_ns=1)]
    m.unwatch_task("task")  # stops: the pending close is reported, not dropped
    closes = [t.l4.close_count for ts, _ in reports.sent for t in ts]
    assert closes == [1]
    assert observer.closed


def test_a_failing_observer_read_is_counted_and_monitoring_goes_on():
    reports, observers = Reports(), []
    m = monitor(reports, observers)
    m.watch("task", A, "p10", entity("svc"), [])
    observer = observers[0]
    calls = {"n": 0}
    real_poll = observer.poll

    def flaky(timeout_ms: int, max_events: int | None = None) -> list:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("ring buffer gone")
        return real_poll(timeout_ms, max_events)

    observer.poll = flaky
    wait_for(lambda: calls["n"] > 2)
    assert m.metrics()["event_read_errors"] == 1
    m.stop()


class BrokenParser(EchoParser):
    def feed(self, syscall: DataSyscall) -> list[HttpExchange]:
        if syscall.data_id == 0:
            raise ValueError("parser bug")
        return super().feed(syscall)


def test_an_event_that_cannot_be_analyzed_is_counted_and_the_rest_go_on():
    reports, observers = Reports(), []
    m = NetworkMonitor(
        NetworkConfig(report_interval=0.1),
        lambda: observers.append(FakeObserver()) or observers[-1],
        BrokenParser,
        always_5xx,
        reports,
    )
    m.watch("task", A, "p10", entity("svc"), [])
    with observers[0].lock:
        observers[0].live = [server_conn(A, read_count=3)]
        observers[0].events = [data(A, n) for n in range(3)]
    try:
        wait_for(lambda: sum(t.http.requests for ts, _ in reports.sent for t in ts if t.http) == 2)
        assert m.metrics()["events_failed"] == 1
    finally:
        m.stop()


def test_a_process_that_exits_has_its_connections_forgotten_and_counted():
    reports, observers = Reports(), []
    m = monitor(reports, observers)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        m.watch("task", sleeper.pid, "p-sleep", entity("svc"), [])
        with observers[0].lock:
            observers[0].live = [server_conn(sleeper.pid, read_count=2)]
        sleeper.kill()
        sleeper.wait()
        wait_for(lambda: m.metrics().get("processes_exited") == 1)
        assert m.metrics()["connections_open_at_exit"] == 1
        assert sleeper.pid not in observers[0].pids  # removed from the kernel's filter
    finally:
        m.stop()
