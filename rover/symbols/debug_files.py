"""Separate debug files: the full ``.symtab`` (and ``.debug_frame``) of a stripped
binary, kept elsewhere.

Found as gdb finds them ("Separate Debug Files" in its manual), in this order:

1. by build id: ``/usr/lib/debug/.build-id/ab/cdef....debug`` (its build id must match);
2. by ``.gnu_debuglink`` (a file name and the CRC32 of that whole file), next to
   the binary, in ``.debug/`` beside it, and under ``/usr/lib/debug/<binary's dir>/``.

Each place is looked up inside the target process's root (its container's
files, resolved inside that root: see :mod:`rover.rooted_open`) first, then,
for the places under ``/usr/lib/debug``, inside the host's root. A debug-link
candidate whose CRC does not match is another build's file: it is skipped,
counted and logged. A debug file's symbol values (and CFI addresses) are the
binary's virtual addresses, so the binary's program headers still give the
load bias. The symbolizer and the unwinder (``rover.unwind.tables``) share
this one locator, each with its own reader and counters.
"""

from __future__ import annotations

import errno
import os
import posixpath
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from rover.byte_cache import INT_BYTES, ByteLru, CacheStats
from rover.hostfs import HostFS, ProcessGone
from rover.symbols.cache import FileIdentity, file_identity
from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.symbols.elf_table import ElfSymbolTable, load_symbol_table
from rover.symbols.report import Reporter

DEBUG_ROOT = "/usr/lib/debug"
_MAX_LINK_BYTES = 4096
_CRC_CHUNK = 1 << 20
_MAX_DEBUG_FILE = 4 << 30  # the debug info of the biggest libraries is ~2 GB
_NOT_THERE = {errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP}
# CRCs remembered, by bytes: an entry is a file identity (a tuple of four ints) and an int.
_CRC_ENTRY_BYTES = sys.getsizeof((0, 0, 0, 0)) + 5 * INT_BYTES
DEBUG_FILE_CRC_BYTES = 128 << 10  # about 330 files

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DebugLink:
    """The contents of ``.gnu_debuglink``: a file name and that file's CRC32."""

    name: str
    crc: int


def read_debug_link(image: ElfImage) -> DebugLink | None:
    """``image``'s debug link, or None when it has none (or an unusable one)."""
    header = image.section(".gnu_debuglink")
    if header is None:
        return None
    data = image.section_data(header, _MAX_LINK_BYTES)
    end = data.find(b"\0")
    if end <= 0:
        return None
    crc_at = (end + 4) & ~3  # the name, its NUL, padding to 4 bytes, then the CRC
    if crc_at + 4 > len(data):
        return None
    name = data[:end].decode("utf-8", "replace")
    if "/" in name or name in (".", ".."):
        return None  # a bare file name by definition; anything else is not followed
    (crc,) = struct.unpack_from("<I" if image.little_endian else ">I", data, crc_at)
    return DebugLink(name, crc)


