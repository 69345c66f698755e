"""The function symbols of one ELF file, loaded in bulk and searchable by address.

``.symtab`` and ``.dynsym`` are read as whole byte blocks and viewed as numpy
structured arrays (``Elf64_Sym`` / ``Elf32_Sym``); filtering, merging and
sorting are vectorized. Names stay as offsets into the string tables and are
decoded (and demangled) only for symbols that are actually looked up; demangled
names are remembered by ``demangle`` (its cache is bounded in bytes), so a table's
size is fixed once it is loaded (:attr:`ElfSymbolTable.nbytes`).
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

from rover.byte_cache import INT_BYTES
from rover.symbols.demangle import demangle
from rover.symbols.elf_file import ElfImage, ElfLoadError, SectionHeader

_STT_FUNC = 2
_STT_GNU_IFUNC = 10
_STB_GLOBAL = 1
_STB_WEAK = 2
_SHN_LORESERVE = 0xFF00  # SHN_ABS, SHN_COMMON, SHN_XINDEX...: not a real section
_NO_END = np.iinfo(np.uint64).max
# When an address is past the end of the symbol before it, look this many
# symbols further back for one that contains it (symbols nested in others).
_CONTAINING_SCAN = 4
_TABLE_BYTES = 200  # the table object and its attributes' headers


def _symbol_dtype(elf_class: int, little_endian: bool) -> np.dtype:
    e = "<" if little_endian else ">"
    if elf_class == 64:
        fields = [("name", "u4"), ("info", "u1"), ("other", "u1"), ("shndx", "u2")]
        fields += [("value", "u8"), ("size", "u8")]
    else:
        fields = [("name", "u4"), ("value", "u4"), ("size", "u4")]
        fields += [("info", "u1"), ("other", "u1"), ("shndx", "u2")]
    return np.dtype([(n, e + t) for n, t in fields])


class ElfSymbolTable:
    """Function symbols of one file, sorted by address, one symbol per address.

    Addresses given to lookups are *file virtual addresses* (``st_value``
    space): subtract the mapping's load bias from a runtime address first.
    """

    def __init__(
        self,
        starts: np.ndarray,
        ends: np.ndarray,
        name_offsets: np.ndarray,
        strings: bytes,
        priorities: np.ndarray | None = None,
    ) -> None:
        self._starts_arr = starts
        self._ends_arr = ends
        # Python lists: bisect on a list of ints beats numpy for single lookups.
        self._starts: list[int] = starts.tolist()
        self._ends: list[int] = ends.tolist()
        self._name_offsets = name_offsets
        self._strings = strings
        # Alias rank of each kept symbol (see _function_symbols; lower wins), for merging.
        self._priorities = (
            priorities if priorities is not None else np.zeros(len(starts), dtype=np.uint8)
        )

    @classmethod
    def empty(cls) -> ElfSymbolTable:
        none = np.zeros(0, dtype=np.uint64)
        return cls(none, none, np.zeros(0, dtype=np.int64), b"")

    def __len__(self) -> int:
        return len(self._starts)

    @property
    def nbytes(self) -> int:
        """Memory held: the arrays, the string tables, and the two lists of Python ints
        the single lookups bisect (a list slot and an int object per symbol and list)."""
        arrays = (self._starts_arr, self._ends_arr, self._name_offsets, self._priorities)
        lists = sys.getsizeof(self._starts) + sys.getsizeof(self._ends)
        return (
            _TABLE_BYTES
            + sum(a.nbytes for a in arrays)
            + lists
            + 2 * len(self._starts) * INT_BYTES
            + sys.getsizeof(self._strings)
        )

    def lookup(self, vaddr: int) -> int:
        """Index of the symbol for ``vaddr``, or -1.

        The symbol containing the address (an unsized one reaches to the next
        symbol), else an enclosing earlier one. An address past the end of a
        sized symbol belongs to none, as in perf: in a stripped library it is a
        hidden static function, and naming it after the exported function
        before it would be wrong.
        """
        i = bisect_right(self._starts, vaddr) - 1
        if i < 0:
            return -1
        if vaddr < self._ends[i]:
            return i
        return self._fallback(vaddr, i)

    def _fallback(self, vaddr: int, i: int) -> int:
        for j in range(i - 1, max(i - 1 - _CONTAINING_SCAN, -1), -1):
            if self._starts[j] <= vaddr < self._ends[j]:
                return j
        return -1

    def lookup_many(self, vaddrs: Sequence[int] | np.ndarray) -> np.ndarray:
        """:meth:`lookup` for many addresses at once: an int64 array of indices (-1: none)."""
        v = np.asarray(vaddrs, dtype=np.uint64)
        idx = np.searchsorted(self._starts_arr, v, side="right").astype(np.int64) - 1
        if not len(self._starts):
            return idx
        found = (idx >= 0) & (v < self._ends_arr[np.maximum(idx, 0)])
        result = np.where(found, idx, -1)
        # The same fallback as lookup(), vectorized: an earlier containing symbol.
        for back in range(1, _CONTAINING_SCAN + 1):
            candidate = idx - back
            safe = np.maximum(candidate, 0)
            contains = (candidate >= 0) & (self._starts_arr[safe] <= v) & (v < self._ends_arr[safe])
            hit = contains & ~found
            result[hit] = candidate[hit]
            found |= hit
        return result

    def name(self, index: int) -> str:
        """The demangled name of symbol ``index`` ("" if the string table lacks it)."""
        raw = self.raw_name(index)
        return demangle(raw) if raw else ""

    def raw_name(self, index: int) -> str:
        """The name as stored, without a symbol version (``.symtab`` of a debug file
        spells versioned symbols ``clock_nanosleep@@GLIBC_2.17``)."""
        offset = int(self._name_offsets[index])
        end = self._strings.find(b"\0", offset)
        raw = self._strings[offset : end if end >= 0 else len(self._strings)]
        at = raw.find(b"@", 1)
        return raw[: at if at > 0 else len(raw)].decode("utf-8", "replace")

    def symbolize(self, vaddr: int) -> str | None:
        """The demangled name of the function at ``vaddr``, or None."""
        i = self.lookup(vaddr)
        if i < 0:
            return None
        return self.name(i) or None

    def start(self, index: int) -> int:
        return self._starts[index]


def merge_tables(tables: Sequence[ElfSymbolTable]) -> ElfSymbolTable:
    """One table holding every symbol of ``tables``.

    At an address several of them name, the alias rules of one file decide (see
    ``_function_symbols``), then the earliest table in ``tables`` (list the best
    source first): a debug file's ``.symtab`` merges as if the binary had it.
    """
    tables = [t for t in tables if len(t)]
    if len(tables) <= 1:
        return tables[0] if tables else ElfSymbolTable.empty()
    bases = np.cumsum([0] + [len(t._strings) for t in tables[:-1]])
    starts = np.concatenate([t._starts_arr for t in tables])
    ends = np.concatenate([t._ends_arr for t in tables])
    names = np.concatenate([t._name_offsets + base for t, base in zip(tables, bases, strict=True)])
    rank = np.concatenate([np.full(len(t), i, dtype=np.int64) for i, t in enumerate(tables)])
    priorities = np.concatenate([t._priorities for t in tables])
    order = np.lexsort((rank, priorities, starts))
    starts = starts[order]
    first = np.ones(len(starts), dtype=bool)
    first[1:] = starts[1:] != starts[:-1]
    keep = order[first]
    strings = b"".join(t._strings for t in tables)
    return ElfSymbolTable(starts[first], ends[keep], names[keep], strings, priorities[keep])


def load_symbol_table(image: ElfImage) -> ElfSymbolTable:
    """Read ``.symtab`` and ``.dynsym`` of ``image`` into one merged table.

    Raises :class:`ElfLoadError` when a symbol table's headers point outside the
    file; a file with no symbol tables gives an empty table.
    """
    dtype = _symbol_dtype(image.elf_class, image.little_endian)
    parts = []
    strings = b""
    # .symtab first: on equal terms its entry wins (it is the fuller table).
    tables = sorted(
        (s for s in image.sections if s.type in ("SHT_SYMTAB", "SHT_DYNSYM")),
        key=lambda s: s.type != "SHT_SYMTAB",
    )
    for rank, header in enumerate(tables):
        symbols, table_strings = _read_table(image, header, dtype)
        if symbols is None:
            continue
        parts.append(_function_symbols(symbols, len(strings), rank, len(table_strings)))
        strings += table_strings
    if not parts:
        return ElfSymbolTable.empty()
    return _merge(parts, _section_ends(image.sections), strings)


def defined_functions(image: ElfImage, names: Sequence[str]) -> dict[str, int]:
    """The st_value of each of ``names`` that ``image`` defines as a function, from
    ``.symtab`` or ``.dynsym`` (versioned names such as ``SSL_read@@OPENSSL_3.0.0``
    match ``SSL_read``); names it only imports are absent.

    Raises :class:`ElfLoadError` when a symbol table's headers point outside the file.
    """
    dtype = _symbol_dtype(image.elf_class, image.little_endian)
    found: dict[str, int] = {}
    for header in image.sections:
        if header.type not in ("SHT_SYMTAB", "SHT_DYNSYM"):
            continue
        symbols, strings = _read_table(image, header, dtype)
        if symbols is None:
            continue
        kind = symbols["info"] & 0xF
        defined = ((kind == _STT_FUNC) | (kind == _STT_GNU_IFUNC)) & (symbols["shndx"] != 0)
        defined &= (symbols["shndx"] < _SHN_LORESERVE) & (symbols["value"] != 0)
        for name in names:
            if name in found:
                continue
            offsets = _string_offsets(strings, name.encode())
            if not offsets:
                continue
            hits = symbols[defined & np.isin(symbols["name"], offsets)]
            if len(hits):
                found[name] = int(hits["value"][0])
    return found


def _string_offsets(strings: bytes, name: bytes) -> list[int]:
    """Where ``name`` starts in a string table as a whole name (ended by NUL, or by "@"
    of a symbol version); names may be suffixes of longer strings."""
    offsets = []
    for end in (b"\0", b"@"):
        needle = name + end
        at = strings.find(needle)
        while at >= 0:
            offsets.append(at)
            at = strings.find(needle, at + 1)
    return offsets


def _read_table(
    image: ElfImage, header: SectionHeader, dtype: np.dtype
) -> tuple[np.ndarray | None, bytes]:
    if header.entsize and header.entsize != dtype.itemsize:
        raise ElfLoadError(f"symbol entry size {header.entsize} in section {header.index}")
    if not 0 < header.link < len(image.sections):
        raise ElfLoadError(f"symbol table {header.index} links to no string table")
    strtab = image.sections[header.link]
    data = image.read(header.offset, header.size - header.size % dtype.itemsize)
    if not data:
        return None, b""
    return np.frombuffer(data, dtype=dtype), image.read(strtab.offset, strtab.size)


def _function_symbols(
    symbols: np.ndarray, strings_base: int, rank: int, strings_size: int
) -> dict[str, np.ndarray]:
    info = symbols["info"]
    kind = info & 0xF
    shndx = symbols["shndx"]
    names = symbols["name"]
    keep = (
        ((kind == _STT_FUNC) | (kind == _STT_GNU_IFUNC))
        & (shndx != 0)
        & (shndx < _SHN_LORESERVE)
        & (symbols["value"] != 0)
        & (names != 0)
        & (names < strings_size)
    )
    chosen = symbols[keep]
    binding = chosen["info"] >> 4
    size = chosen["size"].astype(np.uint64)
    # Which alias at one address to show, perf's order: sized, then non-weak,
    # then global, then .symtab over .dynsym.
    priority = (
        (size == 0).astype(np.uint8) << 3
        | (binding == _STB_WEAK).astype(np.uint8) << 2
        | (binding != _STB_GLOBAL).astype(np.uint8) << 1
        | np.uint8(min(rank, 1))
    )
    return {
        "value": chosen["value"].astype(np.uint64),
        "size": size,
        "shndx": chosen["shndx"].astype(np.int64),
        "name": chosen["name"].astype(np.int64) + strings_base,
        "priority": priority,
    }


def _section_ends(sections: Sequence[SectionHeader]) -> np.ndarray:
    ends = np.array([s.addr + s.size for s in sections], dtype=np.uint64)
    return ends if len(ends) else np.zeros(1, dtype=np.uint64)


def _merge(parts: list[dict[str, np.ndarray]], section_ends: np.ndarray, strings: bytes):
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    order = np.lexsort((merged["priority"], merged["value"]))
    value = merged["value"][order]
    first = np.ones(len(value), dtype=bool)
    first[1:] = value[1:] != value[:-1]
    value = value[first]
    size = merged["size"][order][first]
    shndx = merged["shndx"][order][first]
    name = merged["name"][order][first]
    priority = merged["priority"][order][first]

    next_start = np.empty_like(value)
    next_start[:-1] = value[1:]
    next_start[-1:] = _NO_END
    in_section = shndx < len(section_ends)
    section_end = np.where(in_section, section_ends[np.where(in_section, shndx, 0)], _NO_END)
    # An unsized symbol reaches to the next symbol (or its section's end);
    # a sized one ends where it says.
    reach = np.minimum(next_start, section_end)
    end = np.where(size > 0, value + size, reach)
    return ElfSymbolTable(value, end, name, strings, priority)
