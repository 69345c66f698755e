"""A process's TCP sockets from procfs: the addresses the kernel side could not see.

Without kprobes an accepted connection's local address is not in any tracepoint the
program uses, so it is looked up here (spec 8.3: Rover's fallback too): the fd's socket
inode from ``/proc/PID/fd/N``, then that inode's line in ``/proc/PID/net/tcp{,6}`` (the
process's network namespace). Also the host's own addresses, for the ``*_local`` label.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket

import psutil

from rover.hostfs import HostFS, ProcessGone
from rover.network.model import SocketAddress

log = logging.getLogger(__name__)

_LISTEN = "0A"


def _address(hex_ip: str, hex_port: str) -> SocketAddress:
    raw = bytes.fromhex(hex_ip)
    # procfs prints each 32-bit word in host (little-endian) order
    ordered = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(ordered)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return SocketAddress(str(ip), int(hex_port, 16))


class SocketTable:
    """Socket inodes of one process's namespace -> (local, remote, state); read once per
    report interval per process that needs it."""

    def __init__(self, hostfs: HostFS, pid: int) -> None:
        self.hostfs = hostfs
        self.pid = pid
        self._by_inode: dict[int, tuple[SocketAddress, SocketAddress, str]] | None = None

    def _load(self) -> dict[int, tuple[SocketAddress, SocketAddress, str]]:
        table: dict[int, tuple[SocketAddress, SocketAddress, str]] = {}
        for name in ("tcp", "tcp6"):
            try:
                text = self.hostfs.read_text(self.pid, "net", name)
            except (OSError, ProcessGone):
                continue  # no IPv6, or the process is gone
            for line in text.splitlines()[1:]:
                fields = line.split()
                if len(fields) < 10:
                    continue
                try:
                    local = _address(*fields[1].split(":"))
                    remote = _address(*fields[2].split(":"))
                    table[int(fields[9])] = (local, remote, fields[3])
                except ValueError:
                    continue
        return table

    def addresses(self, fd: int) -> tuple[SocketAddress, SocketAddress] | None:
        """(local, remote) of the process's fd, None when it is not a TCP socket now."""
        try:
            target = os.readlink(self.hostfs.proc_path(self.pid, "fd", str(fd)))
        except OSError:
            return None
        if not target.startswith("socket:["):
            return None
        if self._by_inode is None:
            self._by_inode = self._load()
        found = self._by_inode.get(int(target[8:-1]))
        return None if found is None else (found[0], found[1])

    def listening_ports(self) -> set[int]:
        if self._by_inode is None:
            self._by_inode = self._load()
        return {local.port for local, _, state in self._by_inode.values() if state == _LISTEN}


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
