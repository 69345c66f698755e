"""Connections over report intervals, grouped into traffics with their peers (spec 8.4).

The kernel keeps cumulative counters per connection; :class:`ConnectionTracker` keeps the
values of the previous report and hands out deltas, counts a connect once (at the
connection's first report) and a close once (whenever it comes: Rover counts only closes
seen at the first report, a quirk we do not copy, spec 8.15 rule 7). HTTP statistics and
sampled exchanges arrive per connection from the parser between reports.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rover.network.http_stats import HttpStats, bucket_index
from rover.network.model import (
    L4_BUCKETS_NS,
    ConnectionStats,
    HttpExchange,
    L4Delta,
    PeerLabel,
    Protocol,
    Role,
    SampledExchange,
    SocketAddress,
    Traffic,
)
from rover.process.model import Entity

log = logging.getLogger(__name__)

# Sampled exchanges kept per traffic (and per connection between reports) and reason.
TOP_N = 10

# The kernel's cumulative values (ConnectionStats), and what an interval adds (L4Delta).
_HIST_FIELDS = ("write_hist", "read_hist", "rtt_hist")
_COUNTER_FIELDS = (
    "write_count",
    "write_bytes",
    "write_ns",
    "read_count",
    "read_bytes",
    "read_ns",
    "rtt_count",
    "rtt_sum_us",
)
_DELTA_COUNTERS = (
    *_COUNTER_FIELDS,
    "connect_count",
    "connect_ns",
    "close_count",
    "close_ns",
    "retransmits",
    "drops",
)
_DELTA_HISTS = (*_HIST_FIELDS, "connect_hist", "close_hist")


@dataclass(frozen=True, slots=True)
class LocalEntity:
    """One backend process id of a watched pid (a pid may carry several, spec 8.2 rule 10)."""

    process_id: str
    entity: Entity


@dataclass(slots=True)
class _Tracked:
    last: ConnectionStats | None = None  # values at the previous report
    reported: bool = False  # connect counted
    http_client: HttpStats | None = None
    http_server: HttpStats | None = None
    sampled: list[SampledExchange] = field(default_factory=list)
    retransmits: int = 0
    http_role: Role = Role.UNKNOWN  # inferred from who sent the requests
    unseen_reports: int = 0  # reports since it was tracked without a kernel record


@dataclass(slots=True)
class _Interval:
    """One connection's part of a report: its stats now and its deltas."""

    stats: ConnectionStats
    delta: L4Delta
    tracked: _Tracked
    role: Role


def _delta(now: ConnectionStats, before: ConnectionStats | None) -> L4Delta:
    d = L4Delta()
    for name in _COUNTER_FIELDS:
        value = getattr(now, name) - (getattr(before, name) if before else 0)
        setattr(d, name, max(0, value))
    for name in _HIST_FIELDS:
        now_hist = getattr(now, name)
        before_hist = getattr(before, name) if before else ()
        target = getattr(d, name)
        for i in range(min(len(now_hist), len(target))):
            earlier = before_hist[i] if i < len(before_hist) else 0
            target[i] = max(0, now_hist[i] - earlier)
    return d


def _role(stats: ConnectionStats, tracked: _Tracked) -> Role:
    """The kernel's role, else the one its HTTP traffic showed."""
    return stats.role if stats.role is not Role.UNKNOWN else tracked.http_role


def _add_hist(hist: list[int], ns: int) -> None:
    hist[bucket_index(L4_BUCKETS_NS, ns)] += 1


