"""HTTP/1.x messages from the data syscalls of one connection (spec 8.7).

The kernel sends, per syscall, how many bytes it transferred (``size``) and the first
of them (``payload``, shorter when capture is capped). Bodies are therefore framed by
sizes, not by captured bytes: a ``Content-Length`` body whose bytes were never captured
still ends where it should, and the next message is found where it starts.

Each direction of the connection is its own byte stream; a request is queued when its
headers are complete and a response takes the oldest request queued in the opposite
direction (rule 4). Bad input never raises: whatever cannot be framed is skipped up to
the next syscall that starts a message, and every skip is counted in ``counters``.
"""

from __future__ import annotations

import re
from collections import deque

from rover.network.model import DataSyscall, Direction, HttpExchange, HttpMessage, Protocol

METHODS = ("GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE", "CONNECT", "TRACE", "PATCH")
_METHOD_SET = frozenset(METHODS)
_REQUEST_STARTS = tuple(m.encode() + b" " for m in METHODS)
# bytes.startswith takes a tuple: one C call recognises any message start.
_STARTS = (*_REQUEST_STARTS, b"HTTP/")
_LONGEST_START = max(len(s) for s in _STARTS)
_HEX = re.compile(rb"[0-9a-fA-F]{1,15}")

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE's initial value

REQUEST_EXPIRY_NS = 60 * 1_000_000_000  # rule 4: queued requests older than 1 min expire
MAX_HEADER_BYTES = 16 * 1024
MAX_QUEUED_REQUESTS = 64
MAX_BODY_CAPTURE = 64 * 1024  # captured body bytes kept per message (body_size counts all)
MAX_MESSAGE_SYSCALLS = 256  # syscalls kept per message list: each holds its payload
_MAX_CHUNK_LINE = 1024
_OTHER = {Direction.SEND: Direction.RECV, Direction.RECV: Direction.SEND}

COUNTER_NAMES = (
    "http_resyncs",  # runs of syscalls skipped because no message started where one should
    "http_bad_start_lines",  # a header block whose request/status line did not parse
    "http_headers_too_large",  # header block over MAX_HEADER_BYTES: dropped
    "http_headers_truncated",  # header block cut by the capture cap: dropped
    "http_bad_content_length",  # unparsable Content-Length: body taken as the syscall's rest
    "http_chunk_framing_lost",  # chunk sizes not captured or invalid: body ends heuristically
    "http_interim_responses",  # 1xx responses (but 101): not paired
    "http_responses_unmatched",  # a response with no queued request: skipped
    "http_requests_expired",  # queued over a minute without a response
    "http_requests_dropped",  # queue over MAX_QUEUED_REQUESTS: the oldest dropped
    "http_requests_unanswered_at_close",  # queued when the connection closed
    "http_incomplete_at_close",  # a message still being read when the connection closed
    "http_out_of_order",  # a data id not above the last one: ignored
    "http_syscalls_not_kept",  # syscalls beyond MAX_MESSAGE_SYSCALLS of one message
)

# Stream states.
_IDLE = 0  # at a message boundary
_HEADERS = 1  # header block continues in the next syscall (kept in _Stream.buf)
_BODY = 2  # Content-Length body: _Stream.remaining wire bytes to go
_REST = 3  # neither length nor chunked: the rest of the current syscall
_CHUNK_SIZE = 4
_CHUNK_DATA = 5
_CHUNK_END = 6  # the CRLF after a chunk's data
_TRAILERS = 7
_LOST = 8  # chunk framing lost: the body runs until the next message starts


def detect_protocol(payload: bytes) -> Protocol:
    """The protocol a connection's first payload shows (spec 8.3)."""
    if payload.startswith(H2_PREFACE[:14]):
        return Protocol.HTTP2
    if len(payload) >= 16 and payload.startswith(_STARTS):
        return Protocol.HTTP1
    if len(payload) >= 9 and _plausible_h2_frame(payload):
        return Protocol.HTTP2
    return Protocol.UNKNOWN


