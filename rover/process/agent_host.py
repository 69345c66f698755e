"""What templates know about the agent itself (``.Rover``) and the ``host_ip`` property."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from dataclasses import dataclass, field

import psutil

from rover.hostfs import HostFS

_ADDRESS_TTL_S = 30.0  # interface addresses change rarely; templates ask once per process


@dataclass
class AgentHost:
    instance_id: str
    host_name: str = field(default_factory=socket.gethostname)
    hostfs: HostFS = field(default_factory=HostFS)
    _addresses: dict[str, tuple[str, str]] = field(default_factory=dict, init=False, repr=False)
    _read_at: float = field(default=float("-inf"), init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def ipv4(self, interface: str) -> str:
        """The interface's first IPv4 address, "" if it has none (or does not exist)."""
        return self._interface_addresses().get(interface, ("", ""))[0]

    def ipv6(self, interface: str) -> str:
        return self._interface_addresses().get(interface, ("", ""))[1]

    def default_ipv4(self) -> str:
        """The address of the default route's interface, else the first non-loopback IPv4."""
        addresses = self._interface_addresses()
        route_interface = _default_route_interface(self.hostfs)
        if route_interface and addresses.get(route_interface, ("", ""))[0]:
            return addresses[route_interface][0]
        for v4, _v6 in addresses.values():
            if v4 and not ipaddress.ip_address(v4).is_loopback:
                return v4
        return "127.0.0.1"

    def _interface_addresses(self) -> dict[str, tuple[str, str]]:
        with self._lock:
            if time.monotonic() - self._read_at > _ADDRESS_TTL_S:
                self._addresses = _read_interface_addresses()
                self._read_at = time.monotonic()
            return self._addresses


def _read_interface_addresses() -> dict[str, tuple[str, str]]:
    result: dict[str, tuple[str, str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        v4 = next((a.address for a in addrs if a.family == socket.AF_INET), "")
        v6 = next((a.address.split("%")[0] for a in addrs if a.family == socket.AF_INET6), "")
        if v4 or v6:
            result[name] = (v4, v6)
    return result


def _default_route_interface(hostfs: HostFS) -> str:
    try:
        lines = hostfs.host_path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return ""
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000":  # destination 0.0.0.0: the default route
            return fields[0]
    return ""
