"""What network observation produces, as plain values (spec section 8).

The kernel side (``bpf/network.c``, read by ``observer.py``) keeps one record per
connection with its layer-4 counters and sends three kinds of event: a data syscall
of an HTTP connection (with the first bytes of its payload), a closed connection
(with its final counters) and a TCP retransmission. User space turns those into
HTTP exchanges (``http1.py``), groups connections into traffics (``traffic.py``)
and builds what the backend receives (``meters.py``, ``traces.py``); protobuf
lives only in ``rover/backend/network.py``.

Times are CLOCK_MONOTONIC nanoseconds unless a name says otherwise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rover.process.model import Entity

if TYPE_CHECKING:
    from rover.network.http_stats import HttpStats


class Role(enum.IntEnum):
    """Which end of a connection the observed process is."""

    UNKNOWN = 0
    CLIENT = 1
    SERVER = 2


class Protocol(enum.IntEnum):
    UNKNOWN = 0
    HTTP1 = 1
    HTTP2 = 2


class Direction(enum.IntEnum):
    """Of a syscall's payload, seen from the observed process."""

    SEND = 1  # "outbound": write-family calls
    RECV = 2  # "inbound": read-family calls


# Layer-4 histogram bounds in ns (spec 8.6; the µs table is these ÷ 1000, used for RTT).
L4_BUCKETS_NS: tuple[int, ...] = (
    0, 10000, 50000, 100000, 500000, 1000000, 1200000, 1500000, 1700000, 2000000,
    2500000, 3000000, 5000000, 7000000, 10000000, 13000000, 16000000, 20000000,
    25000000, 30000000, 35000000, 40000000, 45000000, 50000000, 70000000, 100000000,
    150000000, 200000000, 300000000, 500000000, 1000000000, 2000000000, 3000000000,
    5000000000,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SocketAddress:
    ip: str  # dotted IPv4 (also for IPv4-mapped IPv6), else IPv6 text without brackets
    port: int


@dataclass(slots=True)
class ConnectionStats:
    """The cumulative layer-4 counters of one connection, as the kernel keeps them.

    ``conn_id`` is unique over fd reuse (drawn when the connection is first seen).
    Histograms have ``len(L4_BUCKETS_NS)`` counts; ``rtt_hist`` is indexed by the same
    bounds compared in ns (µs × 1000), as Rover does.
    """

    conn_id: int
    pid: int
    fd: int
    role: Role = Role.UNKNOWN
    protocol: Protocol = Protocol.UNKNOWN
    ssl: bool = False
    remote: SocketAddress | None = None
    local: SocketAddress | None = None
    connect_ns: int = 0  # duration of the connect()/accept() that made it, 0 if not seen
    close_ns: int = 0  # duration of the close() that ended it, 0 while open
    write_count: int = 0
    write_bytes: int = 0
    write_ns: int = 0
    read_count: int = 0
    read_bytes: int = 0
    read_ns: int = 0
    rtt_count: int = 0
    rtt_sum_us: int = 0
    write_hist: tuple[int, ...] = ()
    read_hist: tuple[int, ...] = ()
    rtt_hist: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DataSyscall:
    """One data syscall (or TLS library call) on a connection whose protocol is HTTP/1
    or not yet known, with the first bytes of what it carried."""

    conn_id: int
    pid: int
    fd: int
    tid: int
    data_id: int  # increases per connection, in syscall order
    syscall: str  # Write, Writev, Sendto, SendMsg, SendMMSg, Sendfile, Read, Readv,
    #               Recvfrom, RecvMsg, RecvMMsg; SSL_write / SSL_read for TLS plaintext
    direction: Direction
    start_ns: int
    end_ns: int
    size: int  # bytes the call transferred
    payload: bytes  # its first bytes (len(payload) <= size; less when capture is capped)
    ssl: bool = False
    rtt_count: int = 0  # RTT samples taken while the call ran
    rtt_sum_us: int = 0


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    stats: ConnectionStats  # final counters; close_ns set
    closed_at_ns: int


@dataclass(frozen=True, slots=True)
class Retransmit:
    local: SocketAddress
    remote: SocketAddress


# -- HTTP/1 ------------------------------------------------------------------


@dataclass(slots=True)
class HttpMessage:
    """One request or response as parsed from a connection's syscalls."""

    is_request: bool
    method: str = ""  # requests
    target: str = ""  # requests: as sent (CONNECT to a host gets "http://")
    status: int = 0  # responses
    version: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased; last wins
    header_bytes: bytes = b""  # raw start line + headers + blank line, as captured
    body: bytes = b""  # captured body bytes (may be shorter than body_size)
    body_size: int = 0  # body bytes on the wire
    direction: Direction = Direction.RECV
    start_ns: int = 0  # start of its first syscall
    end_ns: int = 0  # end of the last syscall of its body (= start_ns without a body)
    header_syscalls: list[DataSyscall] = field(default_factory=list)
    body_syscalls: list[DataSyscall] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Package size: header + body bytes (spec 8.7 rule 7)."""
        return len(self.header_bytes) + self.body_size


@dataclass(frozen=True, slots=True)
class HttpExchange:
    """A request and the response that answered it, on one connection."""

    conn_id: int
    pid: int
    request: HttpMessage
    response: HttpMessage

    @property
    def side(self) -> Role:
        """Server statistics when the request was received, else client (spec 8.7 rule 5)."""
        return Role.SERVER if self.request.direction is Direction.RECV else Role.CLIENT

    @property
    def duration_ms(self) -> int:
        end = self.response.end_ns or self.response.start_ns
        return max(0, end - self.request.start_ns) // 1_000_000


@dataclass(frozen=True, slots=True)
class TraceContext:
    provider: str  # "skywalking" (sw8) or "zipkin" (b3)
    trace_id: str
    segment_id: str  # "" for zipkin
    span_id: str


@dataclass(frozen=True, slots=True)
class SamplingSettings:
    require_complete_request: bool = False
    max_request_size: int = 0  # <= 0: no cap
    require_complete_response: bool = False
    max_response_size: int = 0


@dataclass(frozen=True, slots=True)
class SamplingRule:
    """One entry of a NETWORK task's ``NetworkSamplings`` (spec 8.2)."""

    uri_regex: str | None  # None: the default rule
    min_duration_ms: int | None = None  # None: no slow sampling
    when_4xx: bool = False
    when_5xx: bool = False
    settings: SamplingSettings | None = None


@dataclass(frozen=True, slots=True)
class SampledExchange:
    """An exchange chosen for the sampled-trace log (spec 8.8)."""

    exchange: HttpExchange
    reason: str  # "slow", "status_4xx", "status_5xx"
    trace: TraceContext
    rule: SamplingRule


# -- what one report interval sends, per traffic -------------------------------


@dataclass(frozen=True, slots=True)
class PeerLabel:
    """The one label that names the peer (spec 8.4): ``<peer-role>_<kind>``."""

    kind: str  # "process_id", "local" or "address"
    value: str  # a process id, "true", or "ip:port"


@dataclass(slots=True)
class L4Delta:
    """Layer-4 values of a traffic over one report interval (sums over its connections)."""

    write_count: int = 0
    write_bytes: int = 0
    write_ns: int = 0
    read_count: int = 0
    read_bytes: int = 0
    read_ns: int = 0
    rtt_count: int = 0
    rtt_sum_us: int = 0
    connect_count: int = 0
    connect_ns: int = 0
    close_count: int = 0
    close_ns: int = 0
    retransmits: int = 0
    drops: int = 0
    write_hist: list[int] = field(default_factory=lambda: [0] * len(L4_BUCKETS_NS))
    read_hist: list[int] = field(default_factory=lambda: [0] * len(L4_BUCKETS_NS))
    rtt_hist: list[int] = field(default_factory=lambda: [0] * len(L4_BUCKETS_NS))
    connect_hist: list[int] = field(default_factory=lambda: [0] * len(L4_BUCKETS_NS))
    close_hist: list[int] = field(default_factory=lambda: [0] * len(L4_BUCKETS_NS))


@dataclass(slots=True)
class Traffic:
    """One (local entity, peer) relation over one report interval (spec 8.4)."""

    entity: Entity
    process_id: str  # the local entity's backend process id
    role: Role  # UNKNOWN kept: the log says "client" for it, the meters "client" too
    peer: PeerLabel
    protocol: Protocol
    ssl: bool
    l4: L4Delta = field(default_factory=L4Delta)
    # HTTP/1 statistics of the traffic's side (server role: server statistics, else client;
    # spec 8.7), None without HTTP exchanges this interval
    http: HttpStats | None = None
    sampled: list[SampledExchange] = field(default_factory=list)
