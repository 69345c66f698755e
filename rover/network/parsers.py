"""The HTTP/1 parser of each connection, for whoever reads a network observer's events
(NETWORK tasks' monitor, continuous profiling's HTTP monitors).

A parser is made at a connection's first data event and closed with the connection.
Bounded: at most ``max_connections`` parsers (more are counted, not parsed), and one not
fed for ``idle_s`` is dropped (its close event was lost: the ring buffer was full, or
the process exited without close()). The parsers' own counters (skips, resyncs) are
summed into :attr:`counters` when a parser goes and at :meth:`collect_counters`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

from rover.network.model import DataSyscall, HttpExchange

IDLE_S = 300.0  # a parser not fed for this long is dropped


class ConnectionParser(Protocol):
    counters: dict[str, int]

    def feed(self, syscall: DataSyscall) -> list[HttpExchange]: ...
    def close(self) -> list[HttpExchange]: ...


class ConnectionParsers:
    def __init__(
        self,
        make_parser: Callable[[int, int], ConnectionParser],
        max_connections: int,
        idle_s: float = IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.make_parser = make_parser
        self.max_connections = max_connections
        self.idle_s = idle_s
        self.clock = clock
        # its own two (present from the start) and the parsers' own, summed
        self.counters: dict[str, int] = defaultdict(
            int, http_connections_untracked=0, http_parsers_expired=0
        )
        self._parsers: dict[int, ConnectionParser] = {}
        self._pids: dict[int, int] = {}  # conn id -> pid
        self._fed: dict[int, float] = {}  # conn id -> when last fed (clock)

    def feed(self, syscall: DataSyscall) -> list[HttpExchange]:
        """The exchanges this call completed on its connection."""
        conn_id = syscall.conn_id
        parser = self._parsers.get(conn_id)
        if parser is None:
            if len(self._parsers) >= self.max_connections:
                self.counters["http_connections_untracked"] += 1
                return []
            parser = self._parsers[conn_id] = self.make_parser(conn_id, syscall.pid)
            self._pids[conn_id] = syscall.pid
        self._fed[conn_id] = self.clock()
        return parser.feed(syscall)

    def close(self, conn_id: int) -> list[HttpExchange]:
        """The connection closed: what its parser still completes; the parser goes."""
        parser = self._parsers.get(conn_id)
        if parser is None:
            return []
        exchanges = parser.close()
        self._drop(conn_id)
        return exchanges

    def forget_pid(self, pid: int, close: bool = False) -> None:
        """Drop the parsers of ``pid``'s connections (``close``: closed first, so that what
        each had pending is counted as such)."""
        for conn_id in [c for c, p in self._pids.items() if p == pid]:
            if close:
                self._parsers[conn_id].close()
            self._drop(conn_id)

    def expire(self) -> None:
        """Drop the parsers not fed for ``idle_s``."""
        oldest = self.clock() - self.idle_s
        for conn_id in [c for c, fed in self._fed.items() if fed < oldest]:
            self.counters["http_parsers_expired"] += 1
            self._drop(conn_id)

    def collect_counters(self) -> None:
        """Sum the live parsers' counters into :attr:`counters` (they restart at 0)."""
        for parser in self._parsers.values():
            self._collect(parser)

    def clear(self) -> None:
        self._parsers.clear()
        self._pids.clear()
        self._fed.clear()

    def __len__(self) -> int:
        return len(self._parsers)

    def _drop(self, conn_id: int) -> None:
        parser = self._parsers.pop(conn_id)
        del self._pids[conn_id], self._fed[conn_id]
        self._collect(parser)

    def _collect(self, parser: ConnectionParser) -> None:
        for name, n in parser.counters.items():
            if n:
                self.counters[name] += n
                parser.counters[name] = 0
