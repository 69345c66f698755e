"""Keeps the backend's view of our processes current (spec 4.2, 4.3).

Each heartbeat gets the full current set from discovery:

* new processes go out with ``reportProcesses``; the reply's ids register them,
  and a sent process without a match in the reply is *ignored* (not re-sent
  while it stays alive);
* registered processes get a ``keepAlive``, except every
  ``properties_report_period``-th heartbeat, when they are all re-reported;
* processes gone from the set are dropped locally; nothing is sent;
* a failed ``reportProcesses`` changes no status: the same processes go out on
  the next heartbeat.

Lost connection: a fresh OAP does not know our ids, so after any failed call,
or when the connection was lost in between (the client's state is not
connected, or its ``connection_epoch`` moved since the last good heartbeat:
the channel reconnected, e.g. to a restarted backend), the next heartbeat
re-reports *every* current process, ignored ones included, instead of pinging.
Re-reporting is harmless to a backend that did remember. A restart hidden
behind a proxy that keeps our connection open is not seen; the OAP then
re-creates processes from keepAlive pings, and the periodic re-report restores
the properties.
"""

from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass

from rover.backend.client import BackendClient
from rover.backend.errors import BackendUnavailable
from rover.backend.process_messages import ProcessKey
from rover.process.model import DiscoveredProcess

log = logging.getLogger(__name__)


class ReportStatus(enum.Enum):
    NOT_REPORTED = "not reported"
    REGISTERED = "registered"
    IGNORED = "ignored"  # sent, but the backend returned no id for it


@dataclass
class _Tracked:
    process: DiscoveredProcess
    status: ReportStatus = ReportStatus.NOT_REPORTED
    process_id: str = ""


class ProcessReporter:
    """Reports discovered processes and remembers the ids the backend gave them. Thread-safe."""

    def __init__(
        self, client: BackendClient, agent_id: str, properties_report_period: int = 10
    ) -> None:
        if properties_report_period < 1:
            raise ValueError(
                f"properties_report_period must be >= 1, got {properties_report_period}"
            )
        self.client = client
        self.agent_id = agent_id
        self.properties_report_period = properties_report_period
        self._lock = threading.Lock()  # guards _tracked
        self._heartbeat_lock = threading.Lock()  # one heartbeat at a time
        self._tracked: dict[ProcessKey, _Tracked] = {}
        self._heartbeats = 0
        self._lost = False
        self._epoch: int | None = None

    def heartbeat(self, current: list[DiscoveredProcess]) -> None:
        """One heartbeat with the full current set of discovered processes.

        Never raises for backend failures: they are logged by the client's
        connection state and retried on the next heartbeat.
        """
        with self._heartbeat_lock:
            to_report, to_ping, full = self._plan(current)
            epoch_before = self.client.connection_epoch
            if to_report and not self._report(to_report):
                return
            if to_ping and not self._ping(to_ping):
                return
            self._lost = False
            # after a full re-report the reconnect it caused is already dealt with
            self._epoch = self.client.connection_epoch if full else epoch_before

    def registered(self) -> dict[str, DiscoveredProcess]:
        """processId -> process of every registered process.

        The OAP's id has no pid in it, so two local processes with the same
        process name in the same instance share an id; the first one is returned.
        """
        with self._lock:
            result: dict[str, DiscoveredProcess] = {}
            for tracked in self._tracked.values():
                if tracked.status is ReportStatus.REGISTERED:
                    result.setdefault(tracked.process_id, tracked.process)
            return result

    def process_id_of(self, key: ProcessKey) -> str | None:
        """The backend's id of a process by ``DiscoveredProcess.key``, None if not registered."""
        with self._lock:
            tracked = self._tracked.get(key)
            if tracked is None or tracked.status is not ReportStatus.REGISTERED:
                return None
            return tracked.process_id

    def status_of(self, key: ProcessKey) -> ReportStatus | None:
        with self._lock:
            tracked = self._tracked.get(key)
            return tracked.status if tracked else None

    # -- one heartbeat ----------------------------------------------------------------

    def _plan(
        self, current: list[DiscoveredProcess]
    ) -> tuple[list[DiscoveredProcess], list[DiscoveredProcess], bool]:
        """Sync with ``current``; returns (to report, to ping, whether everything is re-sent)."""
        with self._lock:
            alive = {p.key: p for p in current}
            for key in list(self._tracked):
                if key not in alive:
                    del self._tracked[key]  # exited: the backend just stops hearing about it
            for key, process in alive.items():
                tracked = self._tracked.get(key)
                if tracked is None:
                    self._tracked[key] = _Tracked(process)
                else:
                    tracked.process = process  # properties may have changed
            if not self._tracked:
                return [], [], False

            self._heartbeats += 1
            full = (
                self._lost
                or not self.client.connected
                or (self._epoch is not None and self.client.connection_epoch != self._epoch)
            )
            periodic = self._heartbeats % self.properties_report_period == 0
            to_report: list[DiscoveredProcess] = []
            to_ping: list[DiscoveredProcess] = []
            for tracked in self._tracked.values():
                status = tracked.status
                if (
                    full
                    or status is ReportStatus.NOT_REPORTED
                    or (periodic and status is ReportStatus.REGISTERED)
                ):
                    to_report.append(tracked.process)
                elif status is ReportStatus.REGISTERED:
                    to_ping.append(tracked.process)
            return to_report, to_ping, full

    def _report(self, processes: list[DiscoveredProcess]) -> bool:
        try:
            ids = self.client.report_processes(processes, self.agent_id)
        except BackendUnavailable as e:
            self._lost = True
            log.debug("reportProcesses of %d processes failed: %s", len(processes), e)
            return False
        with self._lock:
            for process in processes:
                tracked = self._tracked.get(process.key)
                if tracked is None:
                    continue  # cannot happen while heartbeats are serialized
                process_id = ids.get(process.key)
                if process_id is not None:
                    tracked.status, tracked.process_id = ReportStatus.REGISTERED, process_id
                else:
                    if tracked.status is not ReportStatus.IGNORED:
                        log.info(
                            "backend ignored process %d (%s/%s); not re-sending it while alive",
                            process.pid,
                            process.entity.service_name,
                            process.entity.process_name,
                        )
                    tracked.status, tracked.process_id = ReportStatus.IGNORED, ""
        return True

    def _ping(self, processes: list[DiscoveredProcess]) -> bool:
        try:
            self.client.keep_alive(processes, self.agent_id)
        except BackendUnavailable as e:
            self._lost = True
            log.debug("keepAlive of %d processes failed: %s", len(processes), e)
            return False
        return True
