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

Memory is bounded in bytes (``cache.symbol_table_bytes``): every entry (a table,
or a failure) lives in one :class:`~rover.byte_cache.ByteLru`, charged for its
arrays, strings and headers and for each file identity that leads to it; the
least recently used go first. A table evicted while a profiled process maps its
file stays in that process's address space until the process is forgotten, and
is loaded again for the next process that maps the file.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import BinaryIO, Generic, TypeVar

from rover.byte_cache import INT_BYTES, ByteLru, CacheStats, str_bytes
from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.symbols.elf_table import ElfSymbolTable
from rover.symbols.report import Reporter
from rover.symbols.sources import file_table

log = logging.getLogger(__name__)

V = TypeVar("V")

FileIdentity = tuple[int, int, int, int]

DEFAULT_SYMBOL_TABLE_BYTES = 20 << 20  # cache.symbol_table_bytes
# What one file identity costs where it is kept: its tuple of four ints and a slot in
# the identity index.
_IDENTITY_BYTES = sys.getsizeof((0, 0, 0, 0)) + 4 * INT_BYTES + 104
_FAILURE_BYTES = 96  # a failure entry's own object, besides its reason and identity
_MAX_REASON = 1000  # characters of a failure's reason kept
# Store keys: ("build-id", id) for files with a build id, else ("file", identity).
_BUILD_ID = "build-id"
_FILE = "file"


def file_identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class ElfSymbols:
    """One loaded file: its function symbols and its headers (for load biases)."""

    table: ElfSymbolTable
    image: ElfImage  # headers only: its stream is closed once loading is done
    sources: tuple[str, ...] = ()  # see sources.py: "debug_file", "elf", "gopclntab"...
    complete: bool = True  # a full symbol table, not only exported functions

    @property
    def nbytes(self) -> int:
        """Memory held (see ``ElfSymbolTable.nbytes``, ``ElfImage.nbytes``)."""
        return self.table.nbytes + self.image.nbytes + sys.getsizeof(self.sources)


class KnownBadFile(ElfLoadError):
    """A file that already failed to load (and was reported then)."""


@dataclass(slots=True)
class _Entry(Generic[V]):
    """A value (None for a file that failed: ``failure`` says why) and the identities
    that lead to it through the identity index."""

    value: V | None
    failure: str = ""
    size: int = 0  # bytes of the value (or failure) alone
    aliases: set[FileIdentity] = field(default_factory=set)

    @property
    def charged(self) -> int:
        return self.size + _IDENTITY_BYTES * len(self.aliases)


class PerFileCache(Generic[V]):
    """Something computed once per ELF file, found again by identity or build id.

    Subclasses compute the value from the file's headers (``_compute``) and
    may look it up by build id there (:meth:`_by_build_id`); this class keeps the
    identity key and remembers files that failed, so each bad file is parsed (and
    reported) once. Everything is held within ``budget_bytes`` (see the module
    docstring); ``setting`` names the configuration key in messages.
    """

    def __init__(self, name: str, budget_bytes: int, setting: str) -> None:
        self._store: ByteLru[tuple[str, Hashable], _Entry[V]] = ByteLru(
            name, budget_bytes, self._evicted
        )
        self._by_identity: dict[FileIdentity, tuple[str, Hashable]] = {}
        self._setting = setting
        self._refusal_logged = False
        self._lock = threading.RLock()  # the index and the store change together
        self.loads = 0  # files parsed
        self.hits = 0  # files served from the cache

    def _nbytes(self, value: V) -> int:
        """Memory ``value`` holds."""
        raise NotImplementedError

    def _build_id(self, value: V) -> str | None:
        raise NotImplementedError

    def stats(self) -> CacheStats:
        return self._store.stats()

    def cached(self, identity: FileIdentity) -> V | None:
        """The value of the file with this identity, if computed before.

        Raises :class:`KnownBadFile` for a file that failed before.
        """
        with self._lock:
            key = self._by_identity.get(identity, (_FILE, identity))
            entry = self._store.get(key)
            if entry is None:
                self._by_identity.pop(identity, None)
                return None
            if entry.value is None:
                raise KnownBadFile(entry.failure)
            self.hits += 1
            return entry.value

    def _by_build_id(self, build_id: str) -> V | None:
        with self._lock:
            entry = self._store.get((_BUILD_ID, build_id))
            return None if entry is None else entry.value

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
        self._remember(identity, found)
        return found

    def _remember(self, identity: FileIdentity | None, value: V) -> None:
        """Keep ``value`` under its build id (else ``identity``), reachable from
        ``identity``; a value already kept under its build id gains the identity."""
        build_id = self._build_id(value)
        with self._lock:
            key: tuple[str, Hashable]
            if build_id:
                key = (_BUILD_ID, build_id)
                entry = self._store.peek(key)
                if entry is None or entry.value is not value:
                    # New, or a fuller table of the same build: the old identities follow it.
                    aliases = entry.aliases if entry is not None else set()
                    entry = _Entry(value, "", self._nbytes(value), aliases)
                if identity is not None:
                    entry.aliases.add(identity)
                    self._by_identity[identity] = key
            elif identity is not None:
                key = (_FILE, identity)
                entry = _Entry(value, "", self._nbytes(value))
            else:
                return
            if not self._store.put(key, entry, entry.charged):
                self._forget_aliases(key, entry)
                self._refused(entry.charged)

    def _remember_failure(self, identity: FileIdentity | None, reason: str) -> None:
        if identity is None:
            return
        reason = reason[:_MAX_REASON]
        size = _FAILURE_BYTES + _IDENTITY_BYTES + str_bytes(reason)
        with self._lock:
            self._store.put((_FILE, identity), _Entry(None, reason, size), size)

    def _evicted(self, key: tuple[str, Hashable], entry: _Entry[V]) -> None:
        with self._lock:
            self._forget_aliases(key, entry)

    def _forget_aliases(self, key: tuple[str, Hashable], entry: _Entry[V]) -> None:
        for identity in entry.aliases:
            if self._by_identity.get(identity) == key:
                del self._by_identity[identity]

    def _refused(self, size: int) -> None:
        level = logging.DEBUG if self._refusal_logged else logging.WARNING
        self._refusal_logged = True
        log.log(
            level,
            "a file's tables (%d KiB) exceed %s (%d KiB): not cached, loaded again for each "
            "process that maps the file",
            size >> 10,
            self._setting,
            self._store.budget_bytes >> 10,
        )


class ElfSymbolsCache(PerFileCache[ElfSymbols]):
    """Loads each ELF file's symbols once; see the module docstring for the keys."""

    def __init__(
        self, budget_bytes: int = DEFAULT_SYMBOL_TABLE_BYTES, reporter: Reporter | None = None
    ) -> None:
        super().__init__("symbol_tables", budget_bytes, "cache.symbol_table_bytes")
        self._reporter = reporter

    def _nbytes(self, value: ElfSymbols) -> int:
        return value.nbytes

    def _build_id(self, value: ElfSymbols) -> str | None:
        return value.image.build_id

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
        found = self._by_build_id(image.build_id) if image.build_id else None
        debug = None
        if not (found is not None and found.complete) and not image.has_symtab and find_debug:
            debug = find_debug(image)
        if found is not None and (found.complete or (debug is None and not image.has_symtab)):
            self.hits += 1
            return found
        loaded = file_table(image, debug, self._reporter, subject)
        found = ElfSymbols(loaded.table, image, loaded.sources, loaded.complete)
        self.loads += 1
        return found
