"""Each connection's HTTP parser (rover/network/parsers.py): made, closed, bounded, expired."""

from __future__ import annotations

from rover.network.http1 import Http1Parser
from rover.network.model import DataSyscall, Direction
from rover.network.parsers import ConnectionParsers

REQUEST = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def call(conn_id: int, pid: int, data_id: int, direction: Direction, payload: bytes):
    return DataSyscall(conn_id, pid, 3, pid, data_id, "Read", direction, data_id * 10,
                       data_id * 10 + 5, len(payload), payload)  # fmt: skip


def test_a_connection_parses_across_calls_and_its_close_completes_it():
    parsers = ConnectionParsers(Http1Parser, max_connections=4)
    assert parsers.feed(call(1, 10, 1, Direction.RECV, REQUEST)) == []
    (exchange,) = parsers.feed(call(1, 10, 2, Direction.SEND, RESPONSE))
    assert exchange.response.status == 200 and len(parsers) == 1
    parsers.feed(call(1, 10, 3, Direction.RECV, REQUEST))
    assert parsers.close(1) == [] and len(parsers) == 0
    assert parsers.counters["http_requests_unanswered_at_close"] == 1
    assert parsers.close(1) == []  # already gone


def test_connections_beyond_the_bound_are_counted_not_parsed():
    parsers = ConnectionParsers(Http1Parser, max_connections=1)
    parsers.feed(call(1, 10, 1, Direction.RECV, REQUEST))
    assert parsers.feed(call(2, 10, 1, Direction.RECV, REQUEST)) == []
    assert parsers.counters["http_connections_untracked"] == 1 and len(parsers) == 1


def test_idle_parsers_expire_and_a_pids_parsers_go_with_it():
    clock = Clock()
    parsers = ConnectionParsers(Http1Parser, max_connections=8, idle_s=60, clock=clock)
    parsers.feed(call(1, 10, 1, Direction.RECV, REQUEST))
    clock.now = 50
    parsers.feed(call(2, 11, 1, Direction.RECV, REQUEST))
    parsers.feed(call(3, 11, 1, Direction.RECV, b"GET /b HTTP/1.1\r\n"))
    clock.now = 61
    parsers.expire()  # conn 1 was fed 61 s ago: its close was lost
    assert len(parsers) == 2 and parsers.counters["http_parsers_expired"] == 1
    parsers.forget_pid(11, close=True)  # exited: what was pending is counted
    assert len(parsers) == 0
    assert parsers.counters["http_requests_unanswered_at_close"] == 1
    assert parsers.counters["http_incomplete_at_close"] == 1


def test_live_parsers_counters_are_summed_once():
    parsers = ConnectionParsers(Http1Parser, max_connections=8)
    parsers.feed(call(1, 10, 1, Direction.SEND, RESPONSE))  # a response without a request
    parsers.collect_counters()
    parsers.collect_counters()
    assert parsers.counters["http_responses_unmatched"] == 1
