"""Loading a file's CFI table once and sharing it across processes.

``.eh_frame`` wins wherever it has an FDE (it is what the C++ runtime itself
unwinds with); ``.debug_frame`` FDEs fill the addresses it leaves uncovered (a
file built with ``-fno-asynchronous-unwind-tables`` has ``.eh_frame`` FDEs for
its C runtime objects only). That ``.debug_frame`` is the file's own, else its
separate debug file's (found by ``rover.symbols.debug_files``, the symbolizer's
locator); compressed sections, as Go writes them, are inflated first. The merge
is per FDE: a ``.debug_frame`` FDE is kept only when its whole range lies in a
gap of the table built so far.

Tables are keyed like the symbol tables (``rover.symbols.cache``): by GNU build
id when the file has one, and by on-disk identity; files that failed are
remembered so a corrupt library is parsed and reported once. A table built
without the debug file it looked for is replaced when another copy of the same
build (another container) has one. The cache is bounded in bytes
(``cache.cfi_table_bytes``; least recently used tables go first): it keeps the
tables of files no profiled process maps any more, so the next process of the
same program needs no new decode; a process being profiled holds its files'
tables itself while it is.
"""

from __future__ import annotations

import logging
import struct
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter
from typing import BinaryIO

import numpy as np

from rover.symbols.cache import FileIdentity, PerFileCache
from rover.symbols.elf_file import ElfImage, ElfLoadError, SectionHeader
from rover.unwind.cfi import (
    CFA_EXPR,
    EXPR_RULE,
    MAX_EXPRESSIONS,
    NO_CFI,
    VAL_EXPR_RULE,
    decode_rows,
)
from rover.unwind.cfi_table import CfiTable

log = logging.getLogger(__name__)

_SHF_COMPRESSED = 0x800
_ELFCOMPRESS_ZLIB = 1
_MAX_CFI_BYTES = 256 << 20  # libLLVM's .eh_frame is 5 MiB; far more is a corrupt header
DEFAULT_CFI_TABLE_BYTES = 12 << 20  # cache.cfi_table_bytes

EH_FRAME = ".eh_frame"
DEBUG_FRAME = ".debug_frame"
DEBUG_FILE_FRAME = ".debug_frame(debug file)"

# Decoded CFI rows: (pc, fde_end, (kind, cfa, ra, rbp)), as ``decode_rows`` gives them.
Rows = Sequence[tuple[int, int, tuple[int, int, int, int]]]
# Finds the ``.debug_frame`` rows of a file's separate debug file; None: no debug file.
FindDebugFrame = Callable[[ElfImage], Rows | None]


@dataclass(frozen=True, slots=True)
class FileUnwindInfo:
    """A file's CFI table and its headers (for load biases)."""

    table: CfiTable
    image: ElfImage
    errors: tuple[str, ...] = ()  # malformed entries skipped while decoding
    sources: tuple[str, ...] = ()  # what gave rows, in order of precedence (EH_FRAME...)
    # False when a separate debug file was looked for and not found.
    complete: bool = True

    @property
    def nbytes(self) -> int:
        """Memory held: the table's arrays and expressions, the headers, the messages."""
        return (
            self.table.nbytes
            + self.image.nbytes
            + sum(sys.getsizeof(e) for e in self.errors)
            + sys.getsizeof(self.errors)
        )


def load_unwind_info(
    stream: BinaryIO, image: ElfImage | None = None, find_debug: FindDebugFrame | None = None
) -> FileUnwindInfo:
    """Decode the CFI of the ELF file open as ``stream``.

    ``find_debug`` gives the ``.debug_frame`` rows of the file's separate debug
    file; it is asked only when the file has no ``.debug_frame`` of its own.
    Raises :class:`ElfLoadError` for a file that is not ELF. A file without CFI
    gets an empty table; malformed CFI keeps the entries decoded before it.
    """
    image = image or ElfImage(stream)
    errors: list[str] = []
    parts: list[tuple[str, Rows]] = [
        (EH_FRAME, _own_rows(image, image.section(EH_FRAME), True, errors))
    ]
    own_debug_frame = image.section(DEBUG_FRAME)
    try:  # a damaged .debug_frame must not cost the .eh_frame rules
        own = _checked(_own_rows(image, own_debug_frame, False, errors))
        parts.append((DEBUG_FRAME, own))
    except ElfLoadError as exc:
        errors.append(f"{DEBUG_FRAME}: {exc}")
    complete = True
    if own_debug_frame is None and find_debug is not None:
        debug_rows = find_debug(image)  # already checked by read_debug_frame
        complete = debug_rows is not None
        parts.append((DEBUG_FILE_FRAME, debug_rows or []))
    table, sources = merge_cfi(parts)
    return FileUnwindInfo(table, image, tuple(errors), sources, complete)


