"""The unwind rows the kernel walks: one inner map per file, one mapping table per process.

A file's rows (``kernel_rows``) are loaded once into an inner array map sized to
them and put in a slot of ``unwind_files``, whoever maps the file; each profiled
process's executable mappings go into ``proc_maps`` with their load bias and the
slot of their file (see ``bpf/cfi_walk.h``).

Kernel memory for rows is bounded (``profiling.unwind_table_bytes``): a file that
would not fit first evicts files no profiled process maps any more, least
recently used first; if it still does not fit, its frames are stepped by frame
pointer, counted and logged once. Files stay loaded after their processes go, so
the next process of the same program starts with its tables in place.

Adding a process writes its mapping table at once, every file "loading", and
then loads the files' tables on a loader thread; the caller waits up to a budget
(a busy file such as libLLVM takes over a second to decode). Until a file is
loaded, a frame in it ends the stack with a ``[unwind tables loading]`` marker:
samples are counted with what is known, never dropped. A walk that meets an
address in no mapping (a library loaded since) marks the process, and its maps
are read again (at most once a second).
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from rover.bpf import syscall
from rover.bpf.contract import header
from rover.bpf.program import LoadedProgram
from rover.hostfs import ProcessGone
from rover.symbols.maps import MappingKind
from rover.unwind.kernel_rows import (
    SHARD_BYTES,
    TableTooLarge,
    kernel_bytes,
    kernel_rows,
    shard_elements,
)
from rover.unwind.process_space import ProcessSpace, ProcessSpaces, UnwindModule

log = logging.getLogger(__name__)

_C = header("cfi_walk.h")
MAX_MAPPINGS: int = _C.defines["MAX_MAPPINGS"]
_STATE = {name: value for name, value, _ in _C.enums["mapping_state"]}
_PROC_MAPPINGS = _C.structs["proc_mappings"]
DEFAULT_TABLE_BYTES = 64 << 20
ADD_BUDGET_S = 1.0  # an added process waits at most this long for its tables
_REREAD_INTERVAL_S = 1.0
COUNTER_NAMES = (
    "unwind_files_loaded",  # files whose rows were loaded into the kernel
    "unwind_files_evicted",  # files dropped from the kernel to make room for others
    "unwind_tables_over_budget",  # files not loaded: no room within unwind_table_bytes
    "unwind_tables_too_large",  # files not loaded: rows the kernel cannot hold (see logs)
    "unwind_table_load_errors",  # files whose inner map could not be created or filled
    "mappings_over_limit",  # executable mappings past MAX_MAPPINGS of a process: not walked
    "maps_rereads",  # processes whose maps were read again for an unknown address
)
LOSS_COUNTERS = (
    "unwind_tables_over_budget",
    "unwind_tables_too_large",
    "unwind_table_load_errors",
    "mappings_over_limit",
)


@dataclass
class KernelFile:
    slot: int
    size: int  # bytes of kernel memory
    users: set[int] = field(default_factory=set)


class KernelTables:
    """Rows and mapping tables of one loaded program (its ``unwind_files``, ``proc_maps``
    and ``maps_stale`` maps)."""

    def __init__(
        self,
        program: LoadedProgram,
        spaces: ProcessSpaces,
        budget_bytes: int = DEFAULT_TABLE_BYTES,
        max_files: int = 4096,
    ) -> None:
        self._outer = program.map("unwind_files", ct.c_int, ct.c_int)
        self._proc_maps = program.map("proc_maps", ct.c_uint32, _PROC_MAPPINGS)
        self._stale = program.map("maps_stale", ct.c_uint32, ct.c_uint32)
        self.spaces = spaces
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._free_slots = list(range(max_files - 1, -1, -1))
        self._files: OrderedDict[str, KernelFile] = OrderedDict()  # least recently used first
        self._refused: set[str] = set()  # files refused, reported once
        self._pids: dict[int, set[str]] = {}  # files each process uses
        self._reread_at: dict[int, float] = {}
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.loss_counters: tuple[str, ...] = LOSS_COUNTERS
        self._lock = threading.RLock()
        self._pending: queue.Queue[int | None] = queue.Queue()
        self._idle = threading.Condition(self._lock)
        self._loading: set[int] = set()
        self._loader = threading.Thread(target=self._load_loop, name="unwind-tables", daemon=True)
        self._loader.start()

    # -- processes -------------------------------------------------------
    def add(self, pid: int, wait_s: float = ADD_BUDGET_S) -> None:
        """Publish ``pid``'s mappings now and load their tables, waiting up to ``wait_s``.

        Raises :class:`ProcessGone` when the process does not exist.
        """
        space = self.spaces.read(pid)
        with self._lock:
            self._pids.setdefault(pid, set())
            self._publish(pid, space)
            self._loading.add(pid)
        self._pending.put(pid)
        deadline = time.monotonic() + wait_s
        with self._idle:
            while pid in self._loading and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))

    def settle(self, timeout: float) -> bool:
        """Wait until every added process's tables are loaded; False if ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._loading:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def remove(self, pid: int) -> None:
        """Stop walking ``pid``: its mapping table goes, its files stay (unused)."""
        with self._lock:
            for key in self._pids.pop(pid, set()):
                kernel_file = self._files.get(key)
                if kernel_file is not None:
                    kernel_file.users.discard(pid)
            self._loading.discard(pid)
            self._reread_at.pop(pid, None)
            with contextlib.suppress(KeyError):
                del self._proc_maps[ct.c_uint32(pid)]
        self.spaces.forget(pid)

    def refresh_stale(self) -> int:
        """Read again the maps of processes whose walks met an unknown address (each at
        most once a second); how many were read."""
        stale = [key.value for key in self._stale]
        reread = 0
        for pid in stale:
            with contextlib.suppress(KeyError):
                del self._stale[ct.c_uint32(pid)]
            now = time.monotonic()
            with self._lock:
                if (
                    pid not in self._pids
                    or now - self._reread_at.get(pid, 0.0) < _REREAD_INTERVAL_S
                ):
                    continue
                self._reread_at[pid] = now
            try:
                space = self.spaces.read(pid)
            except (ProcessGone, OSError):
                continue
            reread += 1
            self.counters["maps_rereads"] += 1
            with self._lock:
                if pid in self._pids:
                    self._publish(pid, space)
                    self._loading.add(pid)
            self._pending.put(pid)
        return reread

    def close(self) -> None:
        self._pending.put(None)
        self._loader.join(timeout=5.0)

    @property
    def files(self) -> int:
        return len(self._files)

    def file_sizes(self) -> dict[str, int]:
        """Kernel memory of each loaded file's rows, in bytes, by file key (its build id,
        else device, inode and path: ``UnwindModule.file_key``)."""
        with self._lock:
            return {key: kernel_file.size for key, kernel_file in self._files.items()}

    # -- loading -----------------------------------------------------------
    def _load_loop(self) -> None:
        while True:
            pid = self._pending.get()
            if pid is None:
                return
            try:
                self._load_process(pid)
            except Exception:  # noqa: BLE001 - the loader must outlive any one process
                log.exception("loading the unwind tables of process %d failed", pid)
            finally:
                with self._idle:
                    self._loading.discard(pid)
                    self._idle.notify_all()

    def _load_process(self, pid: int) -> None:
        space = self.spaces.space(pid)
        if space is None:
            return
        for module in space.modules:
            with self._lock:
                if pid not in self._pids:
                    return  # removed meanwhile
            if module.mapping.kind not in (MappingKind.FILE, MappingKind.VDSO):
                continue
            if not module.loaded:
                self.spaces.load(pid, module)
            if module.table is not None:
                self._load_file(module)  # nothing to do when it is in the kernel already
            with self._lock:
                if pid in self._pids:
                    self._publish(pid, space)

    def _load_file(self, module: UnwindModule) -> None:
        key, table = module.file_key, module.table
        with self._lock:
            if table is None or key in self._files or key in self._refused:
                return
        try:
            rows = kernel_rows(table)
        except TableTooLarge as exc:
            self._refuse(key, module, "unwind_tables_too_large", str(exc))
            return
        size = kernel_bytes(rows)
        with self._lock:
            slot = self._room_for(size)
            if slot is None:
                self._refuse(
                    key,
                    module,
                    "unwind_tables_over_budget",
                    f"{size >> 10} KiB of rows do not fit in profiling.unwind_table_bytes "
                    f"({self.budget_bytes >> 20} MiB, {self.used_bytes >> 20} MiB in use)",
                )
                return
        elements = shard_elements(rows)
        try:
            fd = syscall.create_array(
                "unwind_rows", SHARD_BYTES, len(elements), syscall.BPF_F_INNER_MAP
            )
            try:
                for index, element in enumerate(elements):
                    syscall.update(fd, index.to_bytes(4, "little"), element)
                self._outer[ct.c_int(slot)] = ct.c_int(fd)
            finally:
                os.close(fd)  # the outer map keeps the inner one alive
        except OSError as exc:
            with self._lock:
                self._free_slots.append(slot)
            self._refuse(key, module, "unwind_table_load_errors", f"the kernel refused it: {exc}")
            return
        with self._lock:
            self._files[key] = KernelFile(slot, size)
            self.used_bytes += size
            self.counters["unwind_files_loaded"] += 1
        log.debug(
            "unwind rows of %s in the kernel: %d rows, %d KiB",
            module.mapping.path,
            len(rows),
            size >> 10,
        )

    def _room_for(self, size: int) -> int | None:
        """A free slot with ``size`` bytes of budget, evicting unused files; None: no room."""
        unused = [key for key, f in self._files.items() if not f.users]
        while (self.used_bytes + size > self.budget_bytes or not self._free_slots) and unused:
            self._evict(unused.pop(0))
        if self.used_bytes + size > self.budget_bytes or not self._free_slots:
            return None
        return self._free_slots.pop()

    def _evict(self, key: str) -> None:
        kernel_file = self._files.pop(key)
        with contextlib.suppress(KeyError):
            del self._outer[ct.c_int(kernel_file.slot)]
        self._free_slots.append(kernel_file.slot)
        self.used_bytes -= kernel_file.size
        self.counters["unwind_files_evicted"] += 1

    def _refuse(self, key: str, module: UnwindModule, counter: str, reason: str) -> None:
        with self._lock:
            if key in self._refused:
                return
            self._refused.add(key)
            self.counters[counter] += 1
        log.warning(
            "unwind rows of %s not loaded into the kernel (%s): its frames use frame pointers",
            module.mapping.path or module.mapping.module,
            reason,
        )

    # -- the mapping table -------------------------------------------------
    def _publish(self, pid: int, space: ProcessSpace) -> None:
        """Write ``pid``'s mapping table (the lock held)."""
        table = self._proc_maps.Leaf()
        modules = space.modules
        if len(modules) > MAX_MAPPINGS:
            self.counters["mappings_over_limit"] += len(modules) - MAX_MAPPINGS
            modules = modules[:MAX_MAPPINGS]
        used = self._pids.setdefault(pid, set())
        for i, module in enumerate(modules):
            entry = table.m[i]
            entry.start, entry.end = module.mapping.start, module.mapping.end
            entry.state, entry.bias, entry.file = self._state(module)
            if entry.state == _STATE["MAPPING_TABLE"]:
                used.add(module.file_key)
                kernel_file = self._files[module.file_key]
                kernel_file.users.add(pid)
                self._files.move_to_end(module.file_key)
        table.count = len(modules)
        self._proc_maps[ct.c_uint32(pid)] = table

    def _state(self, module: UnwindModule) -> tuple[int, int, int]:
        """(state, bias, slot) of one mapping."""
        if module.table is not None:
            kernel_file = self._files.get(module.file_key)
            if kernel_file is not None:
                return _STATE["MAPPING_TABLE"], module.bias & ((1 << 64) - 1), kernel_file.slot
            if module.file_key not in self._refused:
                return _STATE["MAPPING_LOADING"], 0, 0  # (again, if it was evicted)
        elif module.mapping.kind in (MappingKind.FILE, MappingKind.VDSO) and not module.loaded:
            return _STATE["MAPPING_LOADING"], 0, 0
        return _STATE["MAPPING_NO_CFI"], 0, 0
