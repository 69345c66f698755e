"""A profiling run over a set of processes on one engine, with periodic flushes."""

from __future__ import annotations

import logging
import time

from rover.bpf.engine import ProfilerEngine
from rover.hostfs import HostFS, ProcessGone
from rover.profile import ProcessInfo, Profile
from rover.symbols import Symbolizer
from rover.tasks.drained import profile_from_drain

log = logging.getLogger(__name__)

TABLES_BUDGET_S = 10.0  # a run waits this long for its targets' unwind tables, at most


class ProfilingRunner:
    """Profiles ``pids`` with ``engine``; :meth:`flush` returns what arrived since the last one.

    The runner adds and removes its pids in the engine's filter; each flush
    drains the engine, so for now one runner drives one engine.
    """

    def __init__(
        self,
        engine: ProfilerEngine,
        symbolizer: Symbolizer,
        pids: list[int],
        hostfs: HostFS | None = None,
    ) -> None:
        self.engine = engine
        self.symbolizer = symbolizer
        self.hostfs = hostfs or HostFS()
        self.pids = frozenset(pids)
        self.processes: dict[int, ProcessInfo] = {}
        self._started_ns = 0
        self._last_flush_ns = 0

    def start(self) -> None:
        """Read every process's mappings, then add them to the filter.

        Raises :class:`ProcessGone` for a pid that does not exist.
        """
        for pid in sorted(self.pids):
            self.symbolizer.prepare(pid)
            self.processes[pid] = ProcessInfo(
                pid=pid, name=self.hostfs.comm(pid), cmdline=" ".join(self.hostfs.cmdline(pid))
            )
        for pid in self.pids:
            self.engine.add_pid(pid)
        if not self.engine.settle(TABLES_BUDGET_S):
            log.warning(
                "unwind tables still loading after %.0fs: the first stacks may end in "
                "[unwind tables loading]",
                TABLES_BUDGET_S,
            )
        self._started_ns = self._last_flush_ns = time.time_ns()

    def count_until(self, deadline_ns: int) -> None:
        """Have the kernel count nothing after ``deadline_ns`` (CLOCK_MONOTONIC), so the
        profile's window is exact even when the last drain comes late."""
        for pid in self.pids:
            self.engine.set_deadline(pid, deadline_ns)

    def alive(self) -> list[int]:
        return [pid for pid in self.pids if self.hostfs.is_running(pid)]

    def refresh_mappings(self) -> None:
        """Re-read maps of live processes (new libraries) so exits later still resolve."""
        for pid in self.alive():
            try:
                self.symbolizer.prepare(pid)
            except ProcessGone:
                log.info("process %d exited", pid)

    def flush(self) -> Profile:
        now = time.time_ns()
        drained = self.engine.drain()
        profile = profile_from_drain(
            drained,
            self.engine.type,
            self.engine.config.frequency,
            self.symbolizer,
            self.processes,
            start_time_ns=self._last_flush_ns,
            duration_ns=now - self._last_flush_ns,
        )
        self.engine.forget_exited_threads()
        self._last_flush_ns = now
        return profile

    def stop(self) -> Profile:
        """Remove the pids from the filter and return the final flush."""
        for pid in self.pids:
            self.engine.remove_pid(pid)
        final = self.flush()
        for pid in self.pids:
            self.symbolizer.forget(pid)
        return final
