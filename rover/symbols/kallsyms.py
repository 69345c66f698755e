"""Kernel text symbols from ``/proc/kallsyms``.

About 120k text lines on a desktop kernel: lines are sliced at the fixed
address width instead of split, and sorted with numpy (~40 ms in all). The
name and module of a line are split apart only when it is looked up.
"""

from __future__ import annotations

import string
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

CORE_MODULE = "[kernel]"
_TEXT_TYPES = frozenset("tTwW")
# Among aliases at one address, show a global symbol before a local or weak one.
_TYPE_RANK = {"T": 0, "W": 1, "t": 2, "w": 3}
_HEX = frozenset(string.hexdigits)


@dataclass(frozen=True, slots=True)
class KernelSymbol:
    name: str
    module: str  # "[kernel]" or a module's name ("nf_tables", "bpf"...)


class KernelSymbols:
    """Sorted kernel text symbols; each reaches to the next symbol."""

    def __init__(self, starts: list[int], entries: list[str]) -> None:
        """``starts`` sorted and unique; ``entries[i]`` is ``"name"`` or ``"name\\t[module]"``."""
        self._starts = starts
        self._entries = entries
        self._resolved: dict[int, KernelSymbol] = {}
        etext = [a for a, e in zip(starts, entries, strict=True) if e == "_etext"]
        # Core kernel text ends at _etext; past it (before modules) nothing is known.
        self._core_end = etext[0] if etext else 0
        # kptr_restrict shows every address as zero: nothing can be resolved.
        self.restricted = bool(starts) and not any(starts)

    @classmethod
    def parse(cls, text: str) -> KernelSymbols:
        lines = text.splitlines()
        width = lines[0].find(" ") if lines else -1
        if width <= 0:
            return cls([], [])
        text_lines = [
            line
            for line in lines
            if len(line) > width + 3 and line[width] == " " and line[width + 1] in _TEXT_TYPES
        ]
        try:
            addresses = [int(line[:width], 16) for line in text_lines]
        except ValueError:  # a malformed line: drop the lines whose address is not hex
            text_lines = [line for line in text_lines if _HEX.issuperset(line[:width])]
            addresses = [int(line[:width], 16) for line in text_lines]
        if not addresses:
            return cls([], [])
        starts = np.array(addresses, dtype=np.uint64)
        ranks = np.array([_TYPE_RANK[line[width + 1]] for line in text_lines], dtype=np.uint8)
        order = np.lexsort((ranks, starts))
        starts = starts[order]
        first = np.ones(len(starts), dtype=bool)
        first[1:] = starts[1:] != starts[:-1]
        keep = order[first].tolist()
        return cls(starts[first].tolist(), [text_lines[i][width + 3 :] for i in keep])

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, address: int) -> KernelSymbol | None:
        if self.restricted:
            return None
        i = bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        symbol = self._resolved.get(i)
        if symbol is None:
            name, _, module = self._entries[i].partition("\t")
            module = module.strip().strip("[]") or CORE_MODULE
            symbol = self._resolved[i] = KernelSymbol(name, module)
        if symbol.module == CORE_MODULE and self._core_end and address >= self._core_end:
            return None
        return symbol
