"""One loaded BPF program per profiling type, shared by every task.

Pids are reference counted: two tasks profiling the same process share its
filter entry, and the entry goes when the last of them stops. ``unwind`` picks
how user stacks are unwound (``rover.unwind.modes``): ``frame_pointer`` (the
default), ``eh_frame`` or ``auto``.

At shutdown :meth:`EngineSet.stop_loading` refuses new programs, and
:meth:`EngineSet.close` frees the loaded ones; if a compile is still running when
close gives up waiting, the compiling thread frees everything as it finishes, so
no BPF object outlives the set's close by more than that compile and none is freed
while a thread uses it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

from rover.bpf.engine import EngineConfig, ProfilerEngine
from rover.bpf.headers import KernelHeaders
from rover.bpf.loader import BPFLoadError
from rover.bpf.program import cancel_compiles
from rover.byte_cache import CacheStats
from rover.hostfs import HostFS
from rover.profile import ProfileType
from rover.symbols.debug_files import DEBUG_FILE_CRC_BYTES
from rover.unwind.kernel_tables import DEFAULT_TABLE_BYTES, KernelTables
from rover.unwind.modes import UNWIND_MODES, make_engine
from rover.unwind.tables import DEFAULT_CFI_TABLE_BYTES, UnwindInfoCache

log = logging.getLogger(__name__)


class EngineSet:
    """Creates engines lazily (a compile takes a second or two) and owns their pid filters."""

    def __init__(
        self,
        find_headers: Callable[[], KernelHeaders],
        config: EngineConfig,
        unwind: str = "frame_pointer",
        table_bytes: int = DEFAULT_TABLE_BYTES,
        hostfs: HostFS | None = None,
        cfi_table_bytes: int = DEFAULT_CFI_TABLE_BYTES,
    ) -> None:
        if unwind not in UNWIND_MODES:
            raise ValueError(f"unknown unwinding mode {unwind!r}; expected one of {UNWIND_MODES}")
        self._find_headers = find_headers
        self._headers: KernelHeaders | None = None
        self.config = config
        self.unwind = unwind
        self._table_bytes = table_bytes
        self._hostfs = hostfs
        # The files' decoded CFI, shared by both engines' unwinding (user space).
        self._cfi_cache = UnwindInfoCache(cfi_table_bytes)
        self._kernel_tables: dict[ProfileType, KernelTables] = {}
        self._engines: dict[ProfileType, ProfilerEngine] = {}
        self._refs: dict[ProfileType, Counter[int]] = {}
        self._lock = threading.Lock()  # held to attach, change filters, drain or close
        self._compiling = threading.Lock()  # held while a program compiles (see engine())
        self._handover = threading.Lock()  # orders "close gave up" against a holder leaving
        self._loading_stopped = threading.Event()
        self._orphaned = False  # close() gave up waiting: the holder of _lock frees all

    def engine(self, profile_type: ProfileType, warm_pids: Sequence[int] = ()) -> ProfilerEngine:
        """The engine for ``profile_type``, loading it on first use (raises on failure;
        the unwind tables of ``warm_pids`` are decoded meanwhile).

        The compile holds only ``_compiling`` (one load at a time), not the set: drains
        and filter changes of the engines already loaded go on meanwhile, so a running
        task's flush never waits seconds behind another profiling type's compile.
        """
        with self._compiling:
            with self._loading():
                engine = self._engines.get(profile_type)
                if engine is not None:
                    return engine
                if self._headers is None:
                    self._headers = self._find_headers()
                headers = self._headers
            try:
                engine = make_engine(
                    profile_type,
                    headers,
                    self.config,
                    self.unwind,
                    self._hostfs,
                    self._table_bytes,
                    cfi_cache=self._cfi_cache,
                    on_tables=functools.partial(self._kernel_tables.__setitem__, profile_type),
                    warm_pids=warm_pids,
                )
            except BaseException:
                self._kernel_tables.pop(profile_type, None)  # made, then closed
                raise
            try:
                with self._loading():  # refused when the set was closed meanwhile
                    self._engines[profile_type] = engine
                    self._refs[profile_type] = Counter()
            except BaseException:
                engine.close()  # idempotent: close() may have freed it already
                self._kernel_tables.pop(profile_type, None)
                raise
            log.info(
                "%s engine (%s unwinding) loaded with %s",
                profile_type.value,
                self.unwind,
                headers.describe(),
            )
            return engine

    def acquire(self, profile_type: ProfileType, pid: int) -> None:
        engine = self.engine(profile_type, (pid,))
        with self._loading():
            refs = self._refs[profile_type]
            if refs[pid] == 0:
                engine.add_pid(pid)
            refs[pid] += 1

    @contextlib.contextmanager
    def _loading(self) -> Iterator[None]:
        """Hold the set to load or attach; refused once loading stopped."""
        with self._held():
            self._refuse_if_stopped()
            yield
        self._refuse_if_stopped()

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """Hold the set. When close() gave up waiting for this holder (a compile), the
        holder frees every engine as it leaves."""
        self._lock.acquire()
        try:
            yield
        finally:
            with self._handover:
                if self._orphaned:
                    self._close_locked()
                self._lock.release()

    def release(self, profile_type: ProfileType, pid: int) -> None:
        with self._held():
            refs = self._refs.get(profile_type)
            if not refs or refs[pid] == 0:
                return
            refs[pid] -= 1
            if refs[pid] == 0:
                del refs[pid]
                self._engines[profile_type].remove_pid(pid)

    def loaded(self) -> dict[ProfileType, ProfilerEngine]:
        with self._held():
            return dict(self._engines)

    def caches(self) -> list[CacheStats]:
        """The CFI tables (user space) and each profiling type's unwind rows in the kernel
        (``profiling.unwind_table_bytes``; zeros until its engine walks CFI)."""
        found = [self._cfi_cache.stats()]
        for profile_type in ProfileType:
            suffix = profile_type.name.lower()
            # Read without the lock: a compile may hold it for seconds, and a scrape must
            # not wait.
            tables = self._kernel_tables.get(profile_type)
            rows = CacheStats(f"kernel_unwind_rows_{suffix}", self._table_bytes, 0, 0)
            crcs = CacheStats(f"debug_file_crcs_unwinding_{suffix}", DEBUG_FILE_CRC_BYTES, 0, 0)
            if tables is not None:
                rows = CacheStats(
                    rows.name,
                    tables.budget_bytes,
                    tables.used_bytes,
                    tables.files,
                    tables.counters.get("unwind_files_evicted", 0),
                    tables.counters.get("unwind_tables_over_budget", 0),
                )
                own = tables.spaces.debug_file_crcs()
                crcs = dataclasses.replace(own, name=crcs.name) if own is not None else crcs
            found += [rows, crcs]
        return found

    def stop_loading(self) -> None:
        """From now on no program is loaded; a compile running now is cancelled."""
        self._loading_stopped.set()
        cancel_compiles()

    def close(self, timeout: float | None = None) -> bool:
        """Detach and free every engine; nothing loads afterwards.

        Waits up to ``timeout`` seconds (None: as long as it takes) for a compile in
        progress. False when one was still running then: its thread frees every
        engine when the compile ends.
        """
        self.stop_loading()  # cancels a compile in the helper; one in this process runs on
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float:
            return -1 if deadline is None else max(0.0, deadline - time.monotonic())

        # A compile still running frees its own engine when it ends (loading has stopped).
        compiling = not self._compiling.acquire(timeout=left())
        if not compiling:
            self._compiling.release()
        if not self._lock.acquire(timeout=left()):
            with self._handover:
                if not self._lock.acquire(blocking=False):  # still held: hand over
                    self._orphaned = True
                    return False
        try:
            self._close_locked()
        finally:
            self._lock.release()
        return not compiling

    def _close_locked(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        self._kernel_tables.clear()
        self._refs.clear()

    def _refuse_if_stopped(self) -> None:
        if self._loading_stopped.is_set():
            raise BPFLoadError("the agent is stopping: no BPF program is loaded any more")
