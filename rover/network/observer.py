"""The kernel side of network profiling: ``bpf/network.c`` loaded, attached and read.

:class:`NetworkObserver` watches the processes it is given (:meth:`add_pid`), and
turns what the program reports into ``rover.network.model`` values: the events of
the ring buffer (:meth:`poll`: HTTP/1 data calls, closed connections,
retransmissions) and the per-connection records (:meth:`connections`).

Without kprobes the program cannot ask the kernel whether an fd is a socket: it
learns from socket/connect/accept, from what this class writes in ``fd_kinds`` when
a pid is added (every fd of ``/proc/PID/fd``), and from the answers to its
questions about fds it never saw (an ``EVENT_FD_UNKNOWN``, answered inside
:meth:`poll`). An inet socket is one whose inode is in ``/proc/PID/net/{tcp,tcp6,
udp,udp6}``. Calls on an fd not classified yet are not counted (the kernel counter
``fd_unresolved_calls``).

Accepted connections have no local address from the kernel: it is read from
``/proc/PID/net/tcp{,6}`` (by the socket's inode) the first time the connection is
seen while its fd is open, and kept with the connection.

The layouts come from ``bpf/network.h`` (``rover.bpf.contract``); decoding uses
precompiled ``struct.Struct`` s built from them.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import os
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from rover.bpf.contract import Counter, header
from rover.bpf.headers import KernelHeaders
from rover.bpf.loader import BPFLoadError
from rover.bpf.maps import possible_cpus
from rover.bpf.program import LoadedProgram, ProgramSpec, load_program
from rover.bpf.ringbuf import RingBuffer
from rover.bpf.syscall import UPROBE_PMU
from rover.bpf.tracefs import ensure_tracefs, tracepoint_dir
from rover.config.model import NetworkConfig
from rover.hostfs import HostFS, ProcessGone
from rover.network.model import (
    ConnectionClosed,
    ConnectionStats,
    DataSyscall,
    Direction,
    Protocol,
    Retransmit,
    Role,
    SocketAddress,
)
from rover.network.sockets import SocketTable, fd_exists, open_fds, socket_inode
from rover.network.tls import (
    PROBED,
    RETURN_FUNCTION,
    TlsLibrary,
    TlsLookupError,
    find_tls_libraries,
)

log = logging.getLogger(__name__)

_DATA_CALLS = (
    "read", "write", "readv", "writev", "sendto", "recvfrom", "sendmsg", "recvmsg",
    "sendmmsg", "recvmmsg", "sendfile64",
)  # fmt: skip
_CONNECTION_CALLS = ("socket", "connect", "accept", "accept4", "close")
MANDATORY_TRACEPOINTS: tuple[tuple[str, str], ...] = tuple(
    ("syscalls", f"sys_{side}_{call}")
    for call in (*_CONNECTION_CALLS, *_DATA_CALLS)
    for side in ("enter", "exit")
)
# Optional tracepoints, and the -D flag compiling their function in.
OPTIONAL_TRACEPOINTS: dict[tuple[str, str], str] = {
    ("sock", "inet_sock_set_state"): "HAVE_SET_STATE",  # local address of connects
    ("tcp", "tcp_probe"): "HAVE_TCP_PROBE",  # RTT
    ("tcp", "tcp_retransmit_skb"): "HAVE_RETRANSMIT",  # retransmissions
}

# enum net_call symbol -> DataSyscall.syscall
CALL_NAMES: dict[str, str] = {
    "CALL_WRITE": "Write",
    "CALL_WRITEV": "Writev",
    "CALL_SENDTO": "Sendto",
    "CALL_SENDMSG": "SendMsg",
    "CALL_SENDMMSG": "SendMMSg",
    "CALL_SENDFILE": "Sendfile",
    "CALL_READ": "Read",
    "CALL_READV": "Readv",
    "CALL_RECVFROM": "Recvfrom",
    "CALL_RECVMSG": "RecvMsg",
    "CALL_RECVMMSG": "RecvMMsg",
    "CALL_SSL_WRITE": "SSL_write",
    "CALL_SSL_READ": "SSL_read",
}
TLS_FUNCTIONS: tuple[str, ...] = (*dict.fromkeys(PROBED.values()), RETURN_FUNCTION)

# Counted in user space, added to counters().
USER_COUNTERS: tuple[Counter, ...] = (
    Counter("", "fds_resolved_inet", "unknown fds user space found to be inet sockets", False),
    Counter("", "fds_resolved_other", "unknown fds user space found not to be traced", False),
    Counter("", "fds_gone", "unknown fds closed before user space could look", False),
    Counter("", "undecodable_events", "ring buffer records of an unknown kind or size", True),
    Counter("", "tls_libraries_attached", "OpenSSL libraries probed, per process", False),
    Counter("", "tls_uprobes_attached", "TLS uprobes and uretprobes attached", False),
    Counter(
        "", "tls_unsupported_libraries", "OpenSSL of a version not supported: no plaintext", True
    ),
    Counter("", "tls_attach_failed", "TLS libraries not probed (unreadable, refused)", True),
)


@dataclass
class TlsAttachment:
    """One process's OpenSSL and the probes attached to it (none: unsupported or failed)."""

    pid: int
    library: TlsLibrary
    attachments: list[int] = field(default_factory=list)
    error: str = ""  # why it has no probes


