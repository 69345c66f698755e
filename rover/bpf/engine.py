"""One loaded BPF program per profiling type, serving any number of processes.

The pid filter is a map updated at run time, so adding or removing a process
never recompiles. :meth:`ProfilerEngine.drain` returns the raw per-interval
counts (stack addresses, not names) and the counters of everything dropped.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import logging
import threading
from dataclasses import dataclass, field

from rover.bpf.counts import DoubleBufferedCounts, StackTraces, forget_exited_switch_outs
from rover.bpf.headers import KernelHeaders
from rover.bpf.loader import BPFLoadError, attach_cpu_clock, load_program
from rover.profile import ProfileType

log = logging.getLogger(__name__)

# Order matches enum rover_stat in bpf/profile_common.h.
STAT_NAMES = (
    "events",
    "user_stack_collisions",
    "kernel_stack_collisions",
    "user_stack_errors",
    "kernel_stack_errors",
    "counts_map_full",
    "start_map_full",
    "no_active_map",
)

_PROGRAM = {ProfileType.ON_CPU: "oncpu", ProfileType.OFF_CPU: "offcpu"}


@dataclass(frozen=True)
class EngineConfig:
    frequency: int = 99  # on-CPU samples per second per CPU
    max_pids: int = 4096
    max_stacks: int = 16384  # distinct (tgid, user, kernel) keys per interval
    stack_map_size: int = 16384  # distinct stacks kept in the kernel
    max_threads: int = 65536  # off-CPU: threads switched out at once
    stack_gc_ratio: float = 0.5  # collect unreferenced stacks above this fill

    def defines(self) -> dict[str, int]:
        return {
            "MAX_PIDS": self.max_pids,
            "MAX_STACKS": self.max_stacks,
            "STACK_MAP_SIZE": self.stack_map_size,
            "MAX_THREADS": self.max_threads,
        }


@dataclass(frozen=True, slots=True)
class RawStack:
    """Counts for one (tgid, user stack, kernel stack) over one interval.

    ``user``/``kernel`` are addresses leaf first, empty when not captured.
    ``values``: on-CPU (samples,), off-CPU (switches, nanoseconds).
    """

    tgid: int
    user: tuple[int, ...]
    kernel: tuple[int, ...]
    values: tuple[int, ...]


@dataclass
class DrainResult:
    stacks: list[RawStack] = field(default_factory=list)
    # deltas since the previous drain, by STAT_NAMES plus "stacks_unresolved"
    counters: dict[str, int] = field(default_factory=dict)


class ProfilerEngine:
    """Loads ``bpf/<type>.c``, attaches it, and drains its maps."""

    def __init__(
        self, profile_type: ProfileType, headers: KernelHeaders, config: EngineConfig | None = None
    ) -> None:
        self.type = profile_type
        self.config = config or EngineConfig()
        self._lock = threading.Lock()
        self._bpf = load_program(_PROGRAM[profile_type], headers, self.config.defines())
        self._stats_seen = [0] * len(STAT_NAMES)
        self._pids: set[int] = set()
        # For metrics: keys drained so far, and how full the last drained counts map was
        # (near 1.0 means events are being dropped as counts_map_full).
        self.stacks_drained = 0
        self.last_counts_fill = 0.0
        try:
            self._counts = DoubleBufferedCounts(self._bpf)
            self._stacks = StackTraces(
                self._bpf[b"stacks"], self.config.stack_map_size, self.config.stack_gc_ratio
            )
        except BaseException:
            self.close()
            raise
        self._attach()

    # -- lifecycle -------------------------------------------------------
    def _attach(self) -> None:
        if self.type is ProfileType.ON_CPU:
            try:
                attach_cpu_clock(self._bpf, b"on_cpu_sample", self.config.frequency)
            except BPFLoadError:
                self.close()
                raise
        # off-CPU: TRACEPOINT_PROBE is attached by bcc when the program loads.

    def close(self) -> None:
        with self._lock:
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None

    @property
    def closed(self) -> bool:
        return self._bpf is None

    # -- pid filter ------------------------------------------------------
    def add_pid(self, pid: int) -> None:
        with self._lock:
            self._bpf[b"pids"][ct.c_uint32(pid)] = ct.c_uint8(1)
            self._pids.add(pid)

    def remove_pid(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)
            with contextlib.suppress(KeyError):
                del self._bpf[b"pids"][ct.c_uint32(pid)]

    @property
    def pids(self) -> frozenset[int]:
        return frozenset(self._pids)

    # -- reading ---------------------------------------------------------
    def events(self) -> int:
        """Events counted so far (cheap; for progress display)."""
        with self._lock:
            return self._read_stats()[0]

    def drain(self) -> DrainResult:
        """Everything counted since the previous drain, exactly once."""
        with self._lock:
            if self._bpf is None:
                return DrainResult()
            items = self._counts.take()
            self.stacks_drained += len(items)
            self.last_counts_fill = len(items) / self.config.max_stacks
            result = DrainResult(counters=self._stat_deltas())
            resolved: dict[int, tuple[int, ...] | None] = {}
            unresolved = 0
            for key, value in items:
                user = self._stacks.resolve(key.user_stack_id, resolved)
                kernel = self._stacks.resolve(key.kernel_stack_id, resolved)
                if user is None or kernel is None:
                    unresolved += 1
                values = _values(self.type, value)
                result.stacks.append(RawStack(key.tgid, user or (), kernel or (), values))
            result.counters["stacks_unresolved"] = unresolved
            self._stacks.collect_if_full(self._referenced_stacks)
            return result

    def _read_stats(self) -> list[int]:
        table = self._bpf[b"stats"]
        return [sum(table[ct.c_int(i)]) for i in range(len(STAT_NAMES))]

    def _stat_deltas(self) -> dict[str, int]:
        now = self._read_stats()
        deltas = {n: now[i] - self._stats_seen[i] for i, n in enumerate(STAT_NAMES)}
        self._stats_seen = now
        return deltas

    def _referenced_stacks(self) -> set[int]:
        """Stack ids in the active counts map and (off-CPU) of threads switched out now."""
        referenced: set[int] = set()
        for key in self._counts.active_keys():
            referenced.update((key.user_stack_id, key.kernel_stack_id))
        if self.type is ProfileType.OFF_CPU:
            for rec in self._bpf[b"start"].values():
                referenced.update((rec.user_stack_id, rec.kernel_stack_id))
        return referenced

    def forget_exited_threads(self) -> int:
        """Off-CPU: drop switch-out records of threads that exited while away."""
        if self.type is not ProfileType.OFF_CPU:
            return 0
        with self._lock:
            return forget_exited_switch_outs(self._bpf[b"start"])


def _values(profile_type: ProfileType, value) -> tuple[int, ...]:
    if profile_type is ProfileType.ON_CPU:
        return (value if isinstance(value, int) else value.value,)
    return (value.switches, value.ns)


__all__ = ["BPFLoadError", "DrainResult", "EngineConfig", "ProfilerEngine", "RawStack", "errno"]
