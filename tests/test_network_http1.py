"""HTTP/1.x parsing of a connection's data syscalls (spec 8.7)."""

from __future__ import annotations

import gzip
import random

from rover.network.http1 import (
    COUNTER_NAMES,
    H2_PREFACE,
    MAX_MESSAGE_SYSCALLS,
    Http1Parser,
    detect_protocol,
)
from rover.network.model import DataSyscall, Direction, HttpExchange, Protocol, Role

MS = 1_000_000
RECV, SEND = Direction.RECV, Direction.SEND


class Conn:
    """Feeds syscalls with increasing data ids and times to one parser."""

    def __init__(self, **kwargs: int) -> None:
        self.parser = Http1Parser(conn_id=7, pid=42, **kwargs)
        self.data_id = 0
        self.now = 1_000 * MS
        self.syscalls: list[DataSyscall] = []

    def io(
        self,
        direction: Direction,
        payload: bytes,
        size: int | None = None,
        at: int | None = None,
        took: int = MS // 10,
    ) -> list[HttpExchange]:
        self.data_id += 1
        if at is not None:
            self.now = at
        sc = DataSyscall(
            conn_id=7,
            pid=42,
            fd=3,
            tid=42,
            data_id=self.data_id,
            syscall="Write" if direction is SEND else "Read",
            direction=direction,
            start_ns=self.now,
            end_ns=self.now + took,
            size=len(payload) if size is None else size,
            payload=payload,
        )
        self.syscalls.append(sc)
        self.now += took + MS
        return self.parser.feed(sc)

    def nonzero(self) -> dict[str, int]:
        return {k: v for k, v in self.parser.counters.items() if v}


GET = b"GET /api/orders?id=1 HTTP/1.1\r\nHost: shop\r\nUser-Agent: t\r\n\r\n"


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n"
    return head + body


def test_one_exchange_fields_duration_and_side() -> None:
    c = Conn()
    assert c.io(RECV, GET, at=5_000 * MS) == []
    [ex] = c.io(SEND, ok(b"hello"), at=5_120 * MS, took=3 * MS)
    req, resp = ex.request, ex.response
    assert (ex.conn_id, ex.pid) == (7, 42)
    assert (req.method, req.target, req.version) == ("GET", "/api/orders?id=1", "HTTP/1.1")
    assert req.headers == {"host": "shop", "user-agent": "t"}
    assert req.header_bytes == GET and req.body == b"" and req.body_size == 0
    assert req.start_ns == req.end_ns == 5_000 * MS and req.direction is RECV
    assert req.header_syscalls == [c.syscalls[0]] and req.body_syscalls == []
    assert resp.status == 200 and resp.version == "HTTP/1.1" and not resp.is_request
    assert resp.body == b"hello" and resp.body_size == 5
    assert resp.size == len(ok(b"hello"))
    assert resp.start_ns == 5_120 * MS and resp.end_ns == 5_123 * MS
    assert resp.header_syscalls == resp.body_syscalls == [c.syscalls[1]]
    assert ex.duration_ms == 123
    assert ex.side is Role.SERVER
    assert c.nonzero() == {}


def test_client_side_when_the_request_is_sent() -> None:
    c = Conn()
    c.io(SEND, GET)
    [ex] = c.io(RECV, ok())
    assert ex.side is Role.CLIENT and ex.request.direction is SEND


def test_keep_alive_many_exchanges_in_order() -> None:
    c = Conn()
    got = []
    for i in range(50):
        c.io(RECV, b"GET /n/%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
        got += c.io(SEND, ok(b"x" * i))
    assert [e.request.target for e in got] == [f"/n/{i}" for i in range(50)]
    assert [e.response.body_size for e in got] == list(range(50))
    assert c.parser.queued_requests == 0 and c.nonzero() == {}


def test_pipelined_requests_in_one_syscall_pair_in_order() -> None:
    c = Conn()
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(3))
    assert c.io(RECV, reqs) == []
    assert c.parser.queued_requests == 3
    got = c.io(SEND, ok(b"r0") + ok(b"r1"))
    got += c.io(SEND, ok(b"r2"))
    assert [(e.request.target, e.response.body) for e in got] == [
        ("/p0", b"r0"),
        ("/p1", b"r1"),
        ("/p2", b"r2"),
    ]
    assert c.nonzero() == {}


