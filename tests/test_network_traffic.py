"""Connections into traffics: deltas, connects and closes, roles, peers (spec 8.4-8.6)."""

from __future__ import annotations

from dataclasses import replace

from rover.network.http_stats import DURATION_BUCKETS_MS, HttpStats, bucket_index
from rover.network.model import (
    L4_BUCKETS_NS,
    ConnectionStats,
    Direction,
    HttpExchange,
    HttpMessage,
    PeerLabel,
    Protocol,
    Role,
    SocketAddress,
)
from rover.network.traffic import ConnectionTracker, LocalEntity, PeerContext, build_traffics
from rover.process.model import Entity

CLIENT_PID, SERVER_PID = 100, 200
SERVER = SocketAddress("127.0.0.1", 8080)
CLIENT = SocketAddress("127.0.0.1", 40000)
HIST = (0,) * len(L4_BUCKETS_NS)


def entity(service: str, instance: str = "i") -> Entity:
    return Entity(layer="GENERAL", service_name=service, instance_name=instance, process_name="p")


def context(same_instance: bool = False, host: frozenset[str] = frozenset()) -> PeerContext:
    server_service = "client-svc" if same_instance else "server-svc"
    return PeerContext(
        host_addresses=host,
        entities={
            CLIENT_PID: [LocalEntity("client-id", entity("client-svc"))],
            SERVER_PID: [LocalEntity("server-id", entity(server_service))],
        },
        listening=lambda pid: {8080} if pid == SERVER_PID else set(),
    )


def stats(conn_id: int, pid: int, role: Role, local, remote, **values) -> ConnectionStats:
    return ConnectionStats(
        conn_id=conn_id,
        pid=pid,
        fd=3,
        role=role,
        protocol=Protocol.HTTP1,
        local=local,
        remote=remote,
        write_hist=values.pop("write_hist", HIST),
        read_hist=HIST,
        rtt_hist=HIST,
        **values,
    )


def no_lookup(pid: int, fd: int):
    return None


def test_loopback_pair_resolves_each_other_and_counts_deltas_once():
    tracker = ConnectionTracker(100)
    hist = list(HIST)
    hist[3] = 4
    live = [
        stats(1, CLIENT_PID, Role.CLIENT, CLIENT, SERVER, write_count=4, write_bytes=400,
              write_ns=4000, connect_ns=50_000, write_hist=tuple(hist)),
        stats(2, SERVER_PID, Role.SERVER, SERVER, CLIENT, read_count=4, read_bytes=400,
              read_ns=8000, connect_ns=20_000),
    ]  # fmt: skip
    traffics = build_traffics(tracker.report(live), tracker, context(same_instance=True), no_lookup)
    by_id = {t.process_id: t for t in traffics}
    client, server = by_id["client-id"], by_id["server-id"]
    assert client.role is Role.CLIENT and server.role is Role.SERVER
    # same service and instance: the peer is named by its process id
    assert client.peer == PeerLabel("process_id", "server-id")
    assert server.peer == PeerLabel("process_id", "client-id")
    assert (client.l4.write_count, client.l4.write_bytes, client.l4.write_hist[3]) == (4, 400, 4)
    assert (client.l4.connect_count, client.l4.connect_ns) == (1, 50_000)
    assert client.l4.connect_hist[bucket_index(L4_BUCKETS_NS, 50_000)] == 1
    # next report: only what changed, no second connect
    later_hist = tuple(h + (1 if i == 3 else 0) for i, h in enumerate(hist))
    live[0] = replace(live[0], write_count=6, write_bytes=650, write_hist=later_hist)
    traffics = build_traffics(tracker.report(live), tracker, context(True), no_lookup)
    client = next(t for t in traffics if t.process_id == "client-id")
    assert (client.l4.write_count, client.l4.write_bytes, client.l4.write_hist[3]) == (2, 250, 1)
    assert client.l4.connect_count == 0


def test_other_instance_on_this_host_is_local_and_remote_hosts_are_addresses():
    tracker = ConnectionTracker(100)
    far = SocketAddress("10.1.2.3", 5432)
    live = [
        stats(1, CLIENT_PID, Role.CLIENT, CLIENT, SERVER, write_count=1),
        stats(2, SERVER_PID, Role.SERVER, SERVER, CLIENT, read_count=1),
        stats(3, CLIENT_PID, Role.CLIENT, SocketAddress("10.0.0.5", 41000), far, write_count=1),
    ]
    traffics = build_traffics(tracker.report(live), tracker, context(), no_lookup)
    peers = sorted((t.process_id, t.peer.kind, t.peer.value) for t in traffics)
    assert peers == [
        ("client-id", "address", "10.1.2.3:5432"),
        ("client-id", "local", "true"),
        ("server-id", "local", "true"),
    ]


def test_close_is_counted_once_with_the_final_values_then_forgotten():
    tracker = ConnectionTracker(100)
    first = stats(1, CLIENT_PID, Role.CLIENT, CLIENT, SERVER, write_count=1, connect_ns=10)
    tracker.report([first])
    final = stats(1, CLIENT_PID, Role.CLIENT, CLIENT, SERVER, write_count=3, close_ns=7_000)
    tracker.closed(final)
    traffics = build_traffics(tracker.report([]), tracker, context(), no_lookup)
    (client,) = traffics
    assert (client.l4.write_count, client.l4.close_count, client.l4.close_ns) == (2, 1, 7_000)
    assert client.l4.connect_count == 0
    assert len(tracker) == 0
    assert build_traffics(tracker.report([]), tracker, context(), no_lookup) == []


