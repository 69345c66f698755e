"""The network observer for real: bpf/network.c loaded, peers on 127.0.0.1 watched.

Needs root and a working bcc (fails, never skips, without them). The peers are
tests/network_peer.py processes driven line by line, so every count is exact.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from network_peer import RAW, REQUEST, REQUEST_PARTS, RESPONSE
from processes import RunningProcess

from rover.bpf.headers import HeaderSearch
from rover.network.model import (
    L4_BUCKETS_NS,
    ConnectionClosed,
    ConnectionStats,
    DataSyscall,
    Direction,
    Protocol,
    Role,
    SocketAddress,
)
from rover.network.observer import NetworkObserver, classify_fds

FD_INET = 1  # enum net_fd_kind

pytestmark = pytest.mark.bpf

PEER = str(Path(__file__).resolve().parent / "network_peer.py")
Events = list[NetworkObserver.Event]


@pytest.fixture(scope="module")
def observer() -> Iterator[NetworkObserver]:
    with NetworkObserver(HeaderSearch().find()) as obs:
        yield obs


class Watch:
    """The observer's events gathered as they come, and the pids this test watches."""

    def __init__(self, observer: NetworkObserver) -> None:
        self.observer = observer
        self.events: Events = []
        self.pids: list[int] = []

    def add(self, pid: int) -> None:
        self.observer.add_pid(pid)
        self.pids.append(pid)

    def drain(self, until: Callable[[], bool] | None = None, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            more = self.observer.poll(50)
            self.events += more
            if until is None:
                if not more:
                    return
            elif until():
                return
            if time.monotonic() > deadline:
                if until is not None:
                    raise AssertionError("the expected events did not come")
                return

    def closed(self, pid: int) -> list[ConnectionStats]:
        return [
            e.stats for e in self.events if isinstance(e, ConnectionClosed) and e.stats.pid == pid
        ]

    def data(self, conn_id: int) -> list[DataSyscall]:
        return [e for e in self.events if isinstance(e, DataSyscall) and e.conn_id == conn_id]

    def connections(self, pid: int) -> list[ConnectionStats]:
        return [c for c in self.observer.connections() if c.pid == pid]


@pytest.fixture
def watch(observer: NetworkObserver) -> Iterator[Watch]:
    w = Watch(observer)
    observer.poll(0)  # what earlier tests left
    yield w
    for pid in w.pids:
        observer.remove_pid(pid)


def command(peer: RunningProcess, line: str) -> list[str]:
    peer.send_line(line)
    reply = peer.read_line(15)
    assert reply is not None and reply.startswith(("ok", "port")), (reply, peer.stderr_text())
    return reply.split()[1:]


@pytest.fixture
def peers(spawn: Callable[..., RunningProcess]) -> Callable[[], RunningProcess]:
    return lambda: spawn([sys.executable, PEER])


def only(items: list[ConnectionStats]) -> ConnectionStats:
    assert len(items) == 1, items
    return items[0]


def test_keepalive_counts_roles_addresses_and_data(watch: Watch, peers) -> None:
    server, client = peers(), peers()
    watch.add(server.pid)
    watch.add(client.pid)
    port = int(command(server, "serve")[0])
    local_port, fd = (int(x) for x in command(client, f"keepalive {port} 5"))

    def both_seen() -> bool:
        return len(watch.connections(client.pid)) == 1 and len(watch.connections(server.pid)) == 1

    watch.drain(both_seen)
    c = only(watch.connections(client.pid))
    s = only(watch.connections(server.pid))
    assert (c.role, s.role) == (Role.CLIENT, Role.SERVER)
    assert c.fd == fd
    assert c.remote == SocketAddress("127.0.0.1", port)
    assert c.local == SocketAddress("127.0.0.1", local_port)
    assert s.remote == SocketAddress("127.0.0.1", local_port)
    assert s.local == SocketAddress("127.0.0.1", port)  # from /proc/PID/net/tcp
    assert c.connect_ns > 0 and s.connect_ns > 0
    assert (c.write_count, c.write_bytes) == (5, 5 * len(REQUEST))
    assert (c.read_count, c.read_bytes) == (5, 5 * len(RESPONSE))
    assert (s.read_count, s.read_bytes) == (5, 5 * len(REQUEST))
    assert (s.write_count, s.write_bytes) == (5, 5 * len(RESPONSE))
    assert c.protocol is Protocol.HTTP1 and s.protocol is Protocol.HTTP1
    for stats in (c, s):
        assert len(stats.write_hist) == len(L4_BUCKETS_NS)
        assert sum(stats.write_hist) == 5 and sum(stats.read_hist) == 5
        assert stats.write_ns > 0 and stats.read_ns > 0
        assert sum(stats.rtt_hist) == stats.rtt_count

    watch.drain(lambda: len(watch.data(c.conn_id)) == 10 and len(watch.data(s.conn_id)) == 10)
    sent = watch.data(c.conn_id)
    assert [d.data_id for d in sent] == list(range(10))
    assert [d.payload for d in sent] == [REQUEST, RESPONSE] * 5
    assert [d.direction for d in sent] == [Direction.SEND, Direction.RECV] * 5
    assert {d.syscall for d in sent} == {"Sendto", "Recvfrom"}
    assert all(d.pid == client.pid and d.fd == fd and d.end_ns >= d.start_ns > 0 for d in sent)
    assert [d.size for d in sent] == [len(REQUEST), len(RESPONSE)] * 5
    received = watch.data(s.conn_id)
    assert [d.payload for d in received] == [REQUEST, RESPONSE] * 5
    assert [d.direction for d in received] == [Direction.RECV, Direction.SEND] * 5

    command(client, "closeall")
    watch.drain(lambda: len(watch.closed(client.pid)) == 1 and len(watch.closed(server.pid)) == 1)
    final_c, final_s = only(watch.closed(client.pid)), only(watch.closed(server.pid))
    assert final_c.conn_id == c.conn_id and final_s.conn_id == s.conn_id
    assert (final_c.write_count, final_c.read_bytes) == (5, 5 * len(RESPONSE))
    assert (final_s.read_count, final_s.write_bytes) == (5, 5 * len(RESPONSE))
    assert final_c.close_ns > 0 and final_s.close_ns > 0
    assert watch.connections(client.pid) == [] and watch.connections(server.pid) == []


def test_short_connections_by_every_way(watch: Watch, peers) -> None:
    server, client = peers(), peers()
    watch.add(server.pid)
    watch.add(client.pid)
    port = int(command(server, "serve")[0])
    local_ports = [int(p) for p in command(client, f"short {port} 4")]
    watch.drain(lambda: len(watch.closed(client.pid)) == 4 and len(watch.closed(server.pid)) == 4)
    clients = watch.closed(client.pid)
    assert [c.local.port if c.local else 0 for c in clients] == local_ports
    ways = [("Sendto", "Recvfrom"), ("SendMsg", "RecvMsg"), ("Write", "Read"), ("Writev", "Readv")]
    for stats, way in zip(clients, ways, strict=True):
        assert stats.role is Role.CLIENT and stats.remote == SocketAddress("127.0.0.1", port)
        assert (stats.write_count, stats.write_bytes) == (1, len(REQUEST))
        assert (stats.read_count, stats.read_bytes) == (1, len(RESPONSE))
        assert stats.close_ns > 0 and stats.connect_ns > 0
        conn_id = stats.conn_id
        watch.drain(lambda: len(watch.data(conn_id)) == 2)  # noqa: B023 - used at once
        send, recv = watch.data(stats.conn_id)
        assert (send.syscall, recv.syscall) == way
        vectored = way[0] in ("SendMsg", "Writev")
        assert send.payload == (REQUEST_PARTS[0] if vectored else REQUEST)  # first buffer
        assert send.size == len(REQUEST) and recv.payload == RESPONSE
    servers = watch.closed(server.pid)
    assert sorted(s.remote.port for s in servers if s.remote) == sorted(local_ports)
    assert all(s.role is Role.SERVER and s.read_count == 1 for s in servers)


def test_non_http_connection_has_counters_and_no_data(watch: Watch, peers) -> None:
    server, client = peers(), peers()
    watch.add(server.pid)
    watch.add(client.pid)
    port = int(command(server, "serve")[0])
    command(client, f"raw {port} 3")
    watch.drain(lambda: len(watch.closed(client.pid)) == 1 and len(watch.closed(server.pid)) == 1)
    c = only(watch.closed(client.pid))
    assert c.protocol is Protocol.UNKNOWN
    assert (c.write_count, c.write_bytes, c.read_count, c.read_bytes) == (
        3,
        3 * len(RAW),
        3,
        3 * len(RAW),
    )
    watch.drain()
    assert watch.data(c.conn_id) == []
    assert watch.data(only(watch.closed(server.pid)).conn_id) == []


def test_unwatched_files_and_unix_sockets_are_not_traced(
    watch: Watch, peers, tmp_path: Path
) -> None:
    server, client, stranger = peers(), peers(), peers()
    watch.add(client.pid)
    port = int(command(server, "serve")[0])  # the server is not watched either
    command(stranger, f"keepalive {port} 3")
    file_fd = int(command(client, f"file {tmp_path / 'out'}")[0])
    unix_fds = [int(x) for x in command(client, f"unix {tmp_path / 'sock'}")]
    command(client, f"keepalive {port} 2")  # a traced one, so that we know events came
    watch.drain(lambda: len(watch.connections(client.pid)) == 1)
    watch.drain()
    pids = {e.pid for e in watch.events if isinstance(e, DataSyscall)}
    pids |= {e.stats.pid for e in watch.events if isinstance(e, ConnectionClosed)}
    assert pids <= {client.pid}
    assert all(c.pid != stranger.pid and c.pid != server.pid for c in watch.observer.connections())
    traced = only(watch.connections(client.pid))
    assert traced.write_count == 2 and traced.role is Role.CLIENT
    # the file and the AF_UNIX sockets were closed before the traced socket existed: had
    # they been taken for connections, their close events would be here
    assert watch.closed(client.pid) == []
    assert {e.conn_id for e in watch.events if isinstance(e, DataSyscall)} == {traced.conn_id}
    assert file_fd >= 0 and len(unix_fds) == 4
    command(client, "closeall")
    command(stranger, "closeall")


def test_connection_opened_before_watching_has_unknown_role(watch: Watch, peers) -> None:
    server, client = peers(), peers()
    port = int(command(server, "serve")[0])
    local_port, fd = (int(x) for x in command(client, f"open {port}"))
    deadline = time.monotonic() + 5
    while len([k for k in classify_fds(server.pid).values() if k == FD_INET]) < 2:
        assert time.monotonic() < deadline, "the server did not accept"
        time.sleep(0.01)
    watch.add(server.pid)
    watch.add(client.pid)
    command(client, "use 3")
    watch.drain(
        lambda: len(watch.connections(client.pid)) == 1 and len(watch.connections(server.pid)) == 1
    )
    c = only(watch.connections(client.pid))
    s = only(watch.connections(server.pid))
    assert c.role is Role.UNKNOWN and s.role is Role.UNKNOWN
    assert c.fd == fd and c.connect_ns == 0
    assert (c.write_count, c.read_count, s.write_count) == (3, 3, 3)
    assert s.read_count in (2, 3)  # the server's first recv was (likely) entered unwatched
    assert c.local == SocketAddress("127.0.0.1", local_port)  # from /proc
    assert c.protocol is Protocol.HTTP1
    command(client, "closeall")
    watch.drain(lambda: len(watch.closed(client.pid)) == 1)


def test_fd_reuse_gets_a_new_connection_id(watch: Watch, peers) -> None:
    server, client = peers(), peers()
    watch.add(client.pid)
    port = int(command(server, "serve")[0])
    first, second = (int(x) for x in command(client, f"reuse {port}"))
    assert first == second
    watch.drain(lambda: len(watch.closed(client.pid)) == 2)
    a, b = watch.closed(client.pid)
    assert a.fd == b.fd == first and a.conn_id != b.conn_id
    assert (a.write_count, b.write_count) == (1, 1)


def test_counters(observer: NetworkObserver) -> None:
    counters = observer.counters()
    assert counters["data_calls"] > 0 and counters["connects"] > 0 and counters["closes"] > 0
    assert set(observer.loss_counters) <= set(counters)
    assert counters["dropped_data_events"] == 0 and counters["conns_map_full"] == 0
    assert len(observer.attached) >= 32 and os.path.isdir("/proc/self")


def test_check_reports_network_hooks_and_uprobes() -> None:
    from rover.check import network_checks

    results = {r.name: r for r in network_checks(HeaderSearch().find())}
    assert results["network hooks"].ok and results["network profiling"].ok
    assert "attached to 35 tracepoints" in results["network profiling"].detail
    assert results["uprobes"].ok == Path("/sys/bus/event_source/devices/uprobe/type").is_file()
    if results["uprobes"].ok:  # attached for real to this process's libssl
        assert "uprobes attached to SSL_read/SSL_write(_ex) of" in results["uprobes"].detail