def test_pipelined_requests_without_length_are_not_swallowed_as_body() -> None:
    # "Rest of the syscall" framing stops where the next message starts.
    c = Conn()
    c.io(SEND, b"DELETE /a HTTP/1.1\r\n\r\nDELETE /b HTTP/1.1\r\n\r\n")
    got = c.io(RECV, ok(b"") + ok(b""))
    assert [e.request.target for e in got] == ["/a", "/b"]


def test_request_split_into_one_byte_writes() -> None:
    c = Conn()
    body = b'{"k": 1}'
    raw = b"POST /submit HTTP/1.1\r\nContent-Length: 8\r\nX-A: b\r\n\r\n" + body
    for i in range(len(raw)):
        assert c.io(SEND, raw[i : i + 1]) == []
    [ex] = c.io(RECV, ok(b"done"))
    req = ex.request
    assert req.method == "POST" and req.header_bytes == raw[: -len(body)]
    assert req.headers["x-a"] == "b" and req.body == body and req.body_size == 8
    assert len(req.header_syscalls) == len(raw) - len(body)
    assert req.header_syscalls[0] is c.syscalls[0]
    assert req.body_syscalls == c.syscalls[len(raw) - len(body) : len(raw)]
    assert req.start_ns == c.syscalls[0].start_ns and req.end_ns == c.syscalls[len(raw) - 1].end_ns
    assert c.nonzero() == {}


def test_headers_split_at_the_terminator() -> None:
    c = Conn()
    c.io(RECV, GET[:-3])
    c.io(RECV, GET[-3:-1])
    c.io(RECV, GET[-1:])
    [ex] = c.io(SEND, ok())
    assert ex.request.header_bytes == GET and len(ex.request.header_syscalls) == 3


def test_capped_payload_body_not_captured_still_frames() -> None:
    c = Conn()
    c.io(RECV, GET)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
    # Capture keeps only the headers and 10 body bytes of a 60000-byte write...
    assert c.io(SEND, head + b"0123456789", size=len(head) + 60000) == []
    # ...and nothing at all of the last 40000 bytes.
    [ex] = c.io(SEND, b"", size=40000)
    assert ex.response.body_size == 100000 and ex.response.body == b"0123456789"
    assert ex.response.end_ns == c.syscalls[2].end_ns
    assert ex.response.body_syscalls == c.syscalls[1:3]
    # The stream is still in step: the next exchange parses.
    c.io(RECV, GET)
    [ex2] = c.io(SEND, ok(b"next"))
    assert ex2.response.body == b"next"
    assert c.nonzero() == {}


def test_capped_body_then_next_message_in_same_syscall_beyond_capture() -> None:
    c = Conn()
    c.io(SEND, b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", size=40 + 5 + 30)
    # The body ends inside uncaptured bytes; whatever follows cannot be seen.
    assert c.parser.counters["http_resyncs"] == 1
    assert c.parser.queued_requests == 1


def test_chunked_response() -> None:
    c = Conn()
    c.io(SEND, GET)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert c.io(RECV, head + b"5\r\nhello\r\n") == []
    assert c.io(RECV, b"6;ext=1\r\n world\r\n") == []
    [ex] = c.io(RECV, b"0\r\nX-Trailer: t\r\n\r\n")
    assert ex.response.body == b"hello world" and ex.response.body_size == 11
    assert ex.response.end_ns == c.syscalls[3].end_ns
    assert ex.response.body_syscalls == c.syscalls[1:4]
    c.io(SEND, GET)
    assert len(c.io(RECV, head + b"3\r\nabc\r\n0\r\n\r\n")) == 1
    assert c.nonzero() == {}


def test_chunked_split_everywhere() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"
    )
    for cut in range(1, len(raw)):
        c = Conn()
        c.io(SEND, GET)
        got = c.io(RECV, raw[:cut]) + c.io(RECV, raw[cut:])
        assert [e.response.body for e in got] == [b"Wikipedia"], cut
        assert c.nonzero() == {}, cut


def test_chunked_framing_not_captured_ends_at_next_request() -> None:
    c = Conn()
    c.io(SEND, GET)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    # 8000-byte chunk, only 4 data bytes captured: the next chunk size is out of sight.
    assert c.io(RECV, head + b"8000\r\nabcd", size=len(head) + 6 + 40000) == []
    assert c.io(RECV, b"more", size=30000) == []
    assert c.parser.counters["http_chunk_framing_lost"] == 1
    # The client sends its next request: the previous response had ended.
    got = c.io(SEND, GET, at=c.now + 50 * MS)
    assert len(got) == 1
    assert got[0].response.end_ns == c.syscalls[2].end_ns
    assert got[0].response.body.startswith(b"abcd")
    [ex2] = c.io(RECV, ok(b"ok2"))
    assert ex2.response.body == b"ok2"


