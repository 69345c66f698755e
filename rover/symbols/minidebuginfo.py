"""MiniDebugInfo: the xz-compressed ELF file in a stripped binary's ``.gnu_debugdata``.

Fedora, RHEL and their kin strip binaries but keep, compressed inside them, a
small ELF file whose ``.symtab`` lists the functions ``.dynsym`` lacks (static
and hidden ones), as gdb's manual ("MiniDebugInfo") describes. Its symbol
values are the binary's own virtual addresses.
"""

from __future__ import annotations

import io
import lzma

from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.symbols.elf_table import ElfSymbolTable, load_symbol_table

SECTION = ".gnu_debugdata"
_MAX_COMPRESSED = 64 << 20
# Real ones decompress to a few MB; the bound stops a decompression bomb.
_MAX_DECOMPRESSED = 256 << 20


class MiniDebugInfoError(ElfLoadError):
    """``.gnu_debugdata`` is present but unusable (bad xz data, not ELF, too big)."""


def read_minidebuginfo(image: ElfImage) -> ElfSymbolTable | None:
    """The function symbols of ``image``'s MiniDebugInfo; None when it has none.

    Raises :class:`MiniDebugInfoError` for a damaged one.
    """
    header = image.section(SECTION)
    if header is None:
        return None
    try:
        embedded = decompress(image.section_data(header, _MAX_COMPRESSED))
        return load_symbol_table(ElfImage(io.BytesIO(embedded)))
    except MiniDebugInfoError:
        raise
    except ElfLoadError as exc:
        raise MiniDebugInfoError(f"{SECTION}: {exc}") from exc


def decompress(data: bytes) -> bytes:
    """The xz stream ``data``, decompressed; raises :class:`MiniDebugInfoError`."""
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        raw = decompressor.decompress(data, max_length=_MAX_DECOMPRESSED)
    except lzma.LZMAError as exc:
        raise MiniDebugInfoError(f"{SECTION} is not valid xz data: {exc}") from exc
    if not decompressor.eof:
        problem = "is truncated" if decompressor.needs_input else "decompresses to over 256 MB"
        raise MiniDebugInfoError(f"{SECTION} {problem}")
    return raw