def _plausible_h2_frame(p: bytes) -> bool:
    """A HEADERS frame on a client stream or a SETTINGS frame, with sane fields."""
    length = int.from_bytes(p[0:3], "big")
    kind, flags = p[3], p[4]
    stream = int.from_bytes(p[5:9], "big")
    if stream & 0x80000000 or length > _H2_MAX_FRAME:
        return False
    if kind == 0x1:  # HEADERS: END_STREAM, END_HEADERS, PADDED, PRIORITY only
        return length > 0 and stream & 1 == 1 and flags & ~0x2D == 0
    if kind == 0x4:  # SETTINGS: stream 0, 6-byte entries, ACK empty
        return stream == 0 and length % 6 == 0 and (flags == 0 or (flags == 1 and length == 0))
    return False


def _start_state(head: bytes) -> int:
    """1: a message start; 0: could still become one; -1: cannot."""
    if head.startswith(_STARTS):
        return 1
    if any(len(head) < len(s) and s.startswith(head) for s in _STARTS):
        return 0
    return -1


class _Stream:
    """Parse state of one direction of a connection."""

    __slots__ = (
        "state",
        "msg",
        "request",
        "buf",
        "verified",
        "syscalls",
        "remaining",
        "parts",
        "captured",
        "line",
        "trailer_bytes",
        "skipping",
    )

    def __init__(self) -> None:
        self.state = _IDLE
        self.msg: HttpMessage | None = None
        self.request: HttpMessage | None = None  # what the response in progress answers
        self.buf: bytearray | None = None  # header bytes while they span syscalls
        self.verified = False  # buf is known to begin with a message start
        self.syscalls: list[DataSyscall] = []
        self.remaining = 0
        self.parts: list[bytes] = []
        self.captured = 0
        self.line = b""  # a chunk-size or trailer line spanning syscalls
        self.trailer_bytes = 0
        self.skipping = False  # inside skipped data: one resync counted per run

    def reset(self) -> None:
        self.state = _IDLE
        self.msg = None
        self.request = None
        self.buf = None
        self.syscalls = []
        self.parts = []
        self.captured = 0
        self.line = b""


