"""Loading a file's CFI table once and sharing it across processes.

``.eh_frame`` is preferred (it is what the C++ runtime itself unwinds with);
``.debug_frame`` is used when a file has no ``.eh_frame`` (compressed
``.debug_frame`` sections, as Go writes them, are inflated first). Tables are
keyed like the symbol tables (``rover.symbols.cache``): by GNU build id when
the file has one, and by on-disk identity; files that failed are remembered so
a corrupt library is parsed and reported once.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

from elftools.elf.elffile import ELFFile

from rover.symbols.cache import FileIdentity, PerFileCache
from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.unwind.cfi import decode_rows
from rover.unwind.cfi_table import CfiTable

log = logging.getLogger(__name__)

_SHF_COMPRESSED = 0x800
_ELFCOMPRESS_ZLIB = 1
_MAX_CFI_BYTES = 256 << 20  # libLLVM's .eh_frame is 5 MiB; far more is a corrupt header


@dataclass(frozen=True, slots=True)
class FileUnwindInfo:
    """A file's CFI table and its headers (for load biases)."""

    table: CfiTable
    image: ElfImage
    errors: tuple[str, ...] = ()  # malformed entries skipped while decoding


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    addr: int
    offset: int
    size: int
    flags: int


def load_unwind_info(stream: BinaryIO, image: ElfImage | None = None) -> FileUnwindInfo:
    """Decode the CFI of the ELF file open as ``stream``.

    Raises :class:`ElfLoadError` for a file that is not ELF. A file without CFI
    gets an empty table; malformed CFI keeps the entries decoded before it.
    """
    image = image or ElfImage(stream)
    try:
        sections = {s.name: s for s in read_sections(stream)}
    except Exception as exc:  # pyelftools raises many types on corrupt headers
        raise ElfLoadError(f"unreadable section headers: {exc!r}") from exc
    errors: list[str] = []
    for name, is_eh_frame in ((".eh_frame", True), (".debug_frame", False)):
        section = sections.get(name)
        if section is None or section.size == 0:
            continue
        data = _section_bytes(image, section)
        rows = decode_rows(data, section.addr, is_eh_frame, errors)
        return FileUnwindInfo(CfiTable.from_rows(rows, name), image, tuple(errors))
    return FileUnwindInfo(CfiTable.empty(), image)


def read_sections(stream: BinaryIO) -> list[Section]:
    """Named section headers with contents (not SHT_NOBITS), from the raw headers."""
    elf = ELFFile(stream)
    raw: list[Any] = [elf._get_section_header(i) for i in range(elf.num_sections())]
    index = elf["e_shstrndx"]
    if not 0 < index < len(raw):
        return []
    stream.seek(raw[index]["sh_offset"])
    names = stream.read(min(raw[index]["sh_size"], 1 << 20))
    out = []
    for h in raw:
        if h["sh_type"] == "SHT_NOBITS":
            continue
        start = h["sh_name"]
        end = names.find(b"\0", start)
        name = names[start:end].decode("ascii", "replace") if 0 <= start < end else ""
        out.append(Section(name, h["sh_addr"], h["sh_offset"], h["sh_size"], h["sh_flags"]))
    return out


def _section_bytes(image: ElfImage, section: Section) -> bytes:
    if section.size > _MAX_CFI_BYTES:
        raise ElfLoadError(f"{section.name} is {section.size} bytes")
    data = image.read(section.offset, section.size)
    if not section.flags & _SHF_COMPRESSED:
        return data
    order = "<" if image.little_endian else ">"
    if image.elf_class == 64:
        ch_type, _, ch_size, _ = struct.unpack_from(order + "IIQQ", data)
        header = 24
    else:
        ch_type, ch_size, _ = struct.unpack_from(order + "III", data)
        header = 12
    if ch_type != _ELFCOMPRESS_ZLIB or ch_size > _MAX_CFI_BYTES:
        raise ElfLoadError(f"{section.name}: unsupported compression {ch_type}")
    inflater = zlib.decompressobj()
    out = inflater.decompress(data[header:], ch_size)
    return out


class UnwindInfoCache(PerFileCache[FileUnwindInfo]):
    """Loads each file's CFI once; keyed by identity and build id (see module docstring)."""

    def __init__(self, capacity: int = 256) -> None:
        super().__init__(capacity)

    def load(self, stream: BinaryIO, identity: FileIdentity | None) -> FileUnwindInfo:
        """The CFI of the file open as ``stream``; raises :class:`ElfLoadError` for a bad one."""
        return self._load(stream, identity, lambda image: self._unwind_info(stream, image))

    def _unwind_info(self, stream: BinaryIO, image: ElfImage) -> FileUnwindInfo:
        found = self._by_build_id.get(image.build_id) if image.build_id else None
        if found is not None:
            self.hits += 1
            return found
        found = load_unwind_info(stream, image)
        self.loads += 1
        if found.errors:
            log.warning(
                "malformed CFI skipped (%d entries, first: %s); frames there fall "
                "back to frame pointers",
                len(found.errors),
                found.errors[0],
            )
        if image.build_id:
            self._by_build_id.put(image.build_id, found)
        return found
