"""Function names of Go binaries from ``.gopclntab``, which ``-ldflags="-s -w"`` keeps.

The Go runtime needs its pc/line table to print stack traces, so a stripped Go
binary still has every function's entry address and name. Layouts read here
(Go's ``runtime/symtab.go`` ``pcHeader``; ``debug/gosym`` reads the same): after
the magic, two pad bytes, minLC and ptrSize come pointer-sized words:

* 0xfffffffa, Go 1.16-1.17: nfunc nfiles funcname cu filetab pctab pcln
* 0xfffffff0, Go 1.18-1.19: nfunc nfiles textStart funcname cu filetab pctab pcln
* 0xfffffff1, Go 1.20+: as 1.18

The function table at ``pcln`` holds ``nfunc`` pairs (entry, offset of the
function's ``_func`` from ``pcln``) and then the end of the last function.
Entries are absolute words before 1.18 and 32-bit offsets from the start of
text since. A ``_func`` starts with the entry and then ``nameoff`` (int32), an
offset into the name table. Everything is read as numpy arrays, no per-function
Python loop; names stay offsets until looked up.
"""

from __future__ import annotations

import struct

import numpy as np

from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.symbols.elf_table import ElfSymbolTable

SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")  # the second in PIE binaries
_LAYOUTS = {0xFFFFFFFA: 116, 0xFFFFFFF0: 118, 0xFFFFFFF1: 120}
_OLD_MAGIC = 0xFFFFFFFB  # Go 1.2-1.15: not read (their names are in .symtab unless stripped)
_MAX_PCLNTAB = 1 << 30


class PclntabError(ElfLoadError):
    """``.gopclntab`` is present but damaged or of a layout not read here."""


def read_gopclntab(image: ElfImage) -> ElfSymbolTable | None:
    """The functions in ``image``'s pclntab; None when it has no pclntab section.

    Raises :class:`PclntabError` for a damaged or unsupported one.
    """
    header = next((h for name in SECTIONS if (h := image.section(name)) is not None), None)
    if header is None:
        return None
    text = image.section(".text")
    text_range = (text.addr, text.addr + text.size) if text is not None else None
    try:
        data = image.section_data(header, _MAX_PCLNTAB)
    except ElfLoadError as exc:
        raise PclntabError(f"{header.name}: {exc}") from exc
    return parse_pclntab(data, image.little_endian, text_range)


def parse_pclntab(
    data: bytes, little_endian: bool = True, text_range: tuple[int, int] | None = None
) -> ElfSymbolTable:
    """The function table of the pclntab ``data``.

    ``text_range`` is the ``.text`` section's address range: Go 1.18+ offsets
    are from the start of text, and the header's own copy of that address may
    be unrelocated (zero) in position-independent files.
    Raises :class:`PclntabError` for anything inconsistent.
    """
    order = "<" if little_endian else ">"
    if len(data) < 8:
        raise PclntabError("pclntab shorter than its header")
    magic, pad1, pad2, min_lc, ptr_size = struct.unpack_from(order + "IBBBB", data)
    layout = _LAYOUTS.get(magic)
    if layout is None:
        old = " (Go 1.2-1.15, not supported)" if magic == _OLD_MAGIC else ""
        raise PclntabError(f"unknown pclntab magic {magic:#x}{old}")
    if pad1 or pad2 or ptr_size not in (4, 8) or min_lc not in (1, 2, 4):
        raise PclntabError("pclntab header is damaged")
    word = "I" if ptr_size == 4 else "Q"
    count = 7 if layout == 116 else 8
    if len(data) < 8 + count * ptr_size:
        raise PclntabError("pclntab shorter than its header")
    words = struct.unpack_from(order + word * count, data, 8)
    nfunc = words[0]
    offsets = words[2:] if layout == 116 else words[3:]  # funcname, cu, filetab, pctab, pcln
    names_start, pcln = offsets[0], offsets[-1]
    field = 4 if layout >= 118 else ptr_size
    if not 0 < pcln < len(data) or not 0 < nfunc <= (len(data) - pcln) // (2 * field) - 1:
        raise PclntabError(f"pclntab function table ({nfunc} functions) lies outside the section")
    if not 8 + count * ptr_size <= names_start < len(data):
        raise PclntabError("pclntab name table lies outside the section")
    # The name table ends where the next table begins.
    names_end = min([o for o in offsets[1:] if names_start < o <= len(data)] or [len(data)])

    unsigned = np.dtype(order + ("u4" if field == 4 else "u8"))
    table = np.frombuffer(data, dtype=unsigned, count=2 * nfunc + 1, offset=pcln)
    # Even words: each function's entry, then the end of the last function.
    bounds = table[0::2].astype(np.uint64)
    if layout >= 118:
        bounds += np.uint64(_text_start(words[2], text_range))
    if np.any(bounds[1:] < bounds[:-1]):
        raise PclntabError("pclntab function entries are out of order")
    func_offsets = table[1::2].astype(np.uint64)
    name_offsets = _name_offsets(data, order, pcln, func_offsets, field)
    if np.any(name_offsets < 0) or np.any(name_offsets >= names_end - names_start):
        raise PclntabError("pclntab name offsets point outside the name table")
    entries = bounds[:-1]
    first = np.ones(len(entries), dtype=bool)
    first[1:] = entries[1:] != entries[:-1]
    starts = entries[first]
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1] = bounds[-1]
    strings = data[names_start:names_end]
    return ElfSymbolTable(starts, ends, name_offsets[first], strings)


def _text_start(from_header: int, text_range: tuple[int, int] | None) -> int:
    if text_range is None or text_range[0] <= from_header < text_range[1]:
        return from_header
    return text_range[0]


def _name_offsets(
    data: bytes, order: str, pcln: int, func_offsets: np.ndarray, field: int
) -> np.ndarray:
    """Each ``_func``'s ``nameoff`` (the int32 after its entry), gathered in one go."""
    if np.any(func_offsets > np.uint64(len(data) - pcln - field - 4)):
        raise PclntabError("pclntab function records lie outside the section")
    positions = func_offsets.astype(np.int64) + (pcln + field)
    raw = np.frombuffer(data, dtype=np.uint8)
    gathered = raw[positions[:, None] + np.arange(4)]
    return gathered.view(np.dtype(order + "i4")).ravel().astype(np.int64)