def test_unknown_role_is_inferred_from_the_mirror_then_from_listening_ports():
    tracker = ConnectionTracker(100)
    live = [
        stats(1, CLIENT_PID, Role.UNKNOWN, CLIENT, SERVER, write_count=1),
        stats(2, SERVER_PID, Role.SERVER, SERVER, CLIENT, read_count=1),
    ]
    roles = {
        t.process_id: t.role
        for t in build_traffics(tracker.report(live), tracker, context(), no_lookup)
    }
    assert roles == {"client-id": Role.CLIENT, "server-id": Role.SERVER}
    # alone, with its local port among the ones it listens on: a server
    tracker = ConnectionTracker(100)
    live = [
        stats(3, SERVER_PID, Role.UNKNOWN, SERVER, SocketAddress("10.9.9.9", 5555), read_count=1)
    ]
    (traffic,) = build_traffics(tracker.report(live), tracker, context(), no_lookup)
    assert traffic.role is Role.SERVER
    assert traffic.peer == PeerLabel("address", "10.9.9.9:5555")


def test_missing_addresses_are_looked_up_and_without_one_the_connection_is_left_out():
    tracker = ConnectionTracker(100)
    live = [stats(1, SERVER_PID, Role.SERVER, None, None, read_count=1)]
    assert build_traffics(tracker.report(live), tracker, context(), no_lookup) == []
    assert tracker.counters["connections_without_address"] == 1
    far = SocketAddress("10.1.1.1", 1234)
    live = [stats(1, SERVER_PID, Role.SERVER, None, None, read_count=2)]
    (traffic,) = build_traffics(
        tracker.report(live), tracker, context(), lambda pid, fd: (SERVER, far)
    )
    assert traffic.peer == PeerLabel("address", "10.1.1.1:1234")


def test_server_connections_of_many_clients_fold_into_one_traffic_per_remote_ip():
    tracker = ConnectionTracker(100)
    live = [
        stats(
            i, SERVER_PID, Role.SERVER, SERVER, SocketAddress("10.2.2.2", 30000 + i), read_count=1
        )
        for i in range(5)
    ]
    (traffic,) = build_traffics(tracker.report(live), tracker, context(), no_lookup)
    assert traffic.l4.read_count == 5


def exchange(duration_ms: int, status: int) -> HttpExchange:
    request = HttpMessage(
        is_request=True,
        method="GET",
        target="/",
        direction=Direction.RECV,
        header_bytes=b"x" * 100,
        start_ns=0,
    )
    response = HttpMessage(
        is_request=False,
        status=status,
        direction=Direction.SEND,
        header_bytes=b"y" * 50,
        body_size=2000,
        start_ns=duration_ms * 1_000_000,
        end_ns=duration_ms * 1_000_000,
    )
    return HttpExchange(conn_id=2, pid=SERVER_PID, request=request, response=response)  # fmt: skip


def test_http_statistics_of_the_traffic_side_are_taken_once_per_report():
    tracker = ConnectionTracker(100)
    for duration, status in ((3, 200), (12, 200), (40, 503)):
        tracker.add_exchange_stats(2, exchange(duration, status))
    live = [stats(2, SERVER_PID, Role.SERVER, SERVER, CLIENT, read_count=3)]
    (traffic,) = build_traffics(tracker.report(live), tracker, context(), no_lookup)
    http = traffic.http
    assert isinstance(http, HttpStats)
    assert (http.requests, dict(http.statuses), http.duration_ms) == (3, {200: 2, 503: 1}, 55)
    assert (http.request_bytes, http.response_bytes) == (300, 3 * 2050)
    assert http.duration_hist[bucket_index(DURATION_BUCKETS_MS, 40)] == 1
    (traffic,) = build_traffics(tracker.report(live), tracker, context(), no_lookup)
    assert traffic.http is None


def test_connections_beyond_the_bound_are_counted_not_tracked():
    tracker = ConnectionTracker(2)
    live = [stats(i, CLIENT_PID, Role.CLIENT, CLIENT, SERVER, write_count=1) for i in range(5)]
    tracker.report(live)
    assert len(tracker) == 2
    assert tracker.counters["connections_untracked"] == 3


def test_bucket_choice_follows_the_spec():
    assert bucket_index(L4_BUCKETS_NS, 0) == 0
    assert bucket_index(L4_BUCKETS_NS, 9_999) == 0
    assert bucket_index(L4_BUCKETS_NS, 10_000) == 1
    assert bucket_index(L4_BUCKETS_NS, 10**12) == len(L4_BUCKETS_NS) - 1
    assert bucket_index(DURATION_BUCKETS_MS, 0) == 0  # below the first bound: the first
    assert bucket_index(DURATION_BUCKETS_MS, 4) == 1


def test_a_connection_gone_without_its_close_event_still_reports_its_last_requests():
    tracker = ConnectionTracker(100)
    live = [stats(2, SERVER_PID, Role.SERVER, SERVER, CLIENT, read_count=3)]
    tracker.report(live)
    tracker.add_exchange_stats(2, exchange(5, 200))
    # the record is gone and no close event came (the ring buffer was full)
    (traffic,) = build_traffics(tracker.report([]), tracker, context(), no_lookup)
    assert traffic.http is not None and traffic.http.requests == 1
    assert traffic.l4.read_count == 0
    assert tracker.counters["connections_gone_without_close"] == 1
    assert len(tracker) == 0


def test_exchanges_of_a_connection_never_seen_are_counted_lost_after_a_report():
    tracker = ConnectionTracker(100)
    tracker.add_exchange_stats(9, exchange(5, 200))
    assert tracker.report([]) == []  # its record may come with the next read
    assert len(tracker) == 1
    assert tracker.report([]) == []
    assert len(tracker) == 0
    assert tracker.counters["http_exchanges_without_connection"] == 1
