"""Whether the backend is reachable, logged only when that changes."""

from __future__ import annotations

import enum
import logging
import threading

log = logging.getLogger(__name__)


class Connectivity(enum.Enum):
    UNKNOWN = "unknown"  # nothing tried yet
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class ConnectionState:
    """Connected / disconnected, fed by call results and channel connectivity.

    ``epoch`` counts the transitions to connected: a reader that remembers it
    can tell that the connection was lost and re-established in between (the
    backend may have restarted and forgotten what it was told), even if no call
    of its own failed.
    """

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self._lock = threading.Lock()
        self._state = Connectivity.UNKNOWN
        self._epoch = 0

    @property
    def state(self) -> Connectivity:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is Connectivity.CONNECTED

    @property
    def epoch(self) -> int:
        return self._epoch

    def mark_connected(self) -> None:
        with self._lock:
            if self._state is Connectivity.CONNECTED:
                return
            self._state = Connectivity.CONNECTED
            self._epoch += 1
        log.info("backend %s connected", self.addr)

    def mark_disconnected(self, reason: str) -> None:
        with self._lock:
            if self._state is Connectivity.DISCONNECTED:
                return
            self._state = Connectivity.DISCONNECTED
        log.warning("backend %s disconnected: %s (retrying in the background)", self.addr, reason)
