"""A profiling run over a set of processes on one engine, with periodic flushes."""

from __future__ import annotations

import logging
import time

from rover.bpf.engine import ProfilerEngine
from rover.hostfs import HostFS, ProcessGone
from rover.profile import ProcessInfo, Profile
from rover.symbols import Symbolizer
from rover.tasks.stacks import add_raw_stacks

log = logging.getLogger(__name__)


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

    @property
    def period_ns(self) -> int:
        return 1_000_000_000 // max(1, self.engine.config.frequency)

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
        self._started_ns = self._last_flush_ns = time.time_ns()

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
        profile = Profile.new(
            self.engine.type,
            start_time_ns=self._last_flush_ns,
            duration_ns=now - self._last_flush_ns,
            period_ns=self.period_ns if self.engine.type.value == "on-cpu" else 0,
            processes=dict(self.processes),
        )
        for name, n in drained.counters.items():
            if n and name != "events":
                profile.count(name, n)
        add_raw_stacks(profile, drained.stacks, self.symbolizer, self.pids)
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
