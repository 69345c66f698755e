"""Every source of one ELF file's function names, merged into one table.

Best first, so at an address several sources name, the first wins:

1. a separate debug file's ``.symtab`` (found by the caller: see ``debug_files.py``);
2. the file's own ``.symtab`` and ``.dynsym``;
3. MiniDebugInfo (``.gnu_debugdata``), read only when 1 and 2 hold no ``.symtab``;
4. Go's ``.gopclntab``, read only when nothing above holds a ``.symtab``.

An optional source that is damaged is reported once and skipped: the file keeps
what the other sources give, and addresses none covers stay ``module+0xoffset``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rover.symbols.elf_file import ElfImage
from rover.symbols.elf_table import ElfSymbolTable, load_symbol_table, merge_tables
from rover.symbols.gopclntab import read_gopclntab
from rover.symbols.minidebuginfo import read_minidebuginfo
from rover.symbols.report import Reporter

# Source names, as kept in FileTable.sources.
DEBUG_FILE = "debug_file"
ELF = "elf"  # the file's own .symtab / .dynsym
MINIDEBUGINFO = "minidebuginfo"
GOPCLNTAB = "gopclntab"

_EXTRAS: tuple[tuple[str, Callable[[ElfImage], ElfSymbolTable | None]], ...] = (
    (MINIDEBUGINFO, read_minidebuginfo),
    (GOPCLNTAB, read_gopclntab),
)


@dataclass(frozen=True, slots=True)
class FileTable:
    """A file's merged table, the sources that fed it, and whether it lists every
    function (a ``.symtab`` from some source) or only the exported ones."""

    table: ElfSymbolTable
    sources: tuple[str, ...]
    complete: bool


def file_table(
    image: ElfImage, debug: ElfSymbolTable | None, reporter: Reporter | None, subject: str
) -> FileTable:
    """Merge ``image``'s own symbols with ``debug`` (its debug file's) and its extras.

    Raises :class:`ElfLoadError` only for a damaged file's own symbol tables;
    ``subject`` names the file in reports.
    """
    tables: list[ElfSymbolTable] = []
    sources: list[str] = []
    if image.section_names_error and reporter is not None:
        reporter.problem(
            ("section names", subject),
            ("section_name_errors",),
            "%s: unreadable section names (%s); sections found by name are skipped",
            subject,
            image.section_names_error,
        )
    if debug is not None and len(debug):
        tables.append(debug)
        sources.append(DEBUG_FILE)
        if reporter is not None:
            reporter.count("debug_files_used")
    own = load_symbol_table(image)
    if len(own):
        tables.append(own)
        sources.append(ELF)
    complete = DEBUG_FILE in sources or image.has_symtab
    for name, read in _EXTRAS:
        if complete:
            break
        extra = _read_extra(name, read, image, reporter, subject)
        if extra is not None and len(extra):
            tables.append(extra)
            sources.append(name)
            complete = True
    return FileTable(merge_tables(tables), tuple(sources), complete)


def _read_extra(
    name: str,
    read: Callable[[ElfImage], ElfSymbolTable | None],
    image: ElfImage,
    reporter: Reporter | None,
    subject: str,
) -> ElfSymbolTable | None:
    try:
        table = read(image)
    except Exception as exc:  # PclntabError, MiniDebugInfoError, or a surprise from bad input
        if reporter is not None:
            reporter.problem(
                (name, subject),
                (f"{name}_errors",),
                "skipping %s of %s: %s; its functions show as module+offset",
                name,
                subject,
                exc,
            )
        return None
    if table is not None and reporter is not None:
        reporter.count(f"{name}_used")
    return table