def read_debug_frame(debug: ElfImage, stream: BinaryIO) -> Rows:
    """The ``.debug_frame`` rows of a separate debug file (empty when it has none).

    Stricter than for a file's own CFI: any malformed entry raises
    :class:`ElfLoadError`, so a damaged debug file adds nothing at all.
    """
    section = debug.section(DEBUG_FRAME)
    if section is None or section.size == 0:
        return []
    errors: list[str] = []
    rows = decode_rows(_section_bytes(debug, section), section.addr, False, errors)
    if errors:
        raise ElfLoadError(f"malformed {DEBUG_FRAME}: {errors[0]}")
    return _checked(rows)


def _own_rows(image: ElfImage, section: SectionHeader | None, is_eh_frame: bool, errors: list[str]):
    if section is None or section.size == 0:
        return []
    return decode_rows(_section_bytes(image, section), section.addr, is_eh_frame, errors)


def _checked(rows: Rows) -> Rows:
    """``rows``, if their addresses fit the int64 arrays a merge uses (absolute
    ``.debug_frame`` addresses in a damaged file need not)."""
    if rows and max(map(itemgetter(1), rows)) >= 1 << 63:
        raise ElfLoadError("FDE addresses beyond 2**63")
    return rows


def merge_cfi(parts: Sequence[tuple[str, Rows]]) -> tuple[CfiTable, tuple[str, ...]]:
    """One table from ``(source, rows)`` parts in order of precedence, and the sources
    that gave rows: a later part's FDE is kept only in a gap of the earlier ones."""
    table: CfiTable | None = None
    sources: list[str] = []
    for source, rows in parts:
        expressions = getattr(rows, "expressions", ())  # see cfi.CfiRows; filtering drops it
        if table is not None:
            rows = _rows_in_gaps(table, rows)
        if not rows:
            continue
        sources.append(source)
        part = CfiTable.from_rows(rows, source, expressions)
        table = part if table is None else _overlay(table, part, "+".join(sources))
    return (table if table is not None else CfiTable.empty()), tuple(sources)


def _rows_in_gaps(table: CfiTable, rows: Rows) -> Rows:
    """The rows of those FDEs of ``rows`` whose whole range ``table`` has no CFI for."""
    n = len(rows)
    if not n or not len(table):
        return rows
    pcs = np.fromiter(map(itemgetter(0), rows), np.int64, n)
    ends = np.fromiter(map(itemgetter(1), rows), np.int64, n)
    # decode_rows writes an FDE's rows together, the first one at the FDE's start.
    first = np.ones(n, dtype=bool)
    first[1:] = (ends[1:] != ends[:-1]) | (pcs[1:] <= pcs[:-1])
    fde_of_row = np.cumsum(first) - 1
    keep = _in_gaps(table, pcs[first], ends[first])[fde_of_row]
    return list(compress(rows, keep.tolist()))


