"""A process's inet sockets from procfs, through HostFS (rover/network/sockets.py)."""

from __future__ import annotations

import os
import socket

from rover.hostfs import HostFS
from rover.network.model import SocketAddress
from rover.network.sockets import SocketTable, fd_exists, inet_sockets, socket_inode


def test_this_process_sockets_are_found_by_fd_with_both_addresses():
    hostfs, pid = HostFS(), os.getpid()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                table = SocketTable(hostfs, pid)
                assert port in table.listening_ports()
                local, remote = table.addresses(accepted.fileno()) or (None, None)
                assert local == SocketAddress("127.0.0.1", port)
                assert remote == SocketAddress("127.0.0.1", client.getsockname()[1])
                inode = socket_inode(hostfs, pid, client.fileno())
                assert inode is not None and inode in inet_sockets(hostfs, pid)


def test_non_sockets_unix_sockets_and_closed_fds_are_not_inet():
    hostfs, pid = HostFS(), os.getpid()
    table = SocketTable(hostfs, pid)
    with open(os.devnull) as file:
        assert socket_inode(hostfs, pid, file.fileno()) is None
        assert table.addresses(file.fileno()) is None
    left, right = socket.socketpair()
    with left, right:
        inode = socket_inode(hostfs, pid, left.fileno())
        assert inode is not None and not table.is_inet(inode)
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    assert not fd_exists(hostfs, pid, fd) and socket_inode(hostfs, pid, fd) is None


def test_a_vanished_process_has_no_sockets():
    hostfs = HostFS()
    assert inet_sockets(hostfs, 2**22 + 7) == {}
    assert SocketTable(hostfs, 2**22 + 7).listening_ports() == set()
