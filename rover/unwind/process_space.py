"""What the unwinder knows of each process: its executable mappings, their CFI and biases.

Mappings come from ``/proc/PID/maps`` through the symbolizer's own parser and
file locator (``rover.symbols``); a file's table is loaded the first time an
address in it is unwound and then shared by every process mapping the file.
Its separate debug file (for ``.debug_frame``) is looked for with the
symbolizer's locator, inside the process's root first.
A process's mappings are kept after it exits (until :meth:`forget`), so
samples taken just before an exit still unwind.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import BinaryIO

from rover.byte_cache import CacheStats
from rover.hostfs import HostFS, ProcessGone
from rover.symbols.cache import FileIdentity, KnownBadFile, file_identity
from rover.symbols.debug_files import DebugFiles
from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.symbols.mapped_files import MAX_MAPPED_FILE, open_mapped_file, read_vdso
from rover.symbols.maps import Mapping, MappingKind, parse_maps
from rover.symbols.report import Reporter
from rover.unwind.cfi_table import NO_RULE, CfiTable, Rule
from rover.unwind.tables import (
    DEBUG_FILE_FRAME,
    FileUnwindInfo,
    FindDebugFrame,
    Rows,
    UnwindInfoCache,
    read_debug_frame,
)

_REREAD_INTERVAL = 1.0  # seconds between maps re-reads of one process for unknown addresses
PRELOAD_BUDGET_S = 1.0  # tables loaded when a process is added, at most this long
COUNTER_NAMES = (
    "cfi_load_errors",  # files whose CFI could not be loaded (each counted once)
    "cfi_files_loaded",  # files whose CFI was decoded (not served from the cache)
    "debug_frames_used",  # ...of which a separate debug file's .debug_frame filled gaps
    "debug_frame_errors",  # debug files skipped (wrong CRC or build id, corrupt...)
)


@dataclass(slots=True)
class UnwindModule:
    """One executable mapping; its table is loaded on first use (None: no CFI usable)."""

    mapping: Mapping
    table: CfiTable | None = None
    bias: int = 0
    loaded: bool = False
    file_key: str = ""  # the file's build id (else device, inode and path): one table per file

    def rule(self, address: int) -> Rule:
        if self.table is None:
            return NO_RULE
        return self.table.lookup(address - self.bias)


@dataclass(slots=True)
class ProcessSpace:
    maps_text: str
    modules: list[UnwindModule]
    starts: list[int] = field(default_factory=list)
    alive: bool = True
    last_read: float = 0.0

    def __post_init__(self) -> None:
        self.starts = [m.mapping.start for m in self.modules]

    def module_at(self, address: int) -> UnwindModule | None:
        i = bisect_right(self.starts, address) - 1
        if i < 0 or address >= self.modules[i].mapping.end:
            return None
        return self.modules[i]


class ProcessSpaces:
    """The mappings of the profiled processes and the shared CFI tables of their files."""

    def __init__(
        self,
        hostfs: HostFS | None = None,
        cache: UnwindInfoCache | None = None,
        debug_files: bool = True,
    ) -> None:
        """``debug_files``: look for separate debug files' ``.debug_frame``."""
        self.hostfs = hostfs or HostFS()
        self.cache = cache or UnwindInfoCache()
        self._spaces: dict[int, ProcessSpace] = {}
        # Reports each bad file once (remembering a bounded number of them).
        self._reporter = Reporter(COUNTER_NAMES)
        self.counters: dict[str, int] = self._reporter.counters
        self._debug_files = (
            DebugFiles(self.hostfs, self._reporter, "debug_frame_errors", None, "unwinding")
            if debug_files
            else None
        )

    def prepare(self, pid: int, preload_s: float = PRELOAD_BUDGET_S) -> None:
        """Read ``pid``'s maps now, and load its files' tables for up to ``preload_s``.

        Loading before the first samples arrive means they unwind in microseconds
        instead of waiting behind a table build while the ring buffer fills (the
        first unwinds of off-CPU places are what stop the stack copies). Files not
        loaded within the budget load when first needed. Raises
        :class:`ProcessGone` when the process does not exist.
        """
        space = self.read(pid)
        deadline = time.monotonic() + preload_s
        for module in space.modules:
            if time.monotonic() >= deadline:
                break
            if not module.loaded:
                self.load(pid, module)

    def space(self, pid: int) -> ProcessSpace | None:
        """The mappings of ``pid`` (read on first use), or None when they were never readable."""
        space = self._spaces.get(pid)
        if space is None:
            try:
                space = self.read(pid)
            except (ProcessGone, OSError):
                return None
        return space

    def module_at(self, pid: int, space: ProcessSpace, address: int) -> UnwindModule | None:
        """The module holding ``address``; re-reads maps (rate limited) for a new library."""
        module = space.module_at(address)
        if module is None and space.alive and time.monotonic() - space.last_read > _REREAD_INTERVAL:
            try:
                space = self.read(pid)
            except (ProcessGone, OSError):
                space.alive = False
                return None
            module = space.module_at(address)
        if module is not None and not module.loaded:
            self.load(pid, module)
        return module

    def forget(self, pid: int) -> None:
        self._spaces.pop(pid, None)

    def pids(self) -> list[int]:
        return list(self._spaces)

    def read(self, pid: int) -> ProcessSpace:
        """``pid``'s maps read now (modules already known are kept); raises ProcessGone."""
        old = self._spaces.get(pid)
        text = self.hostfs.read_text(pid, "maps")  # ProcessGone propagates
        if old is not None and old.maps_text == text:
            old.last_read = time.monotonic()
            return old
        known = {m.mapping: m for m in old.modules} if old is not None else {}
        modules = [known.get(m) or UnwindModule(m) for m in parse_maps(text)]
        space = self._spaces[pid] = ProcessSpace(text, modules, last_read=time.monotonic())
        return space

    def load(self, pid: int, module: UnwindModule) -> None:
        """Load ``module``'s table and bias (once; a failure is reported and leaves no table)."""
        module.loaded = True
        mapping = module.mapping
        try:
            info = self._info(pid, mapping)
        except KnownBadFile:
            return
        except (OSError, ProcessGone, ElfLoadError) as exc:
            self._report(mapping, exc)
            return
        except Exception as exc:  # untrusted input
            self._report(mapping, exc)
            return
        if info is None:
            return
        size = mapping.end - mapping.start
        module.bias = info.image.load_bias(mapping.start, mapping.offset, size)
        module.table = info.table
        module.file_key = info.image.build_id or f"{mapping.dev}:{mapping.inode}:{mapping.path}"

    def _info(self, pid: int, mapping: Mapping) -> FileUnwindInfo | None:
        if mapping.kind is MappingKind.VDSO:
            loads = self.cache.loads
            info = self.cache.load(read_vdso(self.hostfs, pid, mapping), None)
            self.counters["cfi_files_loaded"] += self.cache.loads - loads
            return info
        if mapping.kind is not MappingKind.FILE:
            return None  # anonymous (JIT) or [vsyscall]: frame pointers only
        stream, st = self._open(pid, mapping)
        with stream:
            identity = file_identity(st)
            cached = self.cache.cached(identity)
            if cached is not None:
                return cached
            loads = self.cache.loads
            info = self.cache.load(stream, identity, self._debug_finder(pid, mapping, identity))
        if self.cache.loads > loads:
            self.counters["cfi_files_loaded"] += self.cache.loads - loads
            self.counters["debug_frames_used"] += DEBUG_FILE_FRAME in info.sources
        return info

    def _debug_finder(
        self, pid: int, mapping: Mapping, identity: FileIdentity
    ) -> FindDebugFrame | None:
        """Reads the ``.debug_frame`` of the mapped file's debug file, as ``pid`` sees it."""
        debug_files = self._debug_files
        if debug_files is None:
            return None

        def find(image: ElfImage) -> Rows | None:
            return debug_files.find(image, pid, mapping.path, identity, read_debug_frame)

        return find

    def _open(self, pid: int, mapping: Mapping) -> tuple[BinaryIO, os.stat_result]:
        """The mapped file; after the process exited, the same file (device and inode) at
        its path on the host."""
        try:
            return open_mapped_file(self.hostfs, pid, mapping)
        except OSError:
            if self.hostfs.exists(pid) or mapping.deleted:
                raise
            stream, st = self.hostfs.open_host_file(mapping.path, MAX_MAPPED_FILE)
            if (st.st_ino, f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}") != (
                mapping.inode,
                mapping.dev,
            ):
                stream.close()
                raise
            return stream, st

    def debug_file_crcs(self) -> CacheStats | None:
        """The debug-link CRCs of the unwinding's debug-file search (None: no search)."""
        return self._debug_files.cache_stats() if self._debug_files is not None else None

    def _report(self, mapping: Mapping, exc: BaseException) -> None:
        self._reporter.problem(
            ("no unwind tables", mapping.dev, mapping.inode, mapping.path),
            ("cfi_load_errors",),
            "no unwind tables for %s (%s); its frames fall back to frame pointers",
            mapping.path,
            exc,
        )
