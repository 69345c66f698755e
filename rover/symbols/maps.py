"""Parsing ``/proc/PID/maps`` into the executable mappings a symbolizer needs."""

from __future__ import annotations

import enum
import posixpath
from dataclasses import dataclass

_DELETED_SUFFIX = " (deleted)"


class MappingKind(enum.Enum):
    FILE = "file"  # backed by a file we can open (maybe deleted: see Mapping.deleted)
    VDSO = "vdso"  # the kernel's vDSO: an ELF image that only lives in memory
    ANONYMOUS = "anonymous"  # no file: JIT code, trampolines
    SPECIAL = "special"  # other pseudo paths such as [vsyscall]


@dataclass(frozen=True, slots=True)
class Mapping:
    """One executable mapping of a process."""

    start: int
    end: int
    offset: int  # file offset of ``start``
    dev: str  # "major:minor" as printed by the kernel
    inode: int
    path: str  # without the " (deleted)" marker; "" for anonymous mappings
    deleted: bool
    kind: MappingKind
    module: str  # the name frames show: a file's basename, "[vdso]", "[anon]"...

    @property
    def map_files_name(self) -> str:
        """The entry of ``/proc/PID/map_files`` that opens this mapping's file."""
        return f"{self.start:x}-{self.end:x}"

    def file_offset(self, address: int) -> int:
        """The file offset (for file mappings) an address in this mapping corresponds to."""
        return address - self.start + self.offset


def parse_maps(text: str) -> list[Mapping]:
    """The executable mappings in ``/proc/PID/maps`` text, sorted by start address.

    Malformed lines are skipped: the file comes from the kernel, but a bad line
    must never cost us the others.
    """
    mappings = []
    for line in text.splitlines():
        mapping = _parse_line(line)
        if mapping is not None:
            mappings.append(mapping)
    mappings.sort(key=lambda m: m.start)
    return mappings


def _parse_line(line: str) -> Mapping | None:
    # address perms offset dev inode [path]; the path may itself contain spaces.
    fields = line.split(maxsplit=5)
    if len(fields) < 5 or "x" not in fields[1]:
        return None
    try:
        start_text, end_text = fields[0].split("-", 1)
        start, end = int(start_text, 16), int(end_text, 16)
        offset = int(fields[2], 16)
        inode = int(fields[4])
    except ValueError:
        return None
    path = fields[5].strip() if len(fields) == 6 else ""
    deleted = path.endswith(_DELETED_SUFFIX)
    if deleted:
        path = path[: -len(_DELETED_SUFFIX)]
    kind = _kind_of(path)
    return Mapping(start, end, offset, fields[3], inode, path, deleted, kind, _module(path, kind))


def _kind_of(path: str) -> MappingKind:
    if not path:
        return MappingKind.ANONYMOUS
    if path == "[vdso]":
        return MappingKind.VDSO
    if path.startswith("["):
        return MappingKind.SPECIAL
    if path.startswith("/"):
        return MappingKind.FILE
    # e.g. "//anon" or memfd names ("/memfd:jit (deleted)" starts with "/", handled above)
    return MappingKind.ANONYMOUS


def _module(path: str, kind: MappingKind) -> str:
    if kind is MappingKind.ANONYMOUS:
        return "[anon]"
    if kind is MappingKind.FILE:
        return posixpath.basename(path) or path
    return path