_AF_INET = 2
_AF_INET6 = 10


def _enum(name: str) -> dict[str, int]:
    return {symbol: value for symbol, value, _ in header("network.h").enums[name]}


def _layout(ctype: Any, prefix: str = "") -> tuple[str, list[str]]:
    """A ``struct`` format for a contract struct, and the name of each value it unpacks
    (nested structs flattened as ``outer.inner``; u8 arrays as one bytes value)."""
    codes = {1: "B", 2: "H", 4: "I", 8: "Q"}
    fmt, names, offset = "", [], 0
    for name, ftype in ctype._fields_:
        start = getattr(ctype, name).offset
        if start > offset:
            fmt += f"{start - offset}x"
        full = prefix + name
        if issubclass(ftype, ctypes.Structure):
            inner, inner_names = _layout(ftype, full + ".")
            fmt += inner
            names += inner_names
        elif issubclass(ftype, ctypes.Array):
            element = ftype._type_
            if ctypes.sizeof(element) == 1:
                fmt += f"{ftype._length_}s"
                names.append(full)
            else:
                fmt += f"{ftype._length_}{codes[ctypes.sizeof(element)]}"
                names += [f"{full}[{i}]" for i in range(ftype._length_)]
        else:
            fmt += codes[ctypes.sizeof(ftype)]
            names.append(full)
        offset = start + ctypes.sizeof(ftype)
    fmt += f"{ctypes.sizeof(ctype) - offset}x" if ctypes.sizeof(ctype) > offset else ""
    return fmt, names


@dataclass
class Decoder:
    """One contract struct as a precompiled ``struct.Struct`` and its field positions."""

    ctype: Any
    packer: struct.Struct = field(init=False)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        fmt, names = _layout(self.ctype)
        self.packer = struct.Struct("<" + fmt)
        self.index = {name: i for i, name in enumerate(names)}
        if self.packer.size != ctypes.sizeof(self.ctype):
            raise AssertionError(f"{self.ctype.__name__}: struct format {fmt} is wrong")


@dataclass(frozen=True)
class ObserverConfig:
    max_conns: int = 8192
    capture: int = 1024  # payload bytes sent per data event (a power of two, <= 4096)
    ringbuf_bytes: int = 4 << 20  # a power of two, a whole number of pages
    max_pids: int = 1024
    max_fds: int = 65536
    max_threads: int = 16384

    def defines(self) -> dict[str, int]:
        if self.capture & (self.capture - 1) or not 16 <= self.capture <= 4096:
            raise ValueError(f"capture must be a power of two in 16..4096, not {self.capture}")
        if self.ringbuf_bytes & (self.ringbuf_bytes - 1) or self.ringbuf_bytes < 4096:
            raise ValueError(f"ringbuf_bytes must be a power of two pages: {self.ringbuf_bytes}")
        return {
            "MAX_CONNS": self.max_conns,
            "CAPTURE": self.capture,
            "RINGBUF_PAGES": self.ringbuf_bytes // 4096,
            "MAX_PIDS": self.max_pids,
            "MAX_FDS": self.max_fds,
            "MAX_THREADS": self.max_threads,
        }


def function_name(category: str, event: str) -> str:
    return f"tracepoint__{category}__{event}"


def _power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def observer_config(network: NetworkConfig) -> ObserverConfig:
    """The program's sizes from ``profiling.task.network``: the ring buffer holds
    ``per_cpu_buffer`` per possible CPU, sizes rounded up to powers of two."""
    ring = network.protocol_analyze.per_cpu_buffer * possible_cpus()
    return ObserverConfig(
        max_conns=network.max_connections,
        capture=_power_of_two(network.protocol_analyze.capture_bytes),
        ringbuf_bytes=max(4096, _power_of_two(ring)),
    )


