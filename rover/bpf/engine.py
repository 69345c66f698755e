"""One loaded BPF program per profiling type, serving any number of processes.

The pid filter is a map updated at run time, so adding or removing a process
never recompiles. Each process is unwound one of two ways, chosen when it is
added (``choose``): by frame pointers (the kernel's stack walker) or by CFI (the
walk of ``bpf/cfi_walk.h`` over rows that ``tables`` loads into the kernel).
Both are counted in the kernel; :meth:`ProfilerEngine.drain` returns the raw
per-interval counts (stack addresses, not names), the counters of everything
lost, and counters that inform (frames by kind, events).

Every engine has the surface of :class:`Engine`; the counters it can report are
named by the programs' own header (``rover.bpf.contract``).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from rover.bpf.contract import header
from rover.bpf.counts import DoubleBufferedCounts, StackMap, forget_exited_switch_outs
from rover.bpf.headers import KernelHeaders
from rover.bpf.loader import BPFLoadError
from rover.bpf.program import LoadedProgram, ProgramSpec, load_program
from rover.profile import ProfileType

log = logging.getLogger(__name__)

_COMMON = header("profile_common.h")
_COUNTERS = _COMMON.counters("rover_stat")
STAT_NAMES: tuple[str, ...] = tuple(c.name for c in _COUNTERS)
LOSS_COUNTERS: tuple[str, ...] = (*(c.name for c in _COUNTERS if c.loss), "stacks_unresolved")
INFO_COUNTERS: tuple[str, ...] = tuple(c.name for c in _COUNTERS if not c.loss)

FRAME_POINTER = "frame_pointer"
CFI = "eh_frame"
_MODE = {FRAME_POINTER: 1, CFI: 2}  # enum unwind_mode
_PROGRAM = {ProfileType.ON_CPU: "oncpu", ProfileType.OFF_CPU: "offcpu"}
_ENTRY = {
    ProfileType.ON_CPU: "on_cpu_sample",
    ProfileType.OFF_CPU: "tracepoint__sched__sched_switch",
}
_KIND = {ProfileType.ON_CPU: "perf_event", ProfileType.OFF_CPU: "tracepoint"}
_WALK = {ProfileType.ON_CPU: "on_cpu_walk", ProfileType.OFF_CPU: "off_cpu_walk"}
_OFFCPU = header("offcpu.c")
_PID_SETTING = _COMMON.structs["pid_setting"]
_STACK_KEY = _COMMON.structs["stack_key"]
_USER_STACK = header("cfi_walk.h").structs["user_stack"]
_START_REC = _OFFCPU.structs["start_rec"]
_COUNT_VALUE: dict[ProfileType, type] = {
    ProfileType.ON_CPU: ct.c_uint64,
    ProfileType.OFF_CPU: _OFFCPU.structs["offcpu_val"],
}


@dataclass(frozen=True)
class EngineConfig:
    frequency: int = 99  # on-CPU samples per second per CPU
    max_pids: int = 4096
    max_stacks: int = 16384  # distinct (tgid, user, kernel) keys per interval
    stack_map_size: int = 16384  # distinct stacks kept in the kernel, of each kind
    max_threads: int = 65536  # off-CPU: threads switched out at once
    max_files: int = 4096  # files whose unwind rows the kernel holds at once
    stack_gc_ratio: float = 0.5  # collect unreferenced stacks above this fill

    def defines(self) -> dict[str, int]:
        return {
            "MAX_PIDS": self.max_pids,
            "MAX_STACKS": self.max_stacks,
            "STACK_MAP_SIZE": self.stack_map_size,
            "USER_STACKS": self.stack_map_size,
            "MAX_THREADS": self.max_threads,
            "MAX_FILES": self.max_files,
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
    # Deltas since the previous drain of what was lost, by the engine's loss_counters.
    counters: dict[str, int] = field(default_factory=dict)
    # Deltas of what only informs: events, frames walked by frame pointer...
    info: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class UnwindChoice:
    mode: str  # FRAME_POINTER or CFI
    reason: str


class WalkTables(Protocol):
    """What the CFI walk needs from user space: each process's mappings and its files'
    rows in the kernel (``rover.unwind.kernel_tables``)."""

    counters: dict[str, int]
    loss_counters: tuple[str, ...]

    def add(self, pid: int) -> None: ...
    def remove(self, pid: int) -> None: ...
    def settle(self, timeout: float) -> bool: ...
    def refresh_stale(self) -> int: ...
    def close(self) -> None: ...


class Engine(Protocol):
    """The surface every profiling engine has (tasks, the CLI and metrics use only this)."""

    type: ProfileType
    config: EngineConfig
    loss_counters: tuple[str, ...]
    stacks_drained: int
    last_counts_fill: float

    @property
    def pids(self) -> frozenset[int]: ...
    @property
    def closed(self) -> bool: ...
    def add_pid(self, pid: int, deadline_ns: int = 0) -> None: ...
    def set_deadline(self, pid: int, deadline_ns: int) -> None: ...
    def settle(self, timeout: float) -> bool: ...
    def remove_pid(self, pid: int) -> None: ...
    def events(self) -> int: ...
    def drain(self) -> DrainResult: ...
    def forget_exited_threads(self) -> int: ...
    def close(self) -> None: ...


class ProfilerEngine:
    """Loads ``bpf/<type>.c`` (compiled by the helper: ``rover.bpf.program``), attaches
    it, and drains its maps.

    ``choose`` picks each process's unwinding (default: frame pointers for all);
    ``tables`` makes the CFI walk's tables for the loaded program (None: no process
    is walked by CFI, and the walk program is not even loaded).
    """

    def __init__(
        self,
        profile_type: ProfileType,
        headers: KernelHeaders,
        config: EngineConfig | None = None,
        choose: Callable[[int], UnwindChoice] | None = None,
        tables: Callable[[LoadedProgram], WalkTables] | None = None,
    ) -> None:
        self.type = profile_type
        self.config = config or EngineConfig()
        self._choose = choose
        self._lock = threading.Lock()
        spec = ProgramSpec(
            _PROGRAM[profile_type],
            self.config.defines(),
            _ENTRY[profile_type],
            _KIND[profile_type],
            _WALK[profile_type] if tables is not None else None,
            "walk_progs" if tables is not None else None,
        )
        self._program: LoadedProgram | None = load_program(spec, headers)
        program = self._program
        self._stats_seen = [0] * len(STAT_NAMES)
        self._tables_seen: dict[str, int] = {}
        self._modes: dict[int, str] = {}
        self.choices: dict[int, UnwindChoice] = {}
        self._tables: WalkTables | None = None
        # For metrics: keys drained so far, and how full the last drained counts map was
        # (near 1.0 means events are being dropped as counts_map_full).
        self.stacks_drained = 0
        self.last_counts_fill = 0.0
        try:
            self._pids = program.map("pids", ct.c_uint32, _PID_SETTING)
            self._stats = program.map("stats", ct.c_int, ct.c_uint64)
            self._counts = DoubleBufferedCounts(program, _STACK_KEY, _COUNT_VALUE[profile_type])
            gc = self.config.stack_gc_ratio
            stacks = program.map("stacks", ct.c_int)
            stacks = program.map("stacks", ct.c_int, _stack_type(stacks.info.value_size))
            self._stacks = StackMap(stacks, self.config.stack_map_size, gc)
            user_stacks = program.map("user_stacks", ct.c_uint64, _USER_STACK)
            self._walked = StackMap(user_stacks, self.config.stack_map_size, gc, walked=True)
            self._start = (
                program.map("start", ct.c_uint32, _START_REC)
                if profile_type is ProfileType.OFF_CPU
                else None
            )
            if tables is not None and self._walk_loaded(program):
                self._tables = tables(program)
            self._attach(program)
        except BaseException:
            self.close()
            raise

    @property
    def loss_counters(self) -> tuple[str, ...]:
        extra = self._tables.loss_counters if self._tables is not None else ()
        return (*LOSS_COUNTERS, *extra)

    # -- lifecycle -------------------------------------------------------
    def _walk_loaded(self, program: LoadedProgram) -> bool:
        """Whether the walk program is in its tail-call slot; False (logged) when the
        kernel's verifier refused it: every process is then unwound by frame pointers."""
        refused = program.tail_call_refused
        if refused is not None:
            log.warning(
                "this kernel's verifier refuses the CFI stack walk (%s): every process is "
                "unwound by frame pointers",
                refused,
            )
        return refused is None

    def _attach(self, program: LoadedProgram) -> None:
        if self.type is ProfileType.ON_CPU:
            program.attach_cpu_clock(_ENTRY[self.type], self.config.frequency)
        else:
            program.attach_tracepoint(_ENTRY[self.type], "sched", "sched_switch")

    def close(self) -> None:
        with self._lock:
            if self._tables is not None:
                self._tables.close()
                self._tables = None
            if self._program is not None:
                self._program.close()
                self._program = None

    @property
    def closed(self) -> bool:
        return self._program is None

    @property
    def compiled_here(self) -> str | None:
        """Why the program was compiled in this process (None: by the compile helper)."""
        return self._program.compiled_here if self._program is not None else None

    @property
    def walks_cfi(self) -> bool:
        """Whether processes can be unwound by CFI here (the walk program loaded)."""
        return self._tables is not None

    # -- pid filter ------------------------------------------------------
    def add_pid(self, pid: int, deadline_ns: int = 0) -> None:
        """Profile ``pid`` until ``deadline_ns`` (CLOCK_MONOTONIC; 0: until removed).

        Raises ProcessGone when a process to walk by CFI does not exist.
        """
        choice = self._choose(pid) if self._choose is not None else None
        if choice is None or (choice.mode == CFI and self._tables is None):
            choice = UnwindChoice(FRAME_POINTER, choice.reason if choice else "frame pointers")
        self._check_open()
        tables = self._tables
        if tables is not None:  # outside the lock: loading tables may take a second
            if choice.mode == CFI:
                try:
                    tables.add(pid)
                except OSError as exc:  # ProcessGone is not one: it propagates
                    reason = f"its mappings are unreadable ({exc.strerror or exc})"
                    choice = UnwindChoice(FRAME_POINTER, reason)
            if choice.mode != CFI and self._modes.get(pid) == CFI:
                tables.remove(pid)
        with self._lock:
            self._check_open()
            self._pids[pid] = _PID_SETTING(mode=_MODE[choice.mode], deadline_ns=deadline_ns)
            self._modes[pid] = choice.mode
            self.choices[pid] = choice
        if self._choose is not None:
            log.info("process %d: %s unwinding (%s)", pid, choice.mode, choice.reason)

    def settle(self, timeout: float) -> bool:
        """Wait until the unwind tables of every process added are loaded, then drop what
        was counted meanwhile (stacks ending in ``[unwind tables loading]``), so the next
        drain holds only what came after; False (nothing dropped) when ``timeout`` passed
        first."""
        tables = self._tables
        if tables is None or not self._modes:
            return True
        if not tables.settle(timeout):
            return False
        with self._lock:
            if self._program is not None:
                self._counts.take()
                self._stat_deltas()
                self._table_deltas()
        return True

    def set_deadline(self, pid: int, deadline_ns: int) -> None:
        """Count nothing of ``pid`` after ``deadline_ns`` (CLOCK_MONOTONIC; 0: no end)."""
        with self._lock:
            self._check_open()
            if pid not in self._modes:
                return
            self._pids[pid] = _PID_SETTING(mode=_MODE[self._modes[pid]], deadline_ns=deadline_ns)

    def remove_pid(self, pid: int) -> None:
        with self._lock:
            mode = self._modes.pop(pid, None)
            self.choices.pop(pid, None)  # kept only while the process is profiled
            if self._program is None:
                return
            with contextlib.suppress(KeyError):
                del self._pids[pid]
            if mode == CFI and self._tables is not None:
                self._tables.remove(pid)

    @property
    def pids(self) -> frozenset[int]:
        return frozenset(self._modes)

    def _check_open(self) -> None:
        if self._program is None:
            raise BPFLoadError(f"the {self.type.value} engine is closed")

    # -- reading ---------------------------------------------------------
    def events(self) -> int:
        """Events counted so far (cheap; for progress display); 0 once closed."""
        with self._lock:
            if self._program is None:
                return 0
            return self._read_stats()[0]

    def drain(self) -> DrainResult:
        """Everything counted since the previous drain, exactly once."""
        with self._lock:
            if self._program is None:
                return DrainResult()
            items = self._counts.take()
            self.stacks_drained += len(items)
            self.last_counts_fill = len(items) / self.config.max_stacks
            deltas = self._stat_deltas()
            result = DrainResult(
                counters={n: deltas[n] for n in LOSS_COUNTERS if n in deltas},
                info={n: deltas[n] for n in INFO_COUNTERS},
            )
            resolved: dict[int, tuple[int, ...] | None] = {}
            walked: dict[int, tuple[int, ...] | None] = {}
            unresolved = 0
            for key, value in items:
                if key.user_hash:
                    user = self._walked.resolve(key.user_hash, walked)
                else:
                    user = self._stacks.resolve(key.user_stack_id, resolved)
                kernel = self._stacks.resolve(key.kernel_stack_id, resolved)
                if user is None or kernel is None:
                    unresolved += 1
                values = _values(self.type, value)
                result.stacks.append(RawStack(key.tgid, user or (), kernel or (), values))
            result.counters["stacks_unresolved"] = unresolved
            if self._tables is not None:
                self._tables.refresh_stale()
                result.counters.update(self._table_deltas())
            self._stacks.collect_if_full(self._referenced_stacks)
            self._walked.collect_if_full(self._referenced_walks)
            return result

    def _read_stats(self) -> list[int]:
        return [sum(self._stats[i]) for i in range(len(STAT_NAMES))]

    def _stat_deltas(self) -> dict[str, int]:
        now = self._read_stats()
        deltas = {n: now[i] - self._stats_seen[i] for i, n in enumerate(STAT_NAMES)}
        self._stats_seen = now
        return deltas

    def _table_deltas(self) -> dict[str, int]:
        deltas: dict[str, int] = {}
        tables = self._tables
        if tables is None:
            return deltas
        for name in tables.loss_counters:
            now = tables.counters.get(name, 0)
            deltas[name] = now - self._tables_seen.get(name, 0)
            self._tables_seen[name] = now
        return deltas

    def _start_records(self) -> list:
        return self._start.values() if self._start is not None else []

    def _referenced_stacks(self) -> set[int]:
        """Stack ids in the active counts map and (off-CPU) of threads switched out now."""
        referenced: set[int] = set()
        for key in self._counts.active_keys():
            referenced.update((key.user_stack_id, key.kernel_stack_id))
        for rec in self._start_records():
            referenced.update((rec.user_stack_id, rec.kernel_stack_id))
        return referenced

    def _referenced_walks(self) -> set[int]:
        referenced = {key.user_hash for key in self._counts.active_keys()}
        referenced.update(rec.user_hash for rec in self._start_records())
        return referenced

    def forget_exited_threads(self) -> int:
        """Off-CPU: drop switch-out records of threads that exited while away."""
        if self.type is not ProfileType.OFF_CPU:
            return 0
        with self._lock:
            if self._program is None or self._start is None:
                return 0
            return forget_exited_switch_outs(self._start)


def _stack_type(value_size: int) -> type:
    """A BPF_STACK_TRACE value: addresses, leaf first, 0 after the last."""
    return ct.c_uint64 * (value_size // 8)


def _values(profile_type: ProfileType, value) -> tuple[int, ...]:
    if profile_type is ProfileType.ON_CPU:
        return (value if isinstance(value, int) else value.value,)
    return (value.switches, value.ns)


__all__ = [
    "BPFLoadError",
    "DrainResult",
    "Engine",
    "EngineConfig",
    "ProfilerEngine",
    "RawStack",
    "UnwindChoice",
]