class ConnectionTracker:
    """Deltas per connection between reports; bounded by ``max_connections``."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._tracked: dict[int, _Tracked] = {}
        self._closed: dict[int, ConnectionStats] = {}
        self.counters: dict[str, int] = defaultdict(int)

    def _entry(self, conn_id: int) -> _Tracked | None:
        tracked = self._tracked.get(conn_id)
        if tracked is None:
            if len(self._tracked) >= self.max_connections:
                self.counters["connections_untracked"] += 1
                return None
            tracked = self._tracked[conn_id] = _Tracked()
        return tracked

    def add_exchange_stats(self, conn_id: int, exchange: HttpExchange) -> None:
        """Fold a completed exchange into its connection's statistics of its side."""
        tracked = self._entry(conn_id)
        if tracked is None:
            return
        side = exchange.side
        if side is Role.SERVER:
            if tracked.http_server is None:
                tracked.http_server = HttpStats()
            tracked.http_server.add(exchange)
        else:
            if tracked.http_client is None:
                tracked.http_client = HttpStats()
            tracked.http_client.add(exchange)
        tracked.http_role = side

    def add_sampled(self, conn_id: int, sampled: SampledExchange) -> None:
        """Keep the TOP_N slowest per reason; a tie keeps the earlier (spec 8.8 rule 4)."""
        tracked = self._entry(conn_id)
        if tracked is None:
            return
        same = [s for s in tracked.sampled if s.reason == sampled.reason]
        if len(same) < TOP_N:
            tracked.sampled.append(sampled)
            return
        fastest = min(same, key=lambda s: s.exchange.duration_ms)
        if sampled.exchange.duration_ms > fastest.exchange.duration_ms:
            tracked.sampled.remove(fastest)
            tracked.sampled.append(sampled)

    def add_retransmit(self, conn_id: int) -> None:
        tracked = self._entry(conn_id)
        if tracked is not None:
            tracked.retransmits += 1

    def closed(self, stats: ConnectionStats) -> None:
        self._closed[stats.conn_id] = stats

    def report(self, live: Iterable[ConnectionStats]) -> list[_Interval]:
        """Every connection's deltas since the previous report; closed connections are
        reported once more with their final values, then forgotten."""
        intervals: list[_Interval] = []
        seen: set[int] = set()
        for stats in list(live) + list(self._closed.values()):
            if stats.conn_id in seen:
                continue
            seen.add(stats.conn_id)
            tracked = self._entry(stats.conn_id)
            if tracked is None:
                continue
            delta = _delta(stats, tracked.last)
            if not tracked.reported and stats.connect_ns > 0:
                delta.connect_count = 1
                delta.connect_ns = stats.connect_ns
                _add_hist(delta.connect_hist, stats.connect_ns)
            if stats.close_ns > 0 and stats.conn_id in self._closed:
                delta.close_count = 1
                delta.close_ns = stats.close_ns
                _add_hist(delta.close_hist, stats.close_ns)
            delta.retransmits = tracked.retransmits
            intervals.append(_Interval(stats, delta, tracked, _role(stats, tracked)))
        # Gone without a close event (it was dropped, or the record was): what the parser
        # counted for it since the last report still goes out, under its last values.
        for conn_id, tracked in list(self._tracked.items()):
            if conn_id in seen:
                continue
            if tracked.last is None:
                # exchanges parsed before the kernel's record was read: wait one report;
                # a record never seen (made and closed in between, its close event lost)
                # cannot be named: its exchanges are counted as lost
                tracked.unseen_reports += 1
                if tracked.unseen_reports > 1:
                    lost = sum(s.requests for s in (tracked.http_client, tracked.http_server) if s)
                    self.counters["http_exchanges_without_connection"] += lost
                    del self._tracked[conn_id]
                continue
            self.counters["connections_gone_without_close"] += 1
            delta = L4Delta(retransmits=tracked.retransmits)
            intervals.append(_Interval(tracked.last, delta, tracked, _role(tracked.last, tracked)))
            self._closed[conn_id] = tracked.last  # forgotten below, like a closed one
        # What was reported becomes the baseline; closed ones are done.
        for interval in intervals:
            tracked = interval.tracked
            tracked.last = interval.stats
            tracked.reported = True
            tracked.retransmits = 0
            if interval.stats.conn_id in self._closed:
                del self._tracked[interval.stats.conn_id]
        self._closed.clear()
        return intervals

    def forget_pid(self, pid: int) -> None:
        """A process left monitoring: its connections are no longer reported."""
        for conn_id, tracked in list(self._tracked.items()):
            if tracked.last is not None and tracked.last.pid == pid:
                del self._tracked[conn_id]
        for conn_id, stats in list(self._closed.items()):
            if stats.pid == pid:
                del self._closed[conn_id]

    def take_http(self, interval: _Interval) -> tuple[HttpStats | None, list[SampledExchange]]:
        """The HTTP statistics of the connection's side (spec 8.7) and its sampled
        exchanges, reset for the next interval."""
        tracked = interval.tracked
        stats = tracked.http_server if interval.role is Role.SERVER else tracked.http_client
        sampled = tracked.sampled
        tracked.http_client = tracked.http_server = None
        tracked.sampled = []
        return stats, sampled

    def __len__(self) -> int:
        return len(self._tracked)


@dataclass(frozen=True, slots=True)
class PeerContext:
    """What peer resolution knows of this host at one report."""

    host_addresses: frozenset[str]
    entities: dict[int, list[LocalEntity]]  # watched pid -> its backend processes
    # watched pid -> ports it listens on; asked only for a connection of unknown role
    # (read from /proc: not for every process at every report)
    listening: Callable[[int], set[int]]


def _fill_addresses(
    intervals: list[_Interval],
    lookup: Callable[[int, int], tuple[SocketAddress, SocketAddress] | None],
) -> None:
    for interval in intervals:
        stats = interval.stats
        if stats.local is None or stats.remote is None:
            found = lookup(stats.pid, stats.fd)
            if found is not None:
                stats.local = stats.local or found[0]
                stats.remote = stats.remote or found[1]


