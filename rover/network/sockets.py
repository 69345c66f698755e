"""A process's inet sockets from procfs: which fds are sockets, and the addresses the
kernel side could not see.

Without kprobes an accepted connection's local address is not in any tracepoint the
program uses, so it is looked up here (spec 8.3: Rover's fallback too): the fd's socket
inode from ``/proc/PID/fd/N``, then that inode's line in ``/proc/PID/net/{tcp,tcp6,udp,
udp6}`` (the process's network namespace). Every path goes through :class:`HostFS` (the
host's /proc when the agent runs in a container). Also the host's own addresses, for the
``*_local`` label.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
from dataclasses import dataclass

import psutil

from rover.hostfs import HostFS, ProcessGone
from rover.network.model import SocketAddress

log = logging.getLogger(__name__)

_LISTEN = "0A"  # TCP_LISTEN in the "st" column
_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")
_TABLES = ("tcp", "tcp6", "udp", "udp6")


@dataclass(frozen=True, slots=True)
class InetSocket:
    local: SocketAddress
    remote: SocketAddress
    state: str  # the "st" column, hex


def _address(hex_ip: str, hex_port: str) -> SocketAddress:
    raw = bytes.fromhex(hex_ip)
    # procfs prints each 32-bit word in host (little-endian) order
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(ordered)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return SocketAddress(str(ip), int(hex_port, 16))


def socket_inode(hostfs: HostFS, pid: int, fd: int) -> int | None:
    """The inode of ``pid``'s fd when it is a socket now, else None (gone included)."""
    try:
        link = os.readlink(hostfs.proc_path(pid, "fd", str(fd)))
    except OSError:
        return None
    match = _SOCKET_LINK.fullmatch(link)
    return int(match.group(1)) if match else None


def fd_exists(hostfs: HostFS, pid: int, fd: int) -> bool:
    return os.path.lexists(hostfs.proc_path(pid, "fd", str(fd)))


def open_fds(hostfs: HostFS, pid: int) -> list[int]:
    """``pid``'s open fds (empty when it is gone)."""
    try:
        return [int(name) for name in os.listdir(hostfs.proc_path(pid, "fd"))]
    except OSError:
        return []


def inet_sockets(hostfs: HostFS, pid: int) -> dict[int, InetSocket]:
    """Socket inode -> its TCP or UDP socket, for ``pid``'s network namespace."""
    table: dict[int, InetSocket] = {}
    for name in _TABLES:
        try:
            text = hostfs.read_text(pid, "net", name)
        except (OSError, ProcessGone):
            continue  # no IPv6, or the process is gone
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 10:
                continue
            try:
                local = _address(*fields[1].split(":"))
                remote = _address(*fields[2].split(":"))
                table[int(fields[9])] = InetSocket(local, remote, fields[3])
            except ValueError:
                continue
    return table


class SocketTable:
    """One process's inet sockets, read at most once (per report, per lookup batch)."""

    def __init__(self, hostfs: HostFS, pid: int) -> None:
        self.hostfs = hostfs
        self.pid = pid
        self._by_inode: dict[int, InetSocket] | None = None

    def _sockets(self) -> dict[int, InetSocket]:
        if self._by_inode is None:
            self._by_inode = inet_sockets(self.hostfs, self.pid)
        return self._by_inode

    def is_inet(self, inode: int) -> bool:
        return inode in self._sockets()

    def addresses(self, fd: int) -> tuple[SocketAddress, SocketAddress] | None:
        """(local, remote) of the process's fd, None when it is not an inet socket now."""
        inode = socket_inode(self.hostfs, self.pid, fd)
        found = None if inode is None else self._sockets().get(inode)
        return None if found is None else (found.local, found.remote)

    def listening_ports(self) -> set[int]:
        return {s.local.port for s in self._sockets().values() if s.state == _LISTEN}


def host_addresses() -> frozenset[str]:
    """This host's interface addresses (all of them, not Rover's last-per-interface)."""
    found = {"0.0.0.0", "::"}
    try:
        interfaces = psutil.net_if_addrs()
    except OSError as exc:
        log.warning("could not list the host's network addresses: %s", exc)
        return frozenset(found)
    for addresses in interfaces.values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                found.add(address.address.split("%", 1)[0])
    return frozenset(found)
