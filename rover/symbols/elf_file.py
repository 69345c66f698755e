"""An ELF file's headers: what a symbolizer needs before (and besides) its symbols.

pyelftools parses the ELF, section and program headers. Its section and
segment *objects* are avoided on purpose: building them for ``.hash``,
``.gnu.hash`` or ``PT_DYNAMIC`` parses those tables eagerly (80 ms for
libLLVM), so only the raw headers are read.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from functools import cached_property
from typing import Any, BinaryIO

from elftools.elf.elffile import ELFFile

_PF_X = 0x1
_NT_GNU_BUILD_ID = 3
_MAX_NOTE_BYTES = 1 << 16  # build-id notes are tiny; a bigger note section is not worth reading
_MAX_SECTION_NAMES_BYTES = 1 << 20  # .shstrtab is a few hundred bytes; more is corrupt
# Memory estimates for ElfImage.nbytes (sys.getsizeof on CPython 3.11): the image with its
# attribute dict, and the int objects of one header (four for a section, three for a
# segment; most are beyond the small ints Python shares).
_IMAGE_BYTES = 600
_INT_BYTES = 32


class ElfLoadError(Exception):
    """The file is not a usable ELF file (not ELF, truncated, corrupt)."""


@dataclass(frozen=True, slots=True)
class LoadSegment:
    """A ``PT_LOAD`` program header."""

    offset: int
    vaddr: int
    filesz: int
    executable: bool


@dataclass(frozen=True, slots=True)
class SectionHeader:
    """The parts of a section header the symbol and unwind-table loaders use."""

    index: int
    name: str  # e.g. ".gnu_debuglink"; "" when the name table is unreadable
    type: str  # e.g. "SHT_SYMTAB"
    addr: int
    offset: int
    size: int
    link: int
    entsize: int
    flags: int  # SHF_* (SHF_COMPRESSED: the contents start with a compression header)


class ElfImage:
    """An opened ELF file: class, byte order, segments, sections and build id.

    Raises :class:`ElfLoadError` for anything that is not a readable ELF file.
    The stream must stay open while the image is used.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.section_names_error = ""  # why the section names could not be read, if so
        try:
            self.file_size = stream.seek(0, os.SEEK_END)
            elf = ELFFile(stream)
            self.elf_class: int = elf.elfclass
            self.little_endian: bool = elf.little_endian
            self.is_exec = elf["e_type"] == "ET_EXEC"
            self.entry: int = elf["e_entry"]
            self.segments = tuple(_load_segments(elf))
            self.sections = tuple(self._named_sections(elf))
            self.build_id = self._find_build_id()
        except ElfLoadError:
            raise
        except Exception as exc:  # pyelftools raises many types on corrupt input
            raise ElfLoadError(f"not a readable ELF file: {exc!r}") from exc

    @cached_property
    def nbytes(self) -> int:
        """Memory the headers hold (an estimate: the objects, their ints and names)."""
        sections = sum(
            sys.getsizeof(s) + sys.getsizeof(s.name) + 4 * _INT_BYTES for s in self.sections
        )
        segments = sum(sys.getsizeof(s) + 3 * _INT_BYTES for s in self.segments)
        return (
            _IMAGE_BYTES
            + sys.getsizeof(self.sections)
            + sections
            + sys.getsizeof(self.segments)
            + segments
            + (sys.getsizeof(self.build_id) if self.build_id else 0)
        )

    @property
    def has_symtab(self) -> bool:
        """Whether the file has a full symbol table (not stripped to ``.dynsym``)."""
        return any(s.type == "SHT_SYMTAB" for s in self.sections)

    def section(self, name: str) -> SectionHeader | None:
        """The first section called ``name`` that has contents in the file, if any."""
        for header in self.sections:
            if header.name == name and header.type != "SHT_NOBITS":
                return header
        return None

    def section_data(self, header: SectionHeader, limit: int) -> bytes:
        """A section's bytes; raises :class:`ElfLoadError` when it exceeds ``limit`` bytes
        or lies outside the file."""
        if header.size > limit:
            raise ElfLoadError(f"section {header.name or header.index} is {header.size} bytes")
        return self.read(header.offset, header.size)

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; raises :class:`ElfLoadError` past the end of file."""
        if offset < 0 or size < 0 or offset + size > self.file_size:
            raise ElfLoadError(f"range {offset:#x}+{size:#x} lies outside the file")
        self._stream.seek(offset)
        data = self._stream.read(size)
        if len(data) != size:
            raise ElfLoadError(f"short read at {offset:#x}")
        return data

    def file_offset(self, vaddr: int) -> int | None:
        """The file offset of virtual address ``vaddr`` (a symbol's st_value), through the
        PT_LOAD segment holding it; None when no segment's file bytes hold it."""
        for segment in self.segments:
            if segment.vaddr <= vaddr < segment.vaddr + segment.filesz:
                return vaddr - segment.vaddr + segment.offset
        return None

    def load_bias(self, map_start: int, map_offset: int, map_size: int) -> int:
        """What to subtract from a runtime address in a mapping to get a symbol's st_value.

        The mapping's file range is matched to the PT_LOAD segment it maps
        (executable segments first), not assumed to be the first mapping.
        """
        if self.is_exec:
            return 0
        segment = self._segment_for(map_offset, map_size)
        if segment is None:  # no program headers match: assume vaddr == file offset
            return map_start - map_offset
        return map_start - map_offset + segment.offset - segment.vaddr

    def _segment_for(self, map_offset: int, map_size: int) -> LoadSegment | None:
        overlapping = [
            s
            for s in self.segments
            if s.offset < map_offset + map_size and map_offset < s.offset + max(s.filesz, 1)
        ]
        for segment in overlapping:
            if segment.executable:
                return segment
        return overlapping[0] if overlapping else None

    def _find_build_id(self) -> str | None:
        for header in self.sections:
            if header.type == "SHT_NOTE" and 0 < header.size <= _MAX_NOTE_BYTES:
                found = _build_id_in_notes(self.read(header.offset, header.size), self)
                if found:
                    return found
        return None

    def _named_sections(self, elf: ELFFile) -> list[SectionHeader]:
        raw: list[Any] = [elf._get_section_header(i) for i in range(elf.num_sections())]
        names = self._section_names(elf, raw)
        return [_section_header(i, h, names) for i, h in enumerate(raw)]

    def _section_names(self, elf: ELFFile, raw: list[Any]) -> bytes:
        # A damaged name table only costs the names (which the optional sources use); the
        # loader reports it (``section_names_error``) with the file's other problems.
        try:
            index = elf.get_shstrndx()
            if not 0 < index < len(raw) or raw[index]["sh_size"] > _MAX_SECTION_NAMES_BYTES:
                return b""
            return self.read(raw[index]["sh_offset"], raw[index]["sh_size"])
        except Exception as exc:  # ElfLoadError, or whatever pyelftools raises on a bad header
            self.section_names_error = f"{type(exc).__name__}: {exc}"
            return b""


def _load_segments(elf: ELFFile) -> list[LoadSegment]:
    segments = []
    for i in range(elf.num_segments()):
        header: Any = elf._get_segment_header(i)  # raw header: see the module docstring
        if header["p_type"] == "PT_LOAD":
            segments.append(
                LoadSegment(
                    header["p_offset"],
                    header["p_vaddr"],
                    header["p_filesz"],
                    bool(header["p_flags"] & _PF_X),
                )
            )
    return segments


def _section_header(index: int, h: Any, names: bytes) -> SectionHeader:
    return SectionHeader(
        index,
        _string_at(names, h["sh_name"]),
        str(h["sh_type"]),
        h["sh_addr"],
        h["sh_offset"],
        h["sh_size"],
        h["sh_link"],
        h["sh_entsize"],
        h["sh_flags"],
    )


def _string_at(table: bytes, offset: int) -> str:
    if not 0 <= offset < len(table):
        return ""
    end = table.find(b"\0", offset)
    return table[offset : end if end >= 0 else len(table)].decode("utf-8", "replace")


def _build_id_in_notes(data: bytes, image: ElfImage) -> str | None:
    # Parsed by hand from the bounded bytes: pyelftools' iter_notes trusts the
    # note sizes and reads from the file, which a corrupt note turns into a huge read.
    order = "<" if image.little_endian else ">"
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, note_type = struct.unpack_from(order + "III", data, pos)
        name_start = pos + 12
        desc_start = name_start + _align4(namesz)
        desc_end = desc_start + descsz
        if desc_end > len(data):
            return None
        name = data[name_start : name_start + namesz].rstrip(b"\0")
        if note_type == _NT_GNU_BUILD_ID and name == b"GNU" and descsz:
            return data[desc_start:desc_end].hex()
        pos = desc_start + _align4(descsz)
    return None


def _align4(n: int) -> int:
    return (n + 3) & ~3