def build_traffics(
    intervals: list[_Interval],
    tracker: ConnectionTracker,
    context: PeerContext,
    lookup: Callable[[int, int], tuple[SocketAddress, SocketAddress] | None],
) -> list[Traffic]:
    """Group one report's connections into traffics per local entity (spec 8.4)."""
    _fill_addresses(intervals, lookup)
    mirror: dict[tuple[SocketAddress, SocketAddress], tuple[int, Role]] = {}
    listeners: dict[SocketAddress, list[int]] = defaultdict(list)
    local_ips: set[str] = set()
    for interval in intervals:
        stats = interval.stats
        if stats.local is not None:
            local_ips.add(stats.local.ip)
            if interval.role is Role.SERVER and stats.pid not in listeners[stats.local]:
                listeners[stats.local].append(stats.pid)
        if stats.local is not None and stats.remote is not None:
            mirror[(stats.local, stats.remote)] = (stats.pid, interval.role)

    groups: dict[tuple, tuple[_Interval, list[_Interval], int | None]] = {}
    for interval in intervals:
        stats = interval.stats
        if stats.remote is None:
            tracker.counters["connections_without_address"] += 1
            continue
        peer_pid: int | None = None
        role = interval.role
        if stats.local is not None:
            found = mirror.get((stats.remote, stats.local))
            if found is not None:
                peer_pid = found[0]
                if role is Role.UNKNOWN and found[1] is not Role.UNKNOWN:
                    role = Role.CLIENT if found[1] is Role.SERVER else Role.SERVER
        if peer_pid is None:
            owners = listeners.get(stats.remote)
            if owners:
                others = [pid for pid in owners if pid != stats.pid]
                peer_pid = (others or owners)[0]
        if role is Role.UNKNOWN and stats.local is not None:
            role = Role.SERVER if stats.local.port in context.listening(stats.pid) else Role.CLIENT
        interval.role = role
        folded = Role.CLIENT if role is Role.UNKNOWN else role
        if peer_pid is not None:
            key: tuple = (stats.pid, "pid", peer_pid, folded)
        else:
            port = stats.remote.port if folded is not Role.SERVER else 0
            key = (stats.pid, "addr", folded, stats.remote.ip, port)
        first, members, _ = groups.get(key, (interval, [], peer_pid))
        members.append(interval)
        groups[key] = (first, members, peer_pid)

    traffics: list[Traffic] = []
    for first, members, peer_pid in groups.values():
        pid = first.stats.pid
        role = first.role
        protocol = next(
            (m.stats.protocol for m in members if m.stats.protocol is not Protocol.UNKNOWN),
            Protocol.UNKNOWN,
        )
        ssl = any(m.stats.ssl for m in members)
        remote = members[-1].stats.remote
        assert remote is not None  # grouped only with an address
        l4 = L4Delta()
        http: HttpStats | None = None
        sampled: list[SampledExchange] = []
        for member in members:
            _merge_l4(l4, member.delta)
            member_http, member_sampled = tracker.take_http(member)
            if member_http is not None:
                if http is None:
                    http = HttpStats()
                http.merge(member_http)
            sampled.extend(member_sampled)
        for local in context.entities.get(pid, []):
            traffics.append(
                Traffic(
                    entity=local.entity,
                    process_id=local.process_id,
                    role=role,
                    peer=_peer_label(local, peer_pid, remote, context, local_ips),
                    protocol=protocol,
                    ssl=ssl,
                    l4=l4,
                    http=http,
                    sampled=sampled,
                )
            )
    return traffics


def _peer_label(
    local: LocalEntity,
    peer_pid: int | None,
    remote: SocketAddress,
    context: PeerContext,
    local_ips: set[str],
) -> PeerLabel:
    if peer_pid is not None:
        for peer in context.entities.get(peer_pid, []):
            if (
                peer.entity.service_name == local.entity.service_name
                and peer.entity.instance_name == local.entity.instance_name
            ):
                return PeerLabel("process_id", peer.process_id)
    if remote.ip in context.host_addresses or remote.ip in local_ips:
        return PeerLabel("local", "true")
    return PeerLabel("address", f"{remote.ip}:{remote.port}")


def _merge_l4(into: L4Delta, delta: L4Delta) -> None:
    for name in _DELTA_COUNTERS:
        setattr(into, name, getattr(into, name) + getattr(delta, name))
    for name in _DELTA_HISTS:
        mine = getattr(into, name)
        for i, count in enumerate(getattr(delta, name)):
            mine[i] += count
