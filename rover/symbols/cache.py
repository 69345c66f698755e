"""ELF symbol tables loaded once per file and shared by every process.

Two keys find a loaded file: its identity on disk (device, inode, size,
mtime), checked with one ``stat`` before opening anything, and its GNU build
id, which matches the same binary reached by different paths (the same
library in many containers). Files without a build id are keyed by identity
only. Files that failed to load are remembered too, so a corrupt library
mapped by a hundred processes is parsed (and reported) once.

A build id names the linker's output, so a stripped copy and the original
share one entry. An entry is *complete* when some source gave it a full symbol
table (its own ``.symtab``, a debug file, MiniDebugInfo, Go's pclntab); an
incomplete one (``.dynsym`` only) is replaced when the same build id turns up
with more, e.g. unstripped, or in a container that has its debug file installed.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, Generic, TypeVar

from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.symbols.elf_table import ElfSymbolTable
from rover.symbols.report import Reporter
from rover.symbols.sources import file_table

K = TypeVar("K")
V = TypeVar("V")

FileIdentity = tuple[int, int, int, int]


def file_identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class LruCache(Generic[K, V]):
    """A dict that forgets its least recently used entries beyond ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class ElfSymbols:
    """One loaded file: its function symbols and its headers (for load biases)."""

    table: ElfSymbolTable
    image: ElfImage  # headers only: its stream is closed once loading is done
    sources: tuple[str, ...] = ()  # see sources.py: "debug_file", "elf", "gopclntab"...
    complete: bool = True  # a full symbol table, not only exported functions


class KnownBadFile(ElfLoadError):
    """A file that already failed to load (and was reported then)."""


class PerFileCache(Generic[V]):
    """Something computed once per ELF file, found again by identity or build id.

    Subclasses compute the value from the file's headers (``_compute``) and
    may look it up by build id there; this class keeps the identity key and
    remembers files that failed, so each bad file is parsed (and reported) once.
    """

    def __init__(self, capacity: int) -> None:
        self._by_identity: LruCache[FileIdentity, V] = LruCache(capacity)
        self._by_build_id: LruCache[str, V] = LruCache(capacity)
        self._failed: LruCache[FileIdentity, str] = LruCache(capacity)
        self.loads = 0  # files parsed
        self.hits = 0  # files served from the cache

    def cached(self, identity: FileIdentity) -> V | None:
        """The value of the file with this identity, if computed before.

        Raises :class:`KnownBadFile` for a file that failed before.
        """
        found = self._by_identity.get(identity)
        if found is not None:
            self.hits += 1
            return found
        reason = self._failed.get(identity)
        if reason is not None:
            raise KnownBadFile(reason)
        return None

    def _load(
        self, stream: BinaryIO, identity: FileIdentity | None, compute: Callable[[ElfImage], V]
    ) -> V:
        """``compute`` the value of the file open as ``stream``; bad files raise ElfLoadError."""
        try:
            found = compute(ElfImage(stream))
        except ElfLoadError as exc:
            self._remember_failure(identity, str(exc))
            raise
        except Exception as exc:  # untrusted input: any other failure also means "bad file"
            self._remember_failure(identity, repr(exc))
            raise ElfLoadError(repr(exc)) from exc
        if identity is not None:
            self._by_identity.put(identity, found)
        return found

    def _remember_failure(self, identity: FileIdentity | None, reason: str) -> None:
        if identity is not None:
            self._failed.put(identity, reason)


class ElfSymbolsCache(PerFileCache[ElfSymbols]):
    """Loads each ELF file's symbols once; see the module docstring for the keys."""

    def __init__(self, capacity: int = 512, reporter: Reporter | None = None) -> None:
        super().__init__(capacity)
        self._reporter = reporter

    def load(
        self,
        stream: BinaryIO,
        identity: FileIdentity | None,
        find_debug: Callable[[ElfImage], ElfSymbolTable | None] | None = None,
        subject: str = "",
    ) -> ElfSymbols:
        """Symbols of the ELF file open as ``stream`` (shared when the build id is known).

        ``find_debug`` gives the symbols of the file's separate debug file, if
        any; it is asked only for files without their own ``.symtab``.
        ``subject`` names the file in reports. Raises :class:`ElfLoadError`
        (remembered under ``identity``) for a bad file.
        """
        return self._load(stream, identity, lambda image: self._symbols(image, find_debug, subject))

    def _symbols(
        self,
        image: ElfImage,
        find_debug: Callable[[ElfImage], ElfSymbolTable | None] | None,
        subject: str,
    ) -> ElfSymbols:
        found = self._by_build_id.get(image.build_id) if image.build_id else None
        debug = None
        if not (found is not None and found.complete) and not image.has_symtab and find_debug:
            debug = find_debug(image)
        if found is not None and (found.complete or (debug is None and not image.has_symtab)):
            self.hits += 1
            return found
        loaded = file_table(image, debug, self._reporter, subject)
        found = ElfSymbols(loaded.table, image, loaded.sources, loaded.complete)
        self.loads += 1
        if image.build_id:
            self._by_build_id.put(image.build_id, found)
        return found