class DebugFiles:
    """Finds and verifies the debug file of a stripped binary, then reads it.

    One locator for every reader (symbols here, ``.debug_frame`` for the
    unwinder), so the search order lives in one place: :meth:`find`.
    """

    def __init__(
        self,
        hostfs: HostFS,
        reporter: Reporter,
        error_counter: str = "debug_file_errors",
        crc_counter: str | None = "debug_link_crc_mismatches",
        purpose: str = "symbols",
    ) -> None:
        self._hostfs = hostfs
        self._reporter = reporter
        self._purpose = purpose  # what the debug file was wanted for, in warnings
        self._error_counter = error_counter
        self._crc_counter = crc_counter
        # CRC32 of candidate files by identity: hashing a big debug file once is enough.
        self._crcs: ByteLru[FileIdentity, int] = ByteLru(
            f"debug_file_crcs_{purpose}", DEBUG_FILE_CRC_BYTES
        )

    def cache_stats(self) -> CacheStats:
        return self._crcs.stats()

    def symbols_for(
        self, image: ElfImage, pid: int, binary_path: str, binary: FileIdentity | None
    ) -> ElfSymbolTable | None:
        """The function symbols of ``image``'s debug file, None when none is found.

        ``binary_path`` is the binary's path as process ``pid`` sees it.
        """
        return self.find(image, pid, binary_path, binary, lambda debug, _: load_symbol_table(debug))

    def find(
        self,
        image: ElfImage,
        pid: int,
        binary_path: str,
        binary: FileIdentity | None,
        read: Callable[[ElfImage, BinaryIO], T],
    ) -> T | None:
        """``read(debug image, its stream)`` of the first usable debug file of ``image``.

        None when there is none. A candidate that fails its checks, or whose
        ``read`` raises, is reported once and the search goes on.
        """
        seen: set[FileIdentity] = {binary} if binary else set()
        for place, link in self._candidates(image, pid, binary_path):
            found = self._try(place, image, link, seen, read)
            if found is not None:
                return found
        return None

    def _candidates(
        self, image: ElfImage, pid: int, binary_path: str
    ) -> Iterator[tuple[_Place, DebugLink | None]]:
        """Where ``image``'s debug file may be, in gdb's order (see the module docstring)."""
        if image.build_id and len(image.build_id) > 2:
            relative = f".build-id/{image.build_id[:2]}/{image.build_id[2:]}.debug"
            for place in self._places(pid, posixpath.join(DEBUG_ROOT, relative)):
                yield place, None
        try:
            link = read_debug_link(image)
        except ElfLoadError:
            link = None
        if link is None:
            return
        directory = posixpath.dirname(binary_path) or "/"
        for candidate in (
            posixpath.join(directory, link.name),
            posixpath.join(directory, ".debug", link.name),
            posixpath.join(DEBUG_ROOT + directory, link.name),
        ):
            for place in self._places(pid, candidate):
                yield place, link

    def _places(self, pid: int, path: str) -> Iterator[_Place]:
        """In the target's root; on the host too, but only under the host's debug root:
        the target names these paths, and the rest of the host is none of its business."""
        yield _Place(path, pid, str(self._hostfs.target_path(pid, path)))
        if path.startswith(DEBUG_ROOT + "/") and ".." not in path.split("/"):
            yield _Place(path, None, str(self._hostfs.host_path(path)))

    def _open(self, place: _Place) -> tuple[BinaryIO, os.stat_result]:
        if place.pid is None:
            return self._hostfs.open_host_file(place.path, _MAX_DEBUG_FILE)
        return self._hostfs.open_target_file(place.pid, place.path, _MAX_DEBUG_FILE)

    def _try(
        self,
        place: _Place,
        image: ElfImage,
        link: DebugLink | None,
        seen: set[FileIdentity],
        read: Callable[[ElfImage, BinaryIO], T],
    ) -> T | None:
        try:
            stream, st = self._open(place)
        except ProcessGone:
            return None
        except OSError as exc:
            if exc.errno not in _NOT_THERE:
                self._reject(place, f"cannot open it: {exc.strerror or exc}")
            return None
        with stream:
            try:
                identity = file_identity(st)
                if identity in seen:
                    return None  # the same file through the other root, or the binary itself
                seen.add(identity)
                if link is not None and self._crc(stream, identity) != link.crc:
                    self._reject(place, "its CRC32 does not match the debug link", crc=True)
                    return None
                debug = ElfImage(stream)
                if image.build_id and debug.build_id and debug.build_id != image.build_id:
                    self._reject(place, f"its build id {debug.build_id} is not the binary's")
                    return None
                return read(debug, stream)
            except (OSError, ElfLoadError) as exc:
                self._reject(place, str(exc))
            except Exception as exc:  # untrusted input: any other failure is a bad file too
                self._reject(place, repr(exc))
        return None

    def _crc(self, stream: BinaryIO, identity: FileIdentity) -> int:
        crc = self._crcs.get(identity)
        if crc is None:
            crc = 0
            stream.seek(0)
            while chunk := stream.read(_CRC_CHUNK):
                crc = zlib.crc32(chunk, crc)
            self._crcs.put(identity, crc, _CRC_ENTRY_BYTES)
        return crc

    def _reject(self, place: _Place, reason: str, crc: bool = False) -> None:
        counters: tuple[str, ...] = (self._error_counter,)
        if crc and self._crc_counter:
            counters += (self._crc_counter,)
        self._reporter.problem(
            ("debug file", str(place), reason),
            counters,
            "skipping debug file %s for %s: %s",
            place,
            self._purpose,
            reason,
        )


@dataclass(frozen=True, slots=True)
class _Place:
    """A candidate debug file: ``path`` inside process ``pid``'s root, or the host's."""

    path: str
    pid: int | None
    shown: str  # where it is as seen from here, for messages

    def __str__(self) -> str:
        return self.shown
