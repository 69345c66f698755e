"""One process's executable mappings, each with its file's symbols and load bias."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from rover.profile import Frame, FrameKind
from rover.symbols.cache import ElfSymbols
from rover.symbols.maps import Mapping, MappingKind

UNKNOWN_MODULE = "[unknown]"
# Per-process memo of address -> Frame; cleared when full (stacks repeat a lot).
_MAX_FRAMES = 1 << 17
_MAX_UNMAPPED = 1 << 12


@dataclass(frozen=True, slots=True)
class MappedModule:
    """A mapping, the symbols of its file (None when unavailable) and its load bias."""

    mapping: Mapping
    symbols: ElfSymbols | None
    bias: int

    def frame(self, address: int, lookup: int) -> Frame:
        """The frame for ``address``, whose symbol is searched at ``lookup``."""
        mapping = self.mapping
        file = mapping.path or mapping.module
        build_id = (self.symbols.image.build_id or "") if self.symbols is not None else ""
        if self.symbols is not None:
            name = self.symbols.table.symbolize(lookup - self.bias)
            if name:
                return Frame(name, FrameKind.USER, mapping.module, True, file, build_id)
        if mapping.kind is MappingKind.ANONYMOUS:
            # JIT code: an absolute address is what a perf map would list.
            return Frame(f"[anon]+0x{address:x}", FrameKind.USER, mapping.module, False, file)
        name = f"{mapping.module}+0x{mapping.file_offset(address):x}"
        return Frame(name, FrameKind.USER, mapping.module, False, file, build_id)


def unknown_frame(address: int) -> Frame:
    """The frame for an address in no mapping of its process."""
    return Frame(f"{UNKNOWN_MODULE}+0x{address:x}", FrameKind.USER, UNKNOWN_MODULE, False)


# Names JIT code: the frame for an address (and whether it is the leaf), from the
# process's perf map (which the symbolizer keeps in its cache, not here), or None.
JitFrames = Callable[[int, bool], Frame | None]


class AddressSpace:
    """The executable mappings of one process, as read from one ``/proc/PID/maps``,
    and how to name its JIT code in anonymous memory (``jit``: its perf map)."""

    def __init__(
        self, maps_text: str, modules: list[MappedModule], jit: JitFrames | None = None
    ) -> None:
        self.maps_text = maps_text
        self.modules = modules
        self._jit = jit
        self._starts = [m.mapping.start for m in modules]
        self._frames: dict[int, Frame] = {}
        # Addresses already known to lie in no mapping (no need to re-read maps for them).
        self._unmapped: set[int] = set()
        self.alive = True
        self.fruitless_reread_at = float("-inf")  # when a re-read last found nothing new

    def frame(self, address: int, leaf: bool) -> Frame | None:
        """The frame for ``address``; None when no mapping contains it.

        A non-leaf address is a return address: its symbol is searched at
        ``address - 1`` so a call ending a function resolves to that function.
        """
        key = address << 1 | leaf
        frame = self._frames.get(key)
        if frame is not None:
            return frame
        lookup = address if leaf else address - 1
        i = bisect_right(self._starts, lookup) - 1
        if i < 0 or lookup >= self.modules[i].mapping.end:
            return None
        module = self.modules[i]
        if module.mapping.kind is MappingKind.ANONYMOUS:
            # Not memoized here: the perf map may grow, and memoizes its own hits.
            return self.jit_frame(address, leaf) or module.frame(address, lookup)
        frame = module.frame(address, lookup)
        if len(self._frames) >= _MAX_FRAMES:
            self._frames.clear()
        self._frames[key] = frame
        return frame

    def jit_frame(self, address: int, leaf: bool) -> Frame | None:
        """The frame the process's perf map gives ``address``, if any."""
        return self._jit(address, leaf) if self._jit is not None else None

    def is_known_unmapped(self, address: int) -> bool:
        return address in self._unmapped

    def mark_unmapped(self, address: int) -> None:
        if len(self._unmapped) >= _MAX_UNMAPPED:
            self._unmapped.clear()
        self._unmapped.add(address)

    def same_mappings(self, mappings: list[Mapping]) -> bool:
        return [m.mapping for m in self.modules] == mappings

    def module_map(self) -> dict[Mapping, MappedModule]:
        """The modules by mapping, to reuse when maps are re-read."""
        return {m.mapping: m for m in self.modules}