class Http1Parser:
    """Streaming HTTP/1.x parser for one connection: ``feed`` syscalls in data-id order,
    get the exchanges they complete; ``close`` when the connection ends."""

    def __init__(
        self,
        conn_id: int,
        pid: int,
        *,
        max_header_bytes: int = MAX_HEADER_BYTES,
        max_queued_requests: int = MAX_QUEUED_REQUESTS,
        max_body_capture: int = MAX_BODY_CAPTURE,
        request_expiry_ns: int = REQUEST_EXPIRY_NS,
    ) -> None:
        self.conn_id = conn_id
        self.pid = pid
        self.max_header_bytes = max_header_bytes
        self.max_queued_requests = max_queued_requests
        self.max_body_capture = max_body_capture
        self.request_expiry_ns = request_expiry_ns
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._last_data_id = -1
        self._streams = {Direction.SEND: _Stream(), Direction.RECV: _Stream()}
        # requests waiting for a response, by the direction they were carried in
        self._queues: dict[Direction, deque[HttpMessage]] = {
            Direction.SEND: deque(),
            Direction.RECV: deque(),
        }

    @property
    def queued_requests(self) -> int:
        return len(self._queues[Direction.SEND]) + len(self._queues[Direction.RECV])

    def feed(self, sc: DataSyscall) -> list[HttpExchange]:
        """Parse one syscall; the exchanges whose response it completed, in order."""
        out: list[HttpExchange] = []
        if sc.data_id <= self._last_data_id:
            self.counters["http_out_of_order"] += 1
            return out
        self._last_data_id = sc.data_id
        st = self._streams[sc.direction]
        size = sc.size
        data = sc.payload if len(sc.payload) <= size else sc.payload[:size]
        pos = 0
        while pos < size or st.state == _REST:
            state = st.state
            if state == _IDLE:
                pos = self._start(st, sc, data, pos, out)
            elif state in (_BODY, _CHUNK_DATA):
                take = min(st.remaining, size - pos)
                self._add_body(st, sc, data, pos, pos + take)
                st.remaining -= take
                pos += take
                if st.remaining == 0:
                    if state == _BODY:
                        self._finish(st, out)
                    else:
                        st.state = _CHUNK_END
            elif state == _REST:
                # Rule 2's "rest of the syscall", unless a pipelined message starts there.
                if not data.startswith(_STARTS, pos):
                    self._add_body(st, sc, data, pos, size)
                    pos = size
                self._finish(st, out)
            elif state == _HEADERS:
                pos = self._more_headers(st, sc, data, out)
            elif state == _LOST:
                pos = self._lost_body(st, sc, data, pos, out)
            else:
                pos = self._chunk_framing(st, sc, data, pos, out)
        return out

    def close(self) -> list[HttpExchange]:
        """The connection ended: exchanges whose response was still being read, counted."""
        out: list[HttpExchange] = []
        for st in self._streams.values():
            if st.state != _IDLE:
                self.counters["http_incomplete_at_close"] += 1
                if st.msg is not None and not st.msg.is_request:
                    self._finish(st, out)
            st.reset()
        for queue in self._queues.values():
            self.counters["http_requests_unanswered_at_close"] += len(queue)
            queue.clear()
        return out

    def expire(self, now_ns: int) -> None:
        """Drop queued requests older than the expiry (also done on every pairing)."""
        for queue in self._queues.values():
            self._expire(queue, now_ns)

    # -- message starts and header blocks ----------------------------------------

    def _start(
        self, st: _Stream, sc: DataSyscall, data: bytes, pos: int, out: list[HttpExchange]
    ) -> int:
        while data.startswith(b"\r\n", pos):  # tolerated between messages (RFC 9112 2.2)
            pos += 2
        captured = len(data)
        if pos >= captured:
            if pos < sc.size:  # a message may start in bytes that were not captured
                self._resync(st)
            return sc.size
        if not data.startswith(_STARTS, pos):
            if captured == sc.size and captured - pos < _LONGEST_START:
                head = data[pos:]
                if _start_state(head) == 0:  # a start split over syscalls ("G", "ET /")
                    self._buffer_headers(st, sc, head, verified=False)
                    return sc.size
            self._resync(st)
            return sc.size
        end = data.find(b"\r\n\r\n", pos)
        if end >= 0:
            end += 4
            if end - pos > self.max_header_bytes:
                self.counters["http_headers_too_large"] += 1
                st.skipping = True
                return sc.size
            if not self._begin(st, sc, data[pos:end], [sc], out):
                return sc.size
            return end
        if captured < sc.size:
            self.counters["http_headers_truncated"] += 1
            st.skipping = True
            return sc.size
        if captured - pos > self.max_header_bytes:
            self.counters["http_headers_too_large"] += 1
            st.skipping = True
            return sc.size
        self._buffer_headers(st, sc, data[pos:], verified=True)
        return sc.size

    def _buffer_headers(self, st: _Stream, sc: DataSyscall, head: bytes, verified: bool) -> None:
        st.state = _HEADERS
        st.buf = bytearray(head)
        st.verified = verified
        st.syscalls = [sc]

    def _more_headers(
        self, st: _Stream, sc: DataSyscall, data: bytes, out: list[HttpExchange]
    ) -> int:
        buf = st.buf
        assert buf is not None
        old = len(buf)
        buf += data
        if not st.verified:
            verdict = _start_state(bytes(buf[:_LONGEST_START]))
            if verdict < 0:  # was not a message after all: this syscall may start one
                st.reset()
                self._resync(st)
                return 0
            st.verified = verdict > 0
        self._keep(st.syscalls, sc)
        # Only the new bytes (and the 3 before them) can complete the terminator.
        end = buf.find(b"\r\n\r\n", max(0, old - 3)) if st.verified else -1
        if end >= 0:
            end += 4
            if end > self.max_header_bytes:
                self.counters["http_headers_too_large"] += 1
                st.skipping = True
                st.reset()
                return sc.size
            syscalls = st.syscalls
            st.buf = None
            st.state = _IDLE
            if not self._begin(st, sc, bytes(buf[:end]), syscalls, out):
                return sc.size
            return end - old
        if len(data) < sc.size:
            self.counters["http_headers_truncated"] += 1
            st.skipping = True
            st.reset()
        elif len(buf) > self.max_header_bytes:
            self.counters["http_headers_too_large"] += 1
            st.skipping = True
            st.reset()
        return sc.size

    def _begin(
        self,
        st: _Stream,
        sc: DataSyscall,
        block: bytes,
        syscalls: list[DataSyscall],
        out: list[HttpExchange],
    ) -> bool:
        """Parse a complete header block and set up body framing; False if it is bad."""
        st.skipping = False
        lines = block.decode("latin-1").split("\r\n")
        first = lines[0]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        start_ns = syscalls[0].start_ns
        no_body = False
        if first.startswith("HTTP/"):
            parts = first.split(" ", 2)
            code = parts[1] if len(parts) > 1 else ""
            if len(code) != 3 or not code.isdigit():
                self.counters["http_bad_start_lines"] += 1
                st.skipping = True
                st.reset()
                return False
            status = int(code)
            msg = HttpMessage(
                is_request=False,
                status=status,
                version=parts[0],
                headers=headers,
                header_bytes=block,
                direction=sc.direction,
                start_ns=start_ns,
                end_ns=start_ns,
                header_syscalls=syscalls,
            )
            if 100 <= status < 200 and status != 101:
                # Interim (100 Continue, 103 Early Hints): the final response follows.
                self.counters["http_interim_responses"] += 1
                st.reset()
                return True
            queue = self._queues[_OTHER[sc.direction]]
            self._expire(queue, sc.start_ns)
            request = queue.popleft() if queue else None
            if request is None:
                self.counters["http_responses_unmatched"] += 1
            else:
                method = request.method
                no_body = method == "HEAD" or (method == "CONNECT" and 200 <= status < 300)
            no_body = no_body or status == 204 or status == 304 or status < 200
            st.request = request
        else:
            parts = first.split(" ")
            if (
                len(parts) != 3
                or parts[0] not in _METHOD_SET
                or not parts[1]
                or not parts[2].startswith("HTTP/")
            ):
                self.counters["http_bad_start_lines"] += 1
                st.skipping = True
                st.reset()
                return False
            method, target, version = parts
            if method == "CONNECT" and not target.startswith("/"):
                target = "http://" + target
            msg = HttpMessage(
                is_request=True,
                method=method,
                target=target,
                version=version,
                headers=headers,
                header_bytes=block,
                direction=sc.direction,
                start_ns=start_ns,
                end_ns=start_ns,
                header_syscalls=syscalls,
            )
            # A new request while the other side's body was unframeable: that body ended.
            other = self._streams[_OTHER[sc.direction]]
            if other.state == _LOST:
                self._finish(other, out)
            queue = self._queues[sc.direction]
            self._expire(queue, sc.start_ns)
            if len(queue) >= self.max_queued_requests:
                queue.popleft()
                self.counters["http_requests_dropped"] += 1
            queue.append(msg)
        st.msg = msg
        st.syscalls = []
        st.parts = []
        st.captured = 0
        if no_body:
            self._finish(st, out)
            return True
        te = headers.get("transfer-encoding")
        if te is not None and "chunked" in te.lower():
            st.state = _CHUNK_SIZE
            st.line = b""
            return True
        length = headers.get("content-length")
        if length is not None:
            if length.isdigit():
                st.remaining = int(length)
                if st.remaining == 0:
                    self._finish(st, out)
                else:
                    st.state = _BODY
                return True
            self.counters["http_bad_content_length"] += 1
        st.state = _REST
        return True

    # -- bodies --------------------------------------------------------------------

    def _add_body(self, st: _Stream, sc: DataSyscall, data: bytes, start: int, end: int) -> None:
        if end <= start:
            return
        msg = st.msg
        assert msg is not None
        msg.body_size += end - start
        msg.end_ns = sc.end_ns
        room = self.max_body_capture - st.captured
        if start < len(data) and room > 0:
            piece = data[start : min(end, len(data), start + room)]
            st.parts.append(piece)
            st.captured += len(piece)
        body_syscalls = msg.body_syscalls
        if not body_syscalls or body_syscalls[-1] is not sc:
            self._keep(body_syscalls, sc)

    def _chunk_framing(
        self, st: _Stream, sc: DataSyscall, data: bytes, pos: int, out: list[HttpExchange]
    ) -> int:
        """Chunk-size lines, the CRLF after chunk data, trailers: read from captured bytes."""
        captured = len(data)
        if pos >= captured:
            return self._lose_framing(st, sc, data, pos)
        msg = st.msg
        assert msg is not None
        # Framing bytes are body bytes too: this syscall carries the body's end so far.
        msg.end_ns = sc.end_ns
        if not msg.body_syscalls or msg.body_syscalls[-1] is not sc:
            self._keep(msg.body_syscalls, sc)
        nl = data.find(b"\n", pos)
        if nl < 0:
            st.line += data[pos:]
            if captured < sc.size or len(st.line) > _MAX_CHUNK_LINE:
                return self._lose_framing(st, sc, data, pos)
            return sc.size
        line = (st.line + data[pos:nl]).rstrip(b"\r")
        st.line = b""
        pos = nl + 1
        state = st.state
        if state == _CHUNK_SIZE:
            digits = line.split(b";", 1)[0].strip()
            if not _HEX.fullmatch(digits):
                return self._lose_framing(st, sc, data, pos)
            st.remaining = int(digits, 16)
            if st.remaining:
                st.state = _CHUNK_DATA
            else:
                st.state = _TRAILERS
                st.trailer_bytes = 0
        elif state == _CHUNK_END:
            if line:
                return self._lose_framing(st, sc, data, pos)
            st.state = _CHUNK_SIZE
        else:  # trailers end with an empty line
            st.trailer_bytes += len(line) + 2
            if not line:
                self._finish(st, out)
            elif st.trailer_bytes > self.max_header_bytes:
                return self._lose_framing(st, sc, data, pos)
        return pos

    def _lose_framing(self, st: _Stream, sc: DataSyscall, data: bytes, pos: int) -> int:
        # Chunk sizes fell outside the captured bytes (or made no sense): keep taking
        # whole syscalls as body until the stream shows the next message or the final
        # "0\r\n\r\n".
        self.counters["http_chunk_framing_lost"] += 1
        st.state = _LOST
        st.line = b""
        self._add_body(st, sc, data, pos, sc.size)
        return sc.size

    def _lost_body(
        self, st: _Stream, sc: DataSyscall, data: bytes, pos: int, out: list[HttpExchange]
    ) -> int:
        if data.startswith(_STARTS, pos):
            self._finish(st, out)
            return pos
        self._add_body(st, sc, data, pos, sc.size)
        if len(data) == sc.size and data.endswith(b"0\r\n\r\n"):
            self._finish(st, out)
        return sc.size

    def _finish(self, st: _Stream, out: list[HttpExchange]) -> None:
        msg = st.msg
        if msg is not None:
            if st.parts:
                msg.body = st.parts[0] if len(st.parts) == 1 else b"".join(st.parts)
            if not msg.is_request and st.request is not None:
                out.append(HttpExchange(self.conn_id, self.pid, st.request, msg))
        st.reset()

    def _resync(self, st: _Stream) -> None:
        if not st.skipping:
            st.skipping = True
            self.counters["http_resyncs"] += 1

    # -- bounds --------------------------------------------------------------------

    def _expire(self, queue: deque[HttpMessage], now_ns: int) -> None:
        limit = now_ns - self.request_expiry_ns
        while queue and queue[0].start_ns < limit:
            queue.popleft()
            self.counters["http_requests_expired"] += 1

    def _keep(self, syscalls: list[DataSyscall], sc: DataSyscall) -> None:
        if len(syscalls) < MAX_MESSAGE_SYSCALLS:
            syscalls.append(sc)
        else:
            self.counters["http_syscalls_not_kept"] += 1