class NetworkObserver:
    """``bpf/network.c`` for the pids added; :meth:`start` loads it, :meth:`close` ends it.

    :meth:`poll` and :meth:`connections` may be called from different threads.
    """

    Event = DataSyscall | ConnectionClosed | Retransmit

    def __init__(
        self,
        headers: KernelHeaders,
        config: ObserverConfig | None = None,
        hostfs: HostFS | None = None,
        tls: bool = True,
    ) -> None:
        self.headers = headers
        self.config = config or ObserverConfig()
        self.hostfs = hostfs or HostFS()
        # TLS plaintext by uprobes on OpenSSL (needs the uprobe PMU)
        self.tls = tls and os.path.isdir(UPROBE_PMU)
        self._tls: dict[int, dict[str, TlsAttachment]] = {}  # pid -> library path -> probes
        self._tls_logged: set[tuple[str, str]] = set()  # (what, library path) logged once
        self.attached: list[str] = []  # "category:event"
        self.missing: list[str] = []  # optional tracepoints this kernel lacks
        self._program: LoadedProgram | None = None
        self._ring: RingBuffer | None = None
        self._lock = threading.Lock()
        self._user = dict.fromkeys((c.name for c in USER_COUNTERS), 0)
        self._pids: set[int] = set()
        self._locals: dict[int, SocketAddress] = {}  # conn_id -> local address from /proc
        h = header("network.h")
        self._kernel_counters = h.counters("net_stat")
        self._fd_kinds = _enum("net_fd_kind")
        self._kinds = _enum("net_event_kind")
        calls = _enum("net_call")
        self._call_names = {calls[symbol]: name for symbol, name in CALL_NAMES.items()}
        self._conn = Decoder(h.structs["conn_rec"])
        self._data = Decoder(h.structs["data_event"])
        self._close = Decoder(h.structs["close_event"])
        self._retransmit = Decoder(h.structs["retransmit_event"])
        self._fd = Decoder(h.structs["fd_event"])
        self._buckets = h.defines["NET_BUCKETS"]
        self._pid_slot_count = h.defines["NET_PID_SLOTS"]

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> None:
        """Compile, load and attach. Raises BPFLoadError (a mandatory tracepoint missing,
        the program refused)."""
        ensure_tracefs()
        absent = [f"{c}:{e}" for c, e in MANDATORY_TRACEPOINTS if tracepoint_dir(c, e) is None]
        if absent:
            raise BPFLoadError(
                "network profiling needs the syscall tracepoints (CONFIG_FTRACE_SYSCALLS); "
                f"missing: {', '.join(absent)}"
            )
        defines = self.config.defines()
        tracepoints = list(MANDATORY_TRACEPOINTS)
        for (category, event), flag in OPTIONAL_TRACEPOINTS.items():
            if tracepoint_dir(category, event) is None:
                self.missing.append(f"{category}:{event}")
                log.warning("tracepoint %s:%s not found: network profiling goes without it",
                            category, event)  # fmt: skip
                continue
            defines[flag] = 1
            tracepoints.append((category, event))
        names = [function_name(c, e) for c, e in tracepoints]
        h = header("network.h")
        spec = ProgramSpec(
            "network",
            defines,
            names[0],
            "tracepoint",
            functions=tuple(names[1:]),
            probe_functions=TLS_FUNCTIONS if self.tls else (),
        )
        program = load_program(spec, self.headers)
        self._program = program
        try:
            self._pid_map = program.map("pids", ctypes.c_uint32, ctypes.c_uint32)
            self._pid_slots = program.map("pid_slots", ctypes.c_uint32, ctypes.c_uint32)
            self._fd_map = program.map("fd_kinds", ctypes.c_uint64, ctypes.c_uint32)
            self._conn_map = program.map("conns", ctypes.c_uint64, self._conn.ctype)
            self._stats = program.map("stats", ctypes.c_int, ctypes.c_uint64)
            self._ssl_calls = program.map("ssl_calls", ctypes.c_uint64, None)
            self._ssl_conns = program.map("ssl_conns", h.structs["ssl_key"], ctypes.c_uint64)
            self._ring = RingBuffer(program.handover.maps["events"])
            for (category, event), name in zip(tracepoints, names, strict=True):
                program.attach_tracepoint(name, category, event)
                self.attached.append(f"{category}:{event}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._tls.clear()  # the program's close ends every attachment
            if self._ring is not None:
                self._ring.close()
                self._ring = None
            if self._program is not None:
                self._program.close()
                self._program = None

    def __enter__(self) -> NetworkObserver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- processes -----------------------------------------------------------
    def add_pid(self, pid: int) -> None:
        """Watch ``pid`` (its fds classified first, from /proc)."""
        for fd, kind in classify_fds(pid, self.hostfs).items():
            self._fd_map[(pid << 32) | fd] = kind
        self._pid_map[pid] = 1
        if pid not in self._pids:
            self._add_to_slot(pid, 1)
        self._pids.add(pid)
        # fds made meanwhile (the kernel may know them already: those are kept)
        for fd, kind in classify_fds(pid, self.hostfs).items():
            key = (pid << 32) | fd
            if self._fd_map.get(key) is None:
                self._fd_map[key] = kind
        self.attach_tls(pid)

    def attach_tls(self, pid: int) -> list[TlsAttachment]:
        """Probe the OpenSSL libraries ``pid`` maps now that are not probed yet (once per
        process and library: call again to pick up a library loaded later). Failures are
        logged once per library and counted, never raised. Returns what ``pid`` has."""
        program = self._program
        if not self.tls or program is None or pid not in self._pids:
            return []
        known = self._tls.setdefault(pid, {})
        try:
            libraries = find_tls_libraries(pid, self.hostfs)
        except ProcessGone:
            return list(known.values())
        except TlsLookupError as exc:
            self._user["tls_attach_failed"] += 1
            self._log_once("lookup", str(pid), "TLS libraries of process %d: %s", pid, exc)
            return list(known.values())
        for library in libraries:
            if library.path in known:
                continue
            entry = known[library.path] = TlsAttachment(pid, library)
            if not library.supported:
                entry.error = f"OpenSSL {library.version or '(unknown version)'} not supported"
                self._user["tls_unsupported_libraries"] += 1
                self._log_once(
                    "version", library.path, "%s (process %d): %s: no TLS plaintext",
                    library.path, pid, entry.error,
                )  # fmt: skip
                continue
            try:
                for symbol, offset in library.offsets.items():
                    path = library.open_path
                    entry.attachments.append(
                        program.attach_uprobe(PROBED[symbol], path, offset, pid)
                    )
                    entry.attachments.append(
                        program.attach_uprobe(RETURN_FUNCTION, path, offset, pid, retprobe=True)
                    )
            except BPFLoadError as exc:
                for attachment in entry.attachments:
                    program.detach(attachment)
                entry.attachments.clear()
                entry.error = str(exc)
                self._user["tls_attach_failed"] += 1
                self._log_once(
                    "attach", library.path, "no TLS plaintext from %s (process %d): %s",
                    library.path, pid, exc,
                )  # fmt: skip
                continue
            self._user["tls_libraries_attached"] += 1
            self._user["tls_uprobes_attached"] += len(entry.attachments)
            log.debug(
                "TLS uprobes on %s (OpenSSL %s) for process %d: %s",
                library.path, library.version, pid, ", ".join(library.offsets),
            )  # fmt: skip
        return list(known.values())

    def refresh_tls(self) -> None:
        """:meth:`attach_tls` for every watched process (libraries loaded since)."""
        for pid in list(self._pids):
            self.attach_tls(pid)

    def tls_attachments(self) -> list[TlsAttachment]:
        """Every (process, OpenSSL) seen, with its probes or why it has none."""
        return [entry for known in self._tls.values() for entry in known.values()]

    def _detach_tls(self, pid: int) -> None:
        known = self._tls.pop(pid, {})
        program = self._program
        if program is not None:
            for entry in known.values():
                for attachment in entry.attachments:
                    program.detach(attachment)

    def _log_once(self, what: str, subject: str, message: str, *args: object) -> None:
        if (what, subject) not in self._tls_logged:
            self._tls_logged.add((what, subject))
            log.warning(message, *args)

    def _add_to_slot(self, pid: int, change: int) -> None:
        """The kernel's first test (``pid_slots``): how many watched pids share a slot."""
        slot = pid & (self._pid_slot_count - 1)
        self._pid_slots[slot] = max(0, int(self._pid_slots[slot]) + change)

    def remove_pid(self, pid: int) -> None:
        """Stop watching ``pid`` and forget its fds and connections (no close events)."""
        if pid in self._pids:
            self._add_to_slot(pid, -1)
        with contextlib.suppress(KeyError):
            del self._pid_map[pid]
        self._pids.discard(pid)
        self._detach_tls(pid)
        for m in (self._fd_map, self._conn_map, self._ssl_calls):
            for key in list(m):
                if key.value >> 32 == pid:
                    with contextlib.suppress(KeyError):
                        del m[key]
        for key in list(self._ssl_conns):
            if key.pid == pid:
                with contextlib.suppress(KeyError):
                    del self._ssl_conns[key]

    # -- reading -------------------------------------------------------------
    def poll(self, timeout_ms: int, max_events: int | None = None) -> list[NetworkObserver.Event]:
        """Events ready within ``timeout_ms``, in order, at most ``max_events`` records;
        fd questions answered here."""
        ring = self._ring
        if ring is None:
            raise RuntimeError("the network observer is not started")
        out: list[NetworkObserver.Event] = []
        ring.poll(timeout_ms, lambda record: self._decode(record, out), max_events)
        return out

    def connections(self) -> list[ConnectionStats]:
        """Every connection the kernel has a record of now."""
        found = []
        decode = self._conn.packer.unpack
        tables: dict[int, SocketTable] = {}
        for _, leaf in self._conn_map.items():
            stats = self._stats_of(decode(bytes(leaf)), 0, tables)
            found.append(stats)
        # kept local addresses of connections the kernel no longer has (a lost close event)
        live = {stats.conn_id for stats in found}
        self._locals = {c: a for c, a in self._locals.items() if c in live}
        return found

    def counters(self) -> dict[str, int]:
        """Kernel counters (summed over CPUs) and user-space ones, by name."""
        values = {}
        for position, counter in enumerate(self._kernel_counters):
            per_cpu = self._stats.get(position) or [0]
            values[counter.name] = sum(per_cpu)
        values.update(self._user)
        return values

    @property
    def loss_counters(self) -> tuple[str, ...]:
        return tuple(c.name for c in (*self._kernel_counters, *USER_COUNTERS) if c.loss)

    # -- decoding ------------------------------------------------------------
    def _decode(self, record: memoryview, out: list[NetworkObserver.Event]) -> None:
        kind = int.from_bytes(record[:4], "little")
        try:
            if kind == self._kinds["EVENT_DATA"]:
                out.append(self._data_event(record))
            elif kind == self._kinds["EVENT_CLOSE"]:
                out.append(self._close_event(record))
            elif kind == self._kinds["EVENT_RETRANSMIT"]:
                out.append(self._retransmit_event(record))
            elif kind == self._kinds["EVENT_FD_UNKNOWN"]:
                values = self._fd.packer.unpack_from(record)
                self._resolve_fd(values[self._fd.index["pid"]], values[self._fd.index["fd"]])
            else:
                self._user["undecodable_events"] += 1
        except struct.error:
            self._user["undecodable_events"] += 1

    def _data_event(self, record: memoryview) -> DataSyscall:
        d = self._data
        v = d.packer.unpack_from(record)
        i = d.index
        captured = v[i["captured"]]
        return DataSyscall(
            conn_id=v[i["conn_id"]],
            pid=v[i["pid"]],
            fd=v[i["fd"]],
            tid=v[i["tid"]],
            data_id=v[i["data_id"]],
            syscall=self._call_names.get(v[i["call"]], str(v[i["call"]])),
            direction=Direction(v[i["direction"]]),
            start_ns=v[i["start_ns"]],
            end_ns=v[i["end_ns"]],
            size=v[i["size"]],
            payload=bytes(record[d.packer.size : d.packer.size + captured]),
            ssl=bool(v[i["ssl"]]),
            rtt_count=v[i["rtt_count"]],
            rtt_sum_us=v[i["rtt_sum_us"]],
        )

    def _close_event(self, record: memoryview) -> ConnectionClosed:
        c = self._close
        v = c.packer.unpack_from(record)
        stats = self._stats_of(v, c.index["conn.conn_id"])
        stats.close_ns = v[c.index["close_ns"]]
        self._locals.pop(stats.conn_id, None)
        return ConnectionClosed(stats, v[c.index["closed_at"]])

    def _retransmit_event(self, record: memoryview) -> Retransmit:
        r = self._retransmit
        v = r.packer.unpack_from(record)
        i = r.index
        local = _address(v[i["local.family"]], v[i["local.addr"]], v[i["local.port"]])
        remote = _address(v[i["remote.family"]], v[i["remote.addr"]], v[i["remote.port"]])
        return Retransmit(local or SocketAddress("", 0), remote or SocketAddress("", 0))

    def _stats_of(
        self, v: tuple[Any, ...], base: int, tables: dict[int, SocketTable] | None = None
    ) -> ConnectionStats:
        """A conn_rec unpacked at position ``base`` of ``v`` (``tables``: see _local_of)."""
        i = self._conn.index
        n = self._buckets

        def at(name: str) -> Any:
            return v[base + i[name]]

        conn_id, pid, fd = at("conn_id"), at("pid"), at("fd")
        local = _address(at("local.family"), at("local.addr"), at("local.port"))
        if local is None or local.port == 0:
            local = self._local_of(conn_id, pid, fd, tables) or local
        w, r, t = base + i["write_hist[0]"], base + i["read_hist[0]"], base + i["rtt_hist[0]"]
        return ConnectionStats(
            conn_id=conn_id,
            pid=pid,
            fd=fd,
            role=Role(at("role")),
            protocol=Protocol(at("protocol")),
            ssl=bool(at("ssl")),
            remote=_address(at("remote.family"), at("remote.addr"), at("remote.port")),
            local=local,
            connect_ns=at("connect_ns"),
            write_count=at("write_count"),
            write_bytes=at("write_bytes"),
            write_ns=at("write_ns"),
            read_count=at("read_count"),
            read_bytes=at("read_bytes"),
            read_ns=at("read_ns"),
            rtt_count=at("rtt_count"),
            rtt_sum_us=at("rtt_sum_us"),
            write_hist=v[w : w + n],
            read_hist=v[r : r + n],
            rtt_hist=v[t : t + n],
        )

    def _local_of(
        self, conn_id: int, pid: int, fd: int, tables: dict[int, SocketTable] | None
    ) -> SocketAddress | None:
        """The local address of an open connection, from /proc (kept per connection);
        ``tables`` (one read per process for a whole :meth:`connections`) None: the kept
        one only, no I/O (events, read in the hot path)."""
        known = self._locals.get(conn_id)
        if known is not None or tables is None:
            return known
        table = tables.get(pid)
        if table is None:
            table = tables[pid] = SocketTable(self.hostfs, pid)
        found = table.addresses(fd)
        if found is not None:
            self._locals[conn_id] = found[0]
            return found[0]
        return None

    def _resolve_fd(self, pid: int, fd: int) -> None:
        key = (pid << 32) | fd
        if pid not in self._pids:
            self._forget(key)
            return
        inode = socket_inode(self.hostfs, pid, fd)
        if inode is None and not fd_exists(self.hostfs, pid, fd):
            self._user["fds_gone"] += 1
            self._forget(key)
            return
        inet = inode is not None and SocketTable(self.hostfs, pid).is_inet(inode)
        self._user["fds_resolved_inet" if inet else "fds_resolved_other"] += 1
        if self._fd_map.get(key) != self._fd_kinds["FD_PENDING"]:
            return  # closed and reused meanwhile: the kernel knows better (socket, accept)
        self._fd_map[key] = self._fd_kinds["FD_INET" if inet else "FD_OTHER"]

    def _forget(self, key: int) -> None:
        with contextlib.suppress(KeyError):
            del self._fd_map[key]


# -- addresses and fds ---------------------------------------------------------


def _address(family: int, raw: bytes, port: int) -> SocketAddress | None:
    if family == _AF_INET:
        return SocketAddress(str(ipaddress.IPv4Address(raw[:4])), port)
    if family == _AF_INET6:
        address = ipaddress.IPv6Address(raw[:16])
        mapped = address.ipv4_mapped
        return SocketAddress(str(mapped) if mapped is not None else str(address), port)
    return None


def classify_fds(pid: int, hostfs: HostFS | None = None) -> dict[int, int]:
    """fd -> enum net_fd_kind for every open fd of ``pid`` (empty if it is gone)."""
    hostfs = hostfs or HostFS()
    kinds = _enum("net_fd_kind")
    table = SocketTable(hostfs, pid)  # read only if some fd is a socket
    out = {}
    for fd in open_fds(hostfs, pid):
        inode = socket_inode(hostfs, pid, fd)
        out[fd] = kinds["FD_INET" if inode is not None and table.is_inet(inode) else "FD_OTHER"]
    return out