def test_chunked_lost_framing_ends_at_final_chunk() -> None:
    c = Conn()
    c.io(SEND, GET)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    c.io(RECV, head + b"10\r\n0123", size=len(head) + 4 + 400)
    [ex] = c.io(RECV, b"tail\r\n0\r\n\r\n")
    assert ex.response.end_ns == c.syscalls[2].end_ns


def test_chunked_bad_size_is_counted() -> None:
    c = Conn()
    c.io(SEND, GET)
    c.io(RECV, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert c.parser.counters["http_chunk_framing_lost"] == 1
    [ex] = c.parser.close()
    assert ex.response.status == 200


def test_head_response_has_no_body_despite_content_length() -> None:
    c = Conn()
    c.io(SEND, b"HEAD /h HTTP/1.1\r\n\r\n")
    [ex] = c.io(RECV, b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
    assert ex.response.body_size == 0 and ex.response.end_ns == ex.response.start_ns
    c.io(SEND, GET)
    [ex2] = c.io(RECV, ok(b"abc"))
    assert ex2.response.body == b"abc" and ex2.request.method == "GET"


def test_204_and_304_have_no_body() -> None:
    for status in (b"204 No Content", b"304 Not Modified"):
        c = Conn()
        c.io(SEND, GET)
        c.io(SEND, GET)
        got = c.io(RECV, b"HTTP/1.1 " + status + b"\r\nContent-Length: 9\r\n\r\n" + ok(b"z"))
        assert [e.response.body_size for e in got] == [0, 1]
        assert got[0].response.status == int(status[:3])


def test_interim_100_continue_is_not_paired() -> None:
    c = Conn()
    c.io(SEND, b"PUT /u HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert c.io(RECV, b"HTTP/1.1 100 Continue\r\n\r\n") == []
    c.io(SEND, b"abc")
    [ex] = c.io(RECV, ok(b"k"))
    assert ex.response.status == 200 and ex.request.body == b"abc"
    assert c.parser.counters["http_interim_responses"] == 1


def test_body_by_rest_of_syscall() -> None:
    c = Conn()
    c.io(SEND, GET)
    [ex] = c.io(RECV, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nall of it")
    assert ex.response.body == b"all of it" and ex.response.version == "HTTP/1.0"
    # headers that end with the syscall: no body (only this syscall's rest counts)
    c.io(SEND, GET)
    [ex2] = c.io(RECV, b"HTTP/1.0 200 OK\r\n\r\n")
    assert ex2.response.body_size == 0


def test_bad_content_length_counted_and_rest_used() -> None:
    c = Conn()
    c.io(SEND, GET)
    [ex] = c.io(RECV, b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\nabc")
    assert ex.response.body == b"abc"
    assert c.parser.counters["http_bad_content_length"] == 1


def test_connect_target_prefix() -> None:
    c = Conn()
    c.io(SEND, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    [ex] = c.io(RECV, b"HTTP/1.1 200 Connection established\r\n\r\n")
    assert ex.request.target == "http://example.com:443" and ex.response.body_size == 0
    c.io(SEND, b"CONNECT /slash HTTP/1.1\r\n\r\n")
    [ex2] = c.io(RECV, ok(b""))
    assert ex2.request.target == "/slash"


def test_response_without_request_is_skipped() -> None:
    c = Conn()
    assert c.io(RECV, ok(b"orphan")) == []
    assert c.parser.counters["http_responses_unmatched"] == 1
    c.io(SEND, GET)
    [ex] = c.io(RECV, ok(b"mine"))
    assert ex.response.body == b"mine"


def test_response_takes_request_of_opposite_direction_only() -> None:
    c = Conn()
    c.io(SEND, GET)  # a request we sent...
    assert c.io(SEND, ok()) == []  # ...is not answered by a response we also sent
    assert c.parser.counters["http_responses_unmatched"] == 1
    assert len(c.io(RECV, ok())) == 1


def test_requests_expire_after_a_minute() -> None:
    c = Conn()
    c.io(RECV, b"GET /old HTTP/1.1\r\n\r\n", at=0)
    c.io(RECV, b"GET /new HTTP/1.1\r\n\r\n", at=59_000 * MS)
    [ex] = c.io(SEND, ok(), at=61_000 * MS)
    assert ex.request.target == "/new"
    assert c.parser.counters["http_requests_expired"] == 1


def test_queue_is_bounded() -> None:
    c = Conn(max_queued_requests=4)
    for i in range(10):
        c.io(SEND, b"GET /%d HTTP/1.1\r\n\r\n" % i)
    assert c.parser.queued_requests == 4
    assert c.parser.counters["http_requests_dropped"] == 6
    [ex] = c.io(RECV, ok())
    assert ex.request.target == "/6"


def test_headers_too_large_dropped_then_resync() -> None:
    c = Conn(max_header_bytes=1024)
    c.io(SEND, b"GET /big HTTP/1.1\r\n")
    for _ in range(20):
        c.io(SEND, b"X-Filler: " + b"a" * 100 + b"\r\n")
    assert c.parser.counters["http_headers_too_large"] == 1
    c.io(SEND, b"a: b\r\n\r\n")  # the end of the dropped block: skipped, no new count
    assert c.parser.counters["http_resyncs"] == 0
    c.io(SEND, GET)
    [ex] = c.io(RECV, ok())
    assert ex.request.target == "/api/orders?id=1"
    # In one syscall too.
    c.io(SEND, b"GET / HTTP/1.1\r\nX: " + b"b" * 2000 + b"\r\n\r\n")
    assert c.parser.counters["http_headers_too_large"] == 2


def test_headers_cut_by_capture_are_dropped() -> None:
    c = Conn()
    c.io(SEND, b"GET /x HTTP/1.1\r\nHost: a", size=5000)
    assert c.parser.counters["http_headers_truncated"] == 1
    assert c.parser.queued_requests == 0


def test_garbage_then_resync() -> None:
    c = Conn()
    c.io(SEND, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    c.io(SEND, b"G")  # could start a request...
    c.io(SEND, b"ARBAGE and more")  # ...but did not
    assert c.parser.counters["http_resyncs"] == 1  # one run of skipped syscalls
    c.io(SEND, b"GET /bad HTTP/1.1 extra\r\n\r\n")  # four words: a bad request line
    c.io(SEND, b"HTTP/1.1 2x0 OK\r\n\r\n")  # bad status code
    assert c.parser.counters["http_bad_start_lines"] == 2
    c.io(SEND, GET)
    assert len(c.io(RECV, ok())) == 1
    c.io(SEND, b"junk after a good message")
    assert c.parser.counters["http_resyncs"] == 2


def test_partial_start_then_new_message_resyncs_on_that_syscall() -> None:
    c = Conn()
    c.io(SEND, b"PO")
    c.io(SEND, GET)  # "POGET ..." is no message; this syscall starts one itself
    assert c.parser.counters["http_resyncs"] == 1
    [ex] = c.io(RECV, ok())
    assert ex.request.method == "GET"


def test_out_of_order_data_id_ignored() -> None:
    c = Conn()
    c.io(SEND, GET)
    c.data_id -= 1
    c.io(SEND, GET)
    assert c.parser.counters["http_out_of_order"] == 1 and c.parser.queued_requests == 1


def test_closed_mid_response() -> None:
    c = Conn()
    c.io(SEND, GET)
    c.io(SEND, GET)
    c.io(RECV, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    [ex] = c.parser.close()
    assert ex.response.body == b"partial" and ex.response.body_size == 7
    assert c.parser.counters["http_incomplete_at_close"] == 1
    assert c.parser.counters["http_requests_unanswered_at_close"] == 1
    assert c.parser.queued_requests == 0
    assert c.parser.close() == []


def test_closed_mid_request_headers_counts_without_exchange() -> None:
    c = Conn()
    c.io(SEND, b"GET /x HTTP/1.1\r\nHo")
    assert c.parser.close() == []
    assert c.parser.counters["http_incomplete_at_close"] == 1


def test_body_capture_and_syscall_lists_are_bounded() -> None:
    c = Conn(max_body_capture=100)
    c.io(SEND, GET)
    n = MAX_MESSAGE_SYSCALLS + 10
    c.io(RECV, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (n * 50))
    got = []
    for _ in range(n):
        got += c.io(RECV, b"y" * 50)
    [ex] = got
    assert ex.response.body == b"y" * 100 and ex.response.body_size == n * 50
    assert len(ex.response.body_syscalls) == MAX_MESSAGE_SYSCALLS
    assert c.parser.counters["http_syscalls_not_kept"] == 10


def test_gzip_body_bytes_are_kept_raw() -> None:
    c = Conn()
    c.io(SEND, GET)
    body = gzip.compress(b"text " * 50)
    [ex] = c.io(RECV, ok(body, b"Content-Encoding: gzip\r\n"))
    assert ex.response.body == body and ex.response.headers["content-encoding"] == "gzip"


def test_random_input_never_raises_and_state_stays_bounded() -> None:
    rng = random.Random(1234)
    pieces = [
        GET,
        ok(b"abc"),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"0\r\n\r\n",
        b"HEAD / HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 204 No\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"Content-Length: 99999999999\r\n",
        b"\r\n",
        b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    ]
    for _ in range(300):
        c = Conn(max_header_bytes=512, max_queued_requests=8, max_body_capture=256)
        stream = b"".join(
            rng.choice(pieces) if rng.random() < 0.6 else rng.randbytes(rng.randint(0, 40))
            for _ in range(rng.randint(1, 30))
        )
        pos = 0
        while pos < len(stream):
            n = rng.randint(1, 64)
            chunk = stream[pos : pos + n]
            pos += n
            capped = chunk[: rng.randint(0, len(chunk))] if rng.random() < 0.2 else chunk
            size = len(chunk) + (rng.randint(0, 5000) if rng.random() < 0.05 else 0)
            for ex in c.io(rng.choice((SEND, RECV)), capped, size=size):
                assert ex.response.body_size >= len(ex.response.body)
                assert len(ex.response.body) <= 256
                assert ex.duration_ms >= 0
            assert c.parser.queued_requests <= 16
            for st in c.parser._streams.values():
                assert st.buf is None or len(st.buf) <= 512 + 64
                assert len(st.line) <= 1024 + 64
        c.parser.close()
        assert c.parser.queued_requests == 0
        assert set(c.parser.counters) == set(COUNTER_NAMES)


def test_detect_protocol() -> None:
    assert detect_protocol(b"GET / HTTP/1.1\r\n") is Protocol.HTTP1
    assert detect_protocol(b"HTTP/1.1 200 OK\r\n\r\n") is Protocol.HTTP1
    assert detect_protocol(b"OPTIONS * HTTP/1.1\r\n") is Protocol.HTTP1
    assert detect_protocol(b"GET / HTTP/1.1\r") is Protocol.UNKNOWN  # 15 bytes: too few
    assert detect_protocol(b"GETX / HTTP/1.1\r\n\r\n") is Protocol.UNKNOWN
    assert detect_protocol(H2_PREFACE) is Protocol.HTTP2
    assert detect_protocol(H2_PREFACE[:16]) is Protocol.HTTP2
    settings = bytes([0, 0, 12, 4, 0, 0, 0, 0, 0]) + bytes(12)
    assert detect_protocol(settings) is Protocol.HTTP2
    headers = bytes([0, 0, 20, 1, 0x25, 0, 0, 0, 1]) + bytes(20)
    assert detect_protocol(headers) is Protocol.HTTP2
    assert detect_protocol(bytes([0, 0, 20, 1, 0x25, 0, 0, 0, 2])) is Protocol.UNKNOWN  # even
    assert detect_protocol(bytes([0, 0, 7, 4, 0, 0, 0, 0, 0])) is Protocol.UNKNOWN  # 7 % 6
    assert detect_protocol(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc") is Protocol.UNKNOWN
    assert detect_protocol(b"") is Protocol.UNKNOWN
    assert detect_protocol(b"hello world, not http at all") is Protocol.UNKNOWN


def test_chunk_data_not_captured_frames_by_size() -> None:
    c = Conn()
    c.io(SEND, GET)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\n"
    # 4096 data bytes written, only 100 captured; the framing after them is captured.
    assert c.io(RECV, head + b"d" * 100, size=len(head) + 4096) == []
    [ex] = c.io(RECV, b"\r\n0\r\n\r\n")
    assert ex.response.body_size == 4096 and ex.response.body == b"d" * 100
    assert c.parser.counters["http_chunk_framing_lost"] == 0


def test_upgrade_101_pairs_then_tunnel_bytes_are_one_resync_per_direction() -> None:
    c = Conn()
    c.io(SEND, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    [ex] = c.io(RECV, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert ex.response.status == 101 and ex.response.body_size == 0
    for _ in range(5):
        c.io(SEND, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58")
        c.io(RECV, b"\x81\x05hello")
    assert c.nonzero() == {"http_resyncs": 2}
