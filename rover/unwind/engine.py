"""The .eh_frame profiling engine: BPF sends registers and stack copies, user space unwinds.

Same public surface as :class:`rover.bpf.engine.ProfilerEngine` (``add_pid``,
``remove_pid``, ``pids``, ``events()``, ``drain()``, ``forget_exited_threads()``,
``close()``, ``config``, ``type``), so runners and the task manager drive
either.

Records arrive in a BPF ring buffer. A consumer thread polls it all the time
and unwinds each sample as it arrives (the process's mappings are freshest
then, and a 16 KiB copy is not kept longer than needed), adding it to the
counts of its (tgid, user stack, kernel stack). :meth:`drain` first consumes
whatever is still in the ring buffer, then swaps the counts out, under the lock
the consumer holds while it polls: every record is counted in exactly one
drain. Records lost to a full ring buffer are counted in the kernel
(``ringbuf_drops``).

Off-CPU samples come in two records (see ``bpf/offcpu_dwarf.c``): the
switch-out, unwound on arrival and kept per thread, and the switch-in, which
counts it with the time away. A thread switching out again where it did
before is a repeat: counted in the kernel, with no stack copy (``memo.py``),
and merged into the counts at each drain.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from rover.bpf.counts import (
    DoubleBufferedCounts,
    StackTraces,
    forget_exited_switch_outs,
    thread_alive,
)
from rover.bpf.engine import DrainResult, EngineConfig, RawStack
from rover.bpf.headers import KernelHeaders
from rover.bpf.loader import attach_cpu_clock, load_program
from rover.hostfs import HostFS
from rover.profile import ProfileType
from rover.unwind.memo import MEMO_ENTRIES, MEMO_WORDS, SwitchMemos
from rover.unwind.process_space import ProcessSpaces
from rover.unwind.records import (
    FLAG_NO_USER_REGS,
    FLAG_STACK_FAILED,
    HEADER_BYTES,
    SAMPLE_SWITCH_OUT,
    SAMPLE_SWITCH_OUT_REPEAT,
    Sample,
    SwitchIn,
    parse_record,
)
from rover.unwind.unwinder import Status, Unwinder

log = logging.getLogger(__name__)

# Order matches enum unwind_stat in bpf/unwind_common.h.
KERNEL_STAT_NAMES = (
    "events",
    "ringbuf_drops",
    "stack_copy_failed",
    "no_user_regs",
    "kernel_stack_errors",
    "start_map_full",
    "no_scratch",
    "counts_map_full",
    "no_active_map",
)
# Unwinds that stopped early, by reason (counted per sample; the sample is still counted
# with the frames found). "complete" and "no_stack" (= stack_copy_failed) are not failures.
_UNWIND_COUNTERS = {
    Status.TRUNCATED: "unwind_truncated",
    Status.SIGALTSTACK: "unwind_sigaltstack",
    Status.NO_MAPS: "unwind_no_maps",
    Status.UNMAPPED: "unwind_unmapped",
    Status.BAD_FRAME: "unwind_bad_frame",
    Status.DEPTH: "unwind_depth_limit",
}
COUNTER_NAMES = (
    *KERNEL_STAT_NAMES,
    *_UNWIND_COUNTERS.values(),
    "offcpu_unpaired",  # a switch-in whose switch-out record was lost
    "offcpu_memo_missing",  # a repeat of a memo no longer known: counted without user frames
    "stacks_unresolved",  # off-CPU repeats whose kernel stack was collected: counted without it
    "record_errors",  # records that could not be parsed or unwound (never expected)
    "cfi_load_errors",  # files whose CFI could not be loaded (their frames use frame pointers)
    "debug_frame_errors",  # debug files whose .debug_frame was unusable (the file's own CFI used)
)

_SPACE_ERRORS = ("cfi_load_errors", "debug_frame_errors")  # counted by ProcessSpaces
_PROGRAM = {ProfileType.ON_CPU: "oncpu_dwarf", ProfileType.OFF_CPU: "offcpu_dwarf"}
MAX_STACK_BYTES = 32768
_MIN_RING_BYTES = 1 << 20
_MAX_RING_BYTES = 64 << 20
_PAGE = 4096


@dataclass(frozen=True)
class UnwindSettings:
    """What the .eh_frame engine adds to :class:`EngineConfig`."""

    stack_bytes: int = 16384  # user stack copied per sample (max 32 KiB)
    ring_buffer_bytes: int = 0  # 0: sized from the CPU count and frequency (see ring_pages)
    poll_timeout_ms: int = 50  # the consumer thread's wait for records
    offcpu_repeats: bool = True  # off-CPU: memoize switch-out places (False: copy every time)

    def __post_init__(self) -> None:
        if not 512 <= self.stack_bytes <= MAX_STACK_BYTES or self.stack_bytes % 8:
            raise ValueError(
                f"stack_bytes {self.stack_bytes}: must be a multiple of 8 from 512 to 32768"
            )

    def ring_pages(self, cpus: int, frequency: int) -> int:
        """Pages of the ring buffer (a power of two).

        Auto size: two seconds of samples of every CPU at full stack size, so a
        consumer stalled by a big table build (libLLVM: about 1.5 s) loses none,
        within 1 to 64 MiB.
        """
        size = self.ring_buffer_bytes
        if size <= 0:
            per_sample = HEADER_BYTES + self.stack_bytes
            size = min(max(cpus * frequency * 2 * per_sample, _MIN_RING_BYTES), _MAX_RING_BYTES)
        pages = max(1, size // _PAGE)
        return 1 << (pages - 1).bit_length()


class DwarfProfilerEngine:
    """Loads ``bpf/<type>_dwarf.c``, consumes its ring buffer, unwinds, and drains counts."""

    unwind = "eh_frame"

    def __init__(
        self,
        profile_type: ProfileType,
        headers: KernelHeaders,
        config: EngineConfig | None = None,
        settings: UnwindSettings | None = None,
        hostfs: HostFS | None = None,
    ) -> None:
        self.type = profile_type
        self.config = config or EngineConfig()
        self.settings = settings or UnwindSettings()
        self.spaces = ProcessSpaces(hostfs)
        self.unwinder = Unwinder(self.spaces)
        self._lock = threading.Lock()  # the program, the pid set
        self._ring_lock = threading.Lock()  # ring buffer consumption and the counts
        # How many other threads wait for _ring_lock: the consumer, which would re-take it
        # right after each poll, steps aside for them (a lock does not queue waiters fairly).
        self._ring_waiters = 0
        self._waiters_lock = threading.Lock()
        self._pids: set[int] = set()
        self._forget_after_drain: set[int] = set()
        self._counts: dict[tuple[int, tuple[int, ...], tuple[int, ...]], list[int]] = {}
        self._pending: dict[int, tuple[int, int, tuple[int, ...], tuple[int, ...]]] = {}
        self._counters: Counter[str] = Counter()
        self._stats_seen = [0] * len(KERNEL_STAT_NAMES)
        self._space_errors_seen = dict.fromkeys(_SPACE_ERRORS, 0)
        self._error_logged = False
        # Informational totals (not failures): frames stepped without CFI, signal frames.
        self.fp_frames = 0
        self.signal_frames = 0
        self.samples_unwound = 0
        self.ring_repeats = 0  # off-CPU repeats sent as records (no kernel stack id to be had)
        # For metrics, like ProfilerEngine: stacks drained so far; no counts map to fill.
        self.stacks_drained = 0
        self.last_counts_fill = 0.0
        cpus = _possible_cpus()
        defines = {
            **self.config.defines(),
            "MAX_CPUS": cpus,
            "STACK_BYTES": self.settings.stack_bytes,
            "RINGBUF_PAGES": self.settings.ring_pages(cpus, self.config.frequency),
            "MEMO_WORDS": MEMO_WORDS,
            "MEMO_ENTRIES": MEMO_ENTRIES,
        }
        self._bpf = load_program(_PROGRAM[profile_type], headers, defines)
        self.memos: SwitchMemos | None = None
        self._repeat_counts: DoubleBufferedCounts | None = None
        self._stop = threading.Event()
        try:  # a loaded program must not outlive a failed start
            if profile_type is ProfileType.OFF_CPU and self.settings.offcpu_repeats:
                self.memos = SwitchMemos(self._bpf[b"memos"])
                self._repeat_counts = DoubleBufferedCounts(self._bpf)
                self._kernel_stacks = StackTraces(
                    self._bpf[b"stacks"], self.config.stack_map_size, self.config.stack_gc_ratio
                )
            self._bpf[b"samples"].open_ring_buffer(self._on_record)
            self._attach()
        except BaseException:
            self.close()
            raise
        self._consumer = threading.Thread(
            target=self._consume_loop, name=f"rover-unwind-{profile_type.value}", daemon=True
        )
        self._consumer.start()

    # -- lifecycle -------------------------------------------------------
    def _attach(self) -> None:
        if self.type is not ProfileType.ON_CPU:
            return  # TRACEPOINT_PROBE is attached by bcc when the program loads
        attach_cpu_clock(self._bpf, b"on_cpu_sample", self.config.frequency)

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        consumer = getattr(self, "_consumer", None)
        if consumer is not None and consumer is not threading.current_thread():
            consumer.join(timeout=5)
        with self._lock, self._ring():
            if self._bpf is not None:
                self._bpf.cleanup()
                self._bpf = None

    @property
    def closed(self) -> bool:
        return self._bpf is None

    # -- pid filter ------------------------------------------------------
    def add_pid(self, pid: int) -> None:
        """Profile ``pid``; its mappings are read now when it is alive."""
        with contextlib.suppress(Exception):
            self.spaces.prepare(pid)
        with self._lock:
            self._bpf[b"pids"][ct.c_uint32(pid)] = ct.c_uint8(1)
            self._pids.add(pid)
            self._forget_after_drain.discard(pid)

    def remove_pid(self, pid: int) -> None:
        """Stop profiling ``pid``; its mappings stay until the next drain has unwound its
        last samples."""
        with self._lock:
            self._pids.discard(pid)
            self._forget_after_drain.add(pid)
            with contextlib.suppress(KeyError):
                del self._bpf[b"pids"][ct.c_uint32(pid)]

    @property
    def pids(self) -> frozenset[int]:
        return frozenset(self._pids)

    # -- reading ---------------------------------------------------------
    def events(self) -> int:
        with self._lock:
            if self._bpf is None:
                return 0
            return self._read_stats()[0]

    def drain(self) -> DrainResult:
        """Everything counted since the previous drain, exactly once."""
        with self._lock:
            if self._bpf is None:
                return DrainResult()
            with self._ring():
                self._bpf.ring_buffer_consume()
                if self.memos is not None:
                    self._drain_repeats(self.memos)
                counts, self._counts = self._counts, {}
                counters, self._counters = self._counters, Counter()
            result = DrainResult(counters=self._stat_deltas())
            for name in COUNTER_NAMES[len(KERNEL_STAT_NAMES) :]:
                result.counters[name] = counters.get(name, 0)
            for name in _SPACE_ERRORS:  # ProcessSpaces counts since it started
                now = self.spaces.counters.get(name, 0)
                result.counters[name] = now - self._space_errors_seen[name]
                self._space_errors_seen[name] = now
            for (tgid, user, kernel), values in counts.items():
                result.stacks.append(RawStack(tgid, user, kernel, tuple(values)))
            self.stacks_drained += len(result.stacks)
            for pid in self._forget_after_drain:
                self.spaces.forget(pid)
            self._forget_after_drain.clear()
            return result

    def _drain_repeats(self, memos: SwitchMemos) -> None:
        """Add the repeats counted in the kernel to the counts, then retire old memos."""
        kept = memos.still_switched_out(self._bpf[b"start"])  # before the swap: see memo.py
        resolved: dict[int, tuple[int, ...] | None] = {}
        for key, value in self._repeat_counts.take():
            user = memos.frames(key.memo_id, value.switches)
            if user is None:
                self._counters["offcpu_memo_missing"] += value.switches
                user = ()
            kernel = self._kernel_stacks.resolve(key.kstack_id, resolved)
            if kernel is None:
                self._counters["stacks_unresolved"] += value.switches
                kernel = ()
            self._add(key.tgid, user, kernel, value.switches, value.ns)
        self._kernel_stacks.collect_if_full(self._referenced_kernel_stacks)
        memos.after_drain(kept)
        gone = self._forget_after_drain
        memos.forget_threads([t for t, p in memos.owners().items() if p in gone])

    def _referenced_kernel_stacks(self) -> set[int]:
        referenced = {key.kstack_id for key in self._repeat_counts.active_keys()}
        referenced.update(rec.kstack_id for rec in self._bpf[b"start"].values() if rec.memo_id)
        return referenced

    def forget_exited_threads(self) -> int:
        """Off-CPU: drop switch-out records (kernel and pending here) of threads that exited."""
        if self.type is not ProfileType.OFF_CPU:
            return 0
        with self._lock:
            if self._bpf is None:
                return 0
            gone = forget_exited_switch_outs(self._bpf[b"start"])
        with self._ring():
            stale = [
                tid for tid, (_, tgid, _, _) in self._pending.items() if not thread_alive(tgid, tid)
            ]
            for tid in stale:
                del self._pending[tid]
            if self.memos is not None:
                owners = self.memos.owners()
                self.memos.forget_threads([t for t, p in owners.items() if not thread_alive(p, t)])
        return gone

    # -- the consumer ----------------------------------------------------
    def _consume_loop(self) -> None:
        while not self._stop.is_set():
            if self._ring_waiters:
                time.sleep(0.001)
                continue
            with self._ring_lock:
                if self._bpf is None:
                    return
                self._bpf.ring_buffer_poll(self.settings.poll_timeout_ms)

    @contextlib.contextmanager
    def _ring(self) -> Iterator[None]:
        """``_ring_lock`` for anyone but the consumer, taken within one poll timeout."""
        with self._waiters_lock:
            self._ring_waiters += 1
        try:
            self._ring_lock.acquire()
        finally:
            with self._waiters_lock:
                self._ring_waiters -= 1
        try:
            yield
        finally:
            self._ring_lock.release()

    def _on_record(self, _ctx, data, size) -> int:
        try:
            record = parse_record(ct.string_at(data, size))
            if isinstance(record, SwitchIn):
                self._complete_switch(record)
            else:
                self._add_sample(record)
        except Exception as exc:  # noqa: BLE001 - one bad record must not stop the consumer
            self._counters["record_errors"] += 1
            if not self._error_logged:
                self._error_logged = True
                log.warning("could not handle an unwinding record: %r", exc)
        return 0

    def _add_sample(self, sample: Sample) -> None:
        if sample.kind == SAMPLE_SWITCH_OUT_REPEAT:
            self.ring_repeats += 1
            user = self.memos.frames(sample.memo_id) if self.memos is not None else None
            if user is None:
                self._counters["offcpu_memo_missing"] += 1
                user = ()
            self._pending[sample.tid] = (sample.seq, sample.tgid, user, sample.kernel)
            return
        user = self._unwind(sample)
        if sample.kind == SAMPLE_SWITCH_OUT:
            self._pending[sample.tid] = (sample.seq, sample.tgid, user, sample.kernel)
            return
        key = (sample.tgid, user, sample.kernel)
        values = self._counts.get(key)
        if values is None:
            self._counts[key] = [1]
        else:
            values[0] += 1

    def _complete_switch(self, done: SwitchIn) -> None:
        pending = self._pending.pop(done.tid, None)
        if pending is None or pending[0] != done.seq:
            self._counters["offcpu_unpaired"] += 1
            return
        _, tgid, user, kernel = pending
        self._add(tgid, user, kernel, 1, done.ns)

    def _add(self, tgid: int, user: tuple[int, ...], kernel: tuple[int, ...], n: int, ns: int):
        key = (tgid, user, kernel)
        values = self._counts.get(key)
        if values is None:
            self._counts[key] = [n, ns]
        else:
            values[0] += n
            values[1] += ns

    def _unwind(self, sample: Sample) -> tuple[int, ...]:
        if sample.flags & FLAG_NO_USER_REGS:
            return ()
        memos = self.memos if sample.kind == SAMPLE_SWITCH_OUT else None
        result = self.unwinder.unwind(
            sample.tgid,
            sample.ip,
            sample.sp,
            sample.bp,
            sample.stack,
            stack_copied=not sample.flags & FLAG_STACK_FAILED,
            record_reads=memos is not None,
            registers=sample.regs,
        )
        if memos is not None:
            memos.remember(sample.tgid, sample.tid, sample.ip, sample.sp, sample.bp, result)
        self.samples_unwound += 1
        self.fp_frames += result.fp_frames
        self.signal_frames += result.signal_frames
        counter = _UNWIND_COUNTERS.get(result.status)
        if counter:
            self._counters[counter] += 1
        return result.addresses

    # -- kernel counters -------------------------------------------------
    def _read_stats(self) -> list[int]:
        table = self._bpf[b"stats"]
        return [sum(table[ct.c_int(i)]) for i in range(len(KERNEL_STAT_NAMES))]

    def _stat_deltas(self) -> dict[str, int]:
        now = self._read_stats()
        deltas = {n: now[i] - self._stats_seen[i] for i, n in enumerate(KERNEL_STAT_NAMES)}
        self._stats_seen = now
        return deltas


def _possible_cpus() -> int:
    from bcc.utils import get_possible_cpus

    return max(get_possible_cpus()) + 1
