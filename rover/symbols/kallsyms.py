"""Kernel text symbols from ``/proc/kallsyms``.

About 120k text lines on a desktop kernel: lines are sliced at the fixed
address width instead of split, and sorted with numpy. The name and module of
a line are split apart only when it is looked up.
"""

from __future__ import annotations

import io
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CORE_MODULE = "[kernel]"
# Among aliases at one address, show a global symbol before a local or weak one.
_TYPE_RANK = {"T": 0, "W": 1, "t": 2, "w": 3}


@dataclass(frozen=True, slots=True)
class KernelSymbol:
    name: str
    module: str  # "[kernel]" or a module's name ("nf_tables", "bpf"...)


class KernelSymbols:
    """Sorted kernel text symbols; each reaches to the next symbol.

    Held compactly for the agent's whole life: addresses in one numpy array, names in
    one bytes blob with an array of offsets (~40 bytes a symbol, against ~300 as Python
    ints and strings), a name decoded only when an address in it is looked up.
    """

    def __init__(self, starts: Sequence[int] | np.ndarray, entries: Sequence[str]) -> None:
        """``starts`` sorted and unique; ``entries[i]`` is ``"name"`` or ``"name\\t[module]"``."""
        # array.array: 8 bytes an address, and bisect on it runs at C speed
        self._starts = array("Q", np.asarray(starts, dtype=np.uint64).tobytes())
        encoded = [e.encode() for e in entries]
        self._names = b"".join(encoded)
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.uint32)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._resolved: dict[int, KernelSymbol] = {}
        etext = [i for i, e in enumerate(entries) if e == "_etext"]
        # Core kernel text ends at _etext; past it (before modules) nothing is known.
        self._core_end = self._starts[etext[0]] if etext else 0
        # kptr_restrict shows every address as zero: nothing can be resolved.
        self.restricted = bool(self._starts) and not any(self._starts)

    @property
    def nbytes(self) -> int:
        """Memory held by the table (not counting names resolved so far)."""
        return self._starts.itemsize * len(self._starts) + len(self._names) + self._offsets.nbytes

    def _entry(self, i: int) -> str:
        return self._names[self._offsets[i] : self._offsets[i + 1]].decode(errors="replace")

    @classmethod
    def parse(cls, text: str) -> KernelSymbols:
        """Text symbols of ``/proc/kallsyms`` text, read a line at a time (a list of its
        200k lines would be the table's peak memory many times over)."""
        width = text.find(" ")
        if width <= 0:
            return cls([], [])
        addresses = array("Q")
        ranks = bytearray()
        entries: list[str] = []
        kind_at, name_at = width + 1, width + 3
        for line in io.StringIO(text):
            kind = line[kind_at : kind_at + 1]
            if kind not in _TYPE_RANK or len(line) <= name_at or line[width] != " ":
                continue
            try:
                address = int(line[:width], 16)
            except ValueError:  # a malformed line: dropped
                continue
            addresses.append(address)
            ranks.append(_TYPE_RANK[kind])
            entries.append(line[name_at:-1] if line[-1] == "\n" else line[name_at:])
        if not addresses:
            return cls([], [])
        starts = np.frombuffer(addresses, dtype=np.uint64)
        order = np.lexsort((np.frombuffer(ranks, dtype=np.uint8), starts))
        starts = starts[order]
        first = np.ones(len(starts), dtype=bool)
        first[1:] = starts[1:] != starts[:-1]
        return cls(starts[first], [entries[i] for i in order[first].tolist()])

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
            name, _, module = self._entry(i).partition("\t")
            module = module.strip().strip("[]") or CORE_MODULE
            symbol = self._resolved[i] = KernelSymbol(name, module)
        if symbol.module == CORE_MODULE and self._core_end and address >= self._core_end:
            return None
        return symbol