def _in_gaps(table: CfiTable, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each range [start, end): does ``table`` have no CFI anywhere in it?"""
    pcs = table.pcs.astype(np.int64)
    after = np.searchsorted(pcs, starts, side="right")  # the first row past each start
    at = np.maximum(after - 1, 0)
    no_cfi_at_start = (after == 0) | (table.kinds[at] == NO_CFI)
    # Equal neighbours are merged in a table, so the row after a gap row starts CFI.
    last = np.iinfo(np.int64).max
    next_pc = np.where(after < len(pcs), pcs[np.minimum(after, len(pcs) - 1)], last)
    return no_cfi_at_start & (next_pc >= ends)


def _overlay(base: CfiTable, extra: CfiTable, source: str) -> CfiTable:
    """``base``'s rules where it has CFI, ``extra``'s in its gaps."""
    pcs = np.union1d(base.pcs, extra.pcs)
    ours = base.rules_at(pcs)
    theirs = _shift_expressions(extra.rules_at(pcs), len(base.expressions))
    states = np.where((ours[:, 0] != NO_CFI)[:, None], ours, theirs)
    return CfiTable.from_states(pcs, states, source, base.expressions + extra.expressions)


def _shift_expressions(states: np.ndarray, shift: int) -> np.ndarray:
    """``states`` (kind, cfa, ra, rbp) with their expression numbers moved up by ``shift``:
    each section numbers its expressions from 0, the merged table puts ``extra``'s last."""
    if shift:
        states[states[:, 0] == CFA_EXPR, 1] += shift
        for column in (2, 3):
            values = states[:, column]
            for base in (EXPR_RULE, VAL_EXPR_RULE):
                values[(values >= base) & (values < base + MAX_EXPRESSIONS)] += shift
    return states


def _section_bytes(image: ElfImage, section: SectionHeader) -> bytes:
    if section.size > _MAX_CFI_BYTES:
        raise ElfLoadError(f"{section.name} is {section.size} bytes")
    data = image.read(section.offset, section.size)
    if not section.flags & _SHF_COMPRESSED:
        return data
    try:
        return _inflate(image, section.name, data)
    except (struct.error, zlib.error) as exc:
        raise ElfLoadError(f"{section.name}: bad compressed data: {exc}") from exc


def _inflate(image: ElfImage, name: str, data: bytes) -> bytes:
    order = "<" if image.little_endian else ">"
    if image.elf_class == 64:
        ch_type, _, ch_size, _ = struct.unpack_from(order + "IIQQ", data)
        header = 24
    else:
        ch_type, ch_size, _ = struct.unpack_from(order + "III", data)
        header = 12
    if ch_type != _ELFCOMPRESS_ZLIB or ch_size > _MAX_CFI_BYTES:
        raise ElfLoadError(f"{name}: unsupported compression {ch_type}")
    return zlib.decompressobj().decompress(data[header:], ch_size)


class UnwindInfoCache(PerFileCache[FileUnwindInfo]):
    """Loads each file's CFI once; keyed by identity and build id (see module docstring).

    Thread-safe: the loader threads of both profiling types share one.
    """

    def __init__(self, budget_bytes: int = DEFAULT_CFI_TABLE_BYTES) -> None:
        super().__init__("cfi_tables", budget_bytes, "cache.cfi_table_bytes")

    def _nbytes(self, value: FileUnwindInfo) -> int:
        return value.nbytes

    def _build_id(self, value: FileUnwindInfo) -> str | None:
        return value.image.build_id

    def load(
        self,
        stream: BinaryIO,
        identity: FileIdentity | None,
        find_debug: FindDebugFrame | None = None,
    ) -> FileUnwindInfo:
        """The CFI of the file open as ``stream``; raises :class:`ElfLoadError` for a bad one.

        ``find_debug``: see :func:`load_unwind_info`.
        """
        return self._load(
            stream, identity, lambda image: self._unwind_info(stream, image, find_debug)
        )

    def _unwind_info(
        self, stream: BinaryIO, image: ElfImage, find_debug: FindDebugFrame | None
    ) -> FileUnwindInfo:
        found = self._by_build_id(image.build_id) if image.build_id else None
        if found is not None and not found.complete and find_debug is not None:
            rows = find_debug(image)
            if rows is not None:  # this copy has the debug file the cached one lacked
                found, find_debug = None, lambda _: rows
        if found is not None:
            self.hits += 1
            return found
        found = load_unwind_info(stream, image, find_debug)
        self.loads += 1
        if found.errors:
            log.warning(
                "malformed CFI skipped (%d entries, first: %s); frames there fall "
                "back to frame pointers",
                len(found.errors),
                found.errors[0],
            )
        return found
