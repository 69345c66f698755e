"""Turning stack addresses into frames: user space from ELF files, kernel from kallsyms.

User frames come from each mapped file's symbols (its own tables, a separate
debug file, MiniDebugInfo, Go's pclntab: see ``sources.py``) and, for JIT code
in anonymous memory, from the process's perf map.

What grows with the node's work is bounded in bytes: the files' tables
(``cache.py``, ``symbol_table_bytes``), the processes' perf maps (one cache,
``perf_map_bytes``: a map evicted is read again when its process next needs it)
and the demangled names (``demangle.py``); :meth:`Symbolizer.caches` shows them.

Bad input (a corrupt or missing file, a vanished process) never raises out of
:meth:`Symbolizer.user_frames` or :meth:`Symbolizer.kernel_frames`: it is
logged once, counted in :attr:`Symbolizer.counters`, and the frames fall back
to ``module+0xoffset``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from rover.byte_cache import ByteLru, CacheStats
from rover.heap import release_free_heap
from rover.hostfs import HostFS, ProcessGone
from rover.profile import Frame, FrameKind
from rover.symbols import demangle
from rover.symbols.address_space import AddressSpace, MappedModule, unknown_frame
from rover.symbols.cache import (
    DEFAULT_SYMBOL_TABLE_BYTES,
    ElfSymbols,
    ElfSymbolsCache,
    KnownBadFile,
    file_identity,
)
from rover.symbols.debug_files import DebugFiles
from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.symbols.elf_table import ElfSymbolTable
from rover.symbols.kallsyms import CORE_MODULE, KernelSymbols
from rover.symbols.mapped_files import open_mapped_file, read_vdso
from rover.symbols.maps import Mapping, MappingKind, parse_maps
from rover.symbols.perf_map import PerfMap
from rover.symbols.report import Reporter

log = logging.getLogger(__name__)

COUNTER_NAMES = (
    "unsymbolized_frames",  # frames shown as module+0xoffset (user and kernel)
    "elf_load_errors",  # files whose symbols could not be loaded (each file once)
    "file_open_errors",  # ...of which the file could not be found or opened
    "maps_read_errors",  # /proc/PID/maps reads that failed for a living process
    "maps_rereads",  # maps re-read because an address was in no known mapping
    "elf_files_loaded",  # ELF files parsed (not served from the cache)
    "section_name_errors",  # ...whose section name table was unreadable (names lost)
    "kallsyms_errors",  # /proc/kallsyms could not be read
    "kallsyms_restricted",  # 1 when kptr_restrict hides kernel addresses
    "debug_files_used",  # files whose symbols came (also) from a separate debug file
    "debug_file_errors",  # debug files found but skipped (wrong CRC or build id, corrupt...)
    "debug_link_crc_mismatches",  # ...of which the CRC did not match the .gnu_debuglink
    "minidebuginfo_used",  # files whose .gnu_debugdata (MiniDebugInfo) was read
    "minidebuginfo_errors",  # ...that was damaged and skipped
    "gopclntab_used",  # Go files named from .gopclntab (no .symtab)
    "gopclntab_errors",  # ...whose pclntab was damaged and skipped
    "perf_maps_read",  # perf map reads (whole files, or what was appended)
    "perf_map_bad_lines",  # garbage perf map lines skipped
    "perf_map_errors",  # perf maps that could not be read
)
MAPS_REREAD_INTERVAL = 0.25  # seconds between re-reads of one process's maps that found nothing
KERNEL_FILE = "[kernel.kallsyms]"  # what Frame.file says for core kernel frames, as perf does
_MAX_KERNEL_FRAMES = 1 << 16
DEFAULT_PERF_MAP_BYTES = 12 << 20  # cache.perf_map_bytes


class Symbolizer:
    """Symbolizes user stacks per process and kernel stacks, sharing file tables.

    ``symbol_table_bytes`` and ``perf_map_bytes`` bound its caches (the agent's
    ``cache`` settings).
    """

    def __init__(
        self,
        hostfs: HostFS | None = None,
        kallsyms_path: str | None = None,
        symbol_table_bytes: int = DEFAULT_SYMBOL_TABLE_BYTES,
        perf_map_bytes: int = DEFAULT_PERF_MAP_BYTES,
    ) -> None:
        self._hostfs = hostfs or HostFS()
        self._kallsyms_path = kallsyms_path or str(self._hostfs.host_path("/proc/kallsyms"))
        self._kernel: KernelSymbols | None = None
        self._kernel_frames: dict[int, Frame] = {}
        self._reporter = Reporter(COUNTER_NAMES)
        self.counters = self._reporter.counters
        self._files = ElfSymbolsCache(symbol_table_bytes, reporter=self._reporter)
        self._debug_files = DebugFiles(self._hostfs, self._reporter)
        self._spaces: dict[int, AddressSpace] = {}
        self._perf_map_bytes = perf_map_bytes
        self._perf_maps: ByteLru[int, PerfMap] = ByteLru(
            "perf_maps", perf_map_bytes, self._perf_map_evicted
        )
        self._perf_map_sizes: dict[int, int] = {}  # bytes each map was last charged
        # One lock for everything: callers (drain loop, process discovery) may be threads.
        self._lock = threading.RLock()

    def caches(self) -> list[CacheStats]:
        """The symbolizer's caches: file tables, perf maps, demangled names, debug-link
        CRCs (each read under its own lock: a scrape never waits for a symbolization)."""
        return [
            self._files.stats(),
            self._perf_maps.stats(),
            demangle.cache_stats(),
            self._debug_files.cache_stats(),
        ]

    # -- user space ---------------------------------------------------------

    def prepare(self, pid: int) -> None:
        """Read ``pid``'s maps and load the symbols of its executable files now.

        Raises :class:`ProcessGone` when the process does not exist.
        """
        with self._lock:
            self._read_maps(pid)

    def user_frames(self, pid: int, addrs: Sequence[int]) -> list[Frame]:
        """Frames for a user stack, leaf first as given; zero addresses are skipped."""
        with self._lock:
            space = self._spaces.get(pid)
            if space is None:
                space = self._try_read_maps(pid)
            reread = False
            frames = []
            for position, raw in enumerate(addrs):
                address = int(raw)
                if not address:
                    continue
                leaf = position == 0
                frame = space.frame(address, leaf) if space is not None else None
                if frame is None and space is not None:
                    if not reread and _worth_rereading(space, address):
                        # Maybe a library loaded since (dlopen): look once per stack.
                        reread = True
                        self.counters["maps_rereads"] += 1
                        space = self._try_read_maps(pid) or space
                        frame = space.frame(address, leaf)
                        if frame is None:
                            space.fruitless_reread_at = time.monotonic()
                    if frame is None:
                        # Maps just read (or the process is gone): it is in none of them.
                        if reread or not space.alive:
                            space.mark_unmapped(address)
                        # JIT code in memory maps no longer list, perhaps.
                        frame = space.jit_frame(address, leaf)
                frame = frame or unknown_frame(address)
                if not frame.symbolized:
                    self.counters["unsymbolized_frames"] += 1
                frames.append(frame)
            return frames

    def symbol_sources(self, pid: int) -> dict[str, tuple[str, ...]]:
        """For each file mapped by ``pid`` (as last read), the sources its symbols came
        from (see ``sources.py``: "debug_file", "elf", "minidebuginfo", "gopclntab");
        empty for a file without symbols."""
        with self._lock:
            space = self._spaces.get(pid)
            if space is None:
                return {}
            return {
                m.mapping.path or m.mapping.module: m.symbols.sources if m.symbols else ()
                for m in space.modules
            }

    def forget(self, pid: int) -> None:
        """Drop what is kept for ``pid`` (its maps); shared file tables stay."""
        with self._lock:
            self._spaces.pop(pid, None)
            self._perf_map_sizes.pop(pid, None)
            perf_map = self._perf_maps.pop(pid)
            if perf_map is not None:
                perf_map.close()

    def _try_read_maps(self, pid: int) -> AddressSpace | None:
        try:
            return self._read_maps(pid)
        except ProcessGone:
            space = self._spaces.get(pid)
            if space is not None:
                space.alive = False
            return space

    def _read_maps(self, pid: int) -> AddressSpace | None:
        old = self._spaces.get(pid)
        try:
            text = self._hostfs.read_text(pid, "maps")  # ProcessGone propagates
        except OSError as exc:
            self.counters["maps_read_errors"] += 1
            log.warning("cannot read /proc/%d/maps (%s); its frames stay unsymbolized", pid, exc)
            return old
        if old is not None and old.maps_text == text:
            old.alive = True
            return old
        mappings = parse_maps(text)
        if old is not None and old.same_mappings(mappings):
            # Only data mappings moved (heap growth...): keep the space and its memos.
            old.maps_text, old.alive = text, True
            return old
        known = old.module_map() if old is not None else {}
        modules = [known.get(m) or self._load_module(pid, m) for m in mappings]
        space = self._spaces[pid] = AddressSpace(
            text, modules, lambda address, leaf: self._jit_frame(pid, address, leaf)
        )
        return space

    def _perf_map_evicted(self, pid: int, perf_map: PerfMap) -> None:
        perf_map.close()
        self._perf_map_sizes.pop(pid, None)

    def _jit_frame(self, pid: int, address: int, leaf: bool) -> Frame | None:
        """The frame ``pid``'s perf map gives ``address``. The map is made (reading
        nothing yet) when first needed, or again after the cache evicted it; it is kept
        across maps re-reads, and charged again whenever it grew."""
        perf_map = self._perf_maps.get(pid)
        if perf_map is None:
            perf_map = PerfMap(self._hostfs, pid, self._reporter, self._perf_map_bytes)
            self._perf_map_sizes.pop(pid, None)
        frame = perf_map.frame(address, leaf)
        size = perf_map.nbytes
        if self._perf_map_sizes.get(pid) != size:
            if self._perf_maps.put(pid, perf_map, size):
                self._perf_map_sizes[pid] = size
            else:  # only with a budget of a few KiB: a map fits its budget (perf_map.py)
                perf_map.close()
                self._perf_map_sizes.pop(pid, None)
        return frame

    def _load_module(self, pid: int, mapping: Mapping) -> MappedModule:
        symbols = None
        try:
            symbols = self._load_symbols(pid, mapping)
        except KnownBadFile:
            pass  # reported when it first failed
        except OSError as exc:
            self._report(mapping, exc, "file_open_errors")
        except Exception as exc:  # ElfLoadError, or any surprise from untrusted input
            self._report(mapping, exc)
        if symbols is None:
            return MappedModule(mapping, None, 0)
        bias = symbols.image.load_bias(mapping.start, mapping.offset, mapping.end - mapping.start)
        return MappedModule(mapping, symbols, bias)

    def _load_symbols(self, pid: int, mapping: Mapping) -> ElfSymbols | None:
        if mapping.kind is MappingKind.VDSO:
            # Keyed by build id alone: every process of one kernel shares its vDSO.
            return self._loaded(self._files.load(read_vdso(self._hostfs, pid, mapping), None))
        if mapping.kind is not MappingKind.FILE:
            return None  # anonymous (JIT) or [vsyscall]: nothing to read
        stream, st = open_mapped_file(self._hostfs, pid, mapping)
        with stream:
            identity = file_identity(st)
            cached = self._files.cached(identity)
            if cached is not None:
                return cached

            def find_debug(image: ElfImage) -> ElfSymbolTable | None:
                return self._debug_files.symbols_for(image, pid, mapping.path, identity)

            return self._loaded(self._files.load(stream, identity, find_debug, mapping.path))

    def _loaded(self, symbols: ElfSymbols) -> ElfSymbols:
        self.counters["elf_files_loaded"] = self._files.loads
        return symbols

    def _report(self, mapping: Mapping, exc: Exception, counter: str | None = None) -> None:
        reason = str(exc) if isinstance(exc, ElfLoadError | OSError) else repr(exc)
        counters = ("elf_load_errors", counter) if counter else ("elf_load_errors",)
        self._reporter.problem(
            (mapping.dev, mapping.inode, mapping.path),
            counters,
            "no symbols for %s: %s; its frames show as module+offset",
            mapping.path,
            reason,
        )

    # -- kernel -------------------------------------------------------------

    def kernel_frames(self, addrs: Sequence[int]) -> list[Frame]:
        """Frames for a kernel stack, in the order given; zero addresses are skipped."""
        with self._lock:
            frames = []
            for raw in addrs:
                address = int(raw)
                if not address:
                    continue
                frame = self._kernel_frames.get(address)
                if frame is None:
                    frame = self._kernel_frame(address)
                if not frame.symbolized:
                    self.counters["unsymbolized_frames"] += 1
                frames.append(frame)
            return frames

    def _kernel_frame(self, address: int) -> Frame:
        symbol = self._kernel_symbols().lookup(address)
        if symbol is None:
            name = f"{CORE_MODULE}+0x{address:x}"
            frame = Frame(name, FrameKind.KERNEL, CORE_MODULE, False, KERNEL_FILE)
        else:
            file = KERNEL_FILE if symbol.module == CORE_MODULE else symbol.module
            frame = Frame(symbol.name, FrameKind.KERNEL, symbol.module, True, file)
        if len(self._kernel_frames) >= _MAX_KERNEL_FRAMES:
            self._kernel_frames.clear()
        self._kernel_frames[address] = frame
        return frame

    def _kernel_symbols(self) -> KernelSymbols:
        if self._kernel is None:
            try:
                with open(self._kallsyms_path, errors="replace") as f:
                    self._kernel = KernelSymbols.parse(f)
                release_free_heap()  # what reading 200k lines left in the C heap
            except OSError as exc:
                self.counters["kallsyms_errors"] += 1
                log.warning(
                    "cannot read %s (%s): kernel frames stay unsymbolized", self._kallsyms_path, exc
                )
                self._kernel = KernelSymbols([], [])
            if self._kernel.restricted:
                self.counters["kallsyms_restricted"] = 1
                log.warning(
                    "%s shows no addresses (kernel.kptr_restrict): kernel frames stay unsymbolized;"
                    " run as root or set sysctl kernel.kptr_restrict=0",
                    self._kallsyms_path,
                )
        return self._kernel


def _worth_rereading(space: AddressSpace, address: int) -> bool:
    # Garbage return addresses (code without frame pointers) are common: after a
    # re-read that found nothing new, wait a little before the next one.
    return (
        space.alive
        and not space.is_known_unmapped(address)
        and time.monotonic() - space.fruitless_reread_at >= MAPS_REREAD_INTERVAL
    )
