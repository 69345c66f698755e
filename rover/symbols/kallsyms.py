"""Kernel text symbols from ``/proc/kallsyms``.

About 120k text lines on a desktop kernel: lines are sliced at the fixed
address width instead of split, and sorted with numpy. The name and module of
a line are split apart only when it is looked up.
"""

from __future__ import annotations

import io
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Sequence
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

    Held compactly for the agent's whole life: addresses in one array, names in one
    bytes blob in the file's order with an array of offsets, and the sorted order as
    an array of indexes into it (~40 bytes a symbol, against ~300 as Python ints and
    strings); a name is decoded only when an address in it is looked up.
    """

    def __init__(self, starts: Sequence[int] | np.ndarray, entries: Sequence[str]) -> None:
        """``starts`` sorted and unique; ``entries[i]`` is ``"name"`` or ``"name\\t[module]"``."""
        encoded = [e.encode() for e in entries]
        offsets = np.zeros(len(encoded) + 1, dtype=np.uint32)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        self._set(
            np.asarray(starts, dtype=np.uint64),
            b"".join(encoded),
            offsets,
            np.arange(len(encoded), dtype=np.uint32),
        )

    def _set(
        self, starts: np.ndarray, names: bytes, offsets: np.ndarray, index: np.ndarray
    ) -> None:
        # array.array: 8 bytes an address, and bisect on it runs at C speed
        self._starts = array("Q", starts.astype(np.uint64).tobytes())
        self._names = names
        self._offsets = offsets
        self._index = index  # sorted position -> the name's position in _names
        self._resolved: dict[int, KernelSymbol] = {}
        # Core kernel text ends at _etext; past it (before modules) nothing is known.
        self._core_end = 0
        at = names.find(b"_etext")
        while at >= 0:
            j = int(np.searchsorted(offsets, at))
            if j + 1 < len(offsets) and offsets[j] == at and offsets[j + 1] == at + 6:
                where = np.flatnonzero(index == j)
                if len(where):
                    self._core_end = self._starts[int(where[0])]
                break
            at = names.find(b"_etext", at + 1)
        # kptr_restrict shows every address as zero: nothing can be resolved.
        self.restricted = bool(self._starts) and not any(self._starts)

    @property
    def nbytes(self) -> int:
        """Memory held by the table (not counting names resolved so far)."""
        held = self._starts.itemsize * len(self._starts) + len(self._names)
        return held + self._offsets.nbytes + self._index.nbytes

    def _entry(self, i: int) -> str:
        j = self._index[i]
        return self._names[self._offsets[j] : self._offsets[j + 1]].decode(errors="replace")

    @classmethod
    def parse(cls, lines: Iterable[str]) -> KernelSymbols:
        """Text symbols of ``/proc/kallsyms`` lines (its text, or the open file), read a
        line at a time into compact buffers: no Python object per symbol is ever made
        (a list of its 200k lines would be the table's peak memory many times over)."""
        if isinstance(lines, str):
            lines = io.StringIO(lines)
        addresses = array("Q")
        ranks = bytearray()
        names = bytearray()
        ends = array("I")
        width = -1
        for line in lines:
            if width < 0:
                width = line.find(" ")
                if width <= 0:
                    return cls([], [])
            kind = line[width + 1 : width + 2]
            if kind not in _TYPE_RANK or len(line) <= width + 3 or line[width] != " ":
                continue
            try:
                address = int(line[:width], 16)
            except ValueError:  # a malformed line: dropped
                continue
            addresses.append(address)
            ranks.append(_TYPE_RANK[kind])
            names += line[width + 3 :].rstrip("\n").encode()
            ends.append(len(names))
        if not addresses:
            return cls([], [])
        starts = np.frombuffer(addresses, dtype=np.uint64)
        order = np.lexsort((np.frombuffer(ranks, dtype=np.uint8), starts))
        sorted_starts = starts[order]
        first = np.ones(len(sorted_starts), dtype=bool)
        first[1:] = sorted_starts[1:] != sorted_starts[:-1]
        offsets = np.zeros(len(ends) + 1, dtype=np.uint32)
        offsets[1:] = np.frombuffer(ends, dtype=np.uint32)
        table = cls.__new__(cls)
        table._set(sorted_starts[first], bytes(names), offsets, order[first].astype(np.uint32))
        return table

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
