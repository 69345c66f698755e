"""JIT symbols from perf maps: ``/tmp/perf-PID.map``, one ``START SIZE name`` a line.

Written by Node.js (``--perf-basic-prof``), the JVM (``jcmd PID
Compiler.perfmap``), Python 3.12+ (``-X perf``) and other JITs for code that
lives in anonymous memory, which no ELF file describes. START and SIZE are hex
(``0x`` optional); the name is the rest of the line.

The file is read inside the target's root (``/proc/PID/root/tmp/...``) and its
name carries the process's pid *in its own pid namespace* (the last ``NSpid``
of ``/proc/PID/status``). JITs append to it while they run, so an address it
does not know makes us check the file's size (at most every
:data:`RECHECK_SECONDS`) and read only what was appended; a file that shrank
or was replaced is read anew. Garbage lines are skipped and counted.

Memory is bounded: 24 bytes a line (its range and where it is in the file;
names are read back from the file when needed), and the frames already named.
The symbolizer keeps every process's map in one cache bounded in bytes
(``cache.perf_map_bytes``, least recently used maps out first); one map reads
at most half of that budget's worth of lines (and :data:`_MAX_ENTRIES`; lines
after those are not read, with one warning) and remembers at most a quarter's
worth of frames, so it always fits.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import time
import weakref
from typing import BinaryIO

import numpy as np

from rover.byte_cache import INT_BYTES
from rover.hostfs import HostFS, ProcessGone
from rover.profile import Frame, FrameKind
from rover.symbols.demangle import demangle
from rover.symbols.report import Reporter

RECHECK_SECONDS = 0.05
_LINE = re.compile(
    rb"^[ \t]*(?:0x)?([0-9a-fA-F]{1,16})[ \t]+(?:0x)?([0-9a-fA-F]{1,16})[ \t]+([^\s][^\n]*)$",
    re.MULTILINE,
)
_MAX_ENTRIES = 1 << 21  # lines kept per process, 24 bytes each (48 MiB); later ones are not read
_LINE_BYTES = 24  # a line's start, end and file offset (uint64 each)
# A remembered frame: its dict slot and int key, the Frame (a slotted dataclass of six
# fields) and its name (the other fields are shared by every frame of the map).
_FRAME_BYTES = 104 + INT_BYTES + 88 + 49 + 40
_MAP_BYTES = 1024  # the map object, its open file and its (small) arrays' headers
_CHUNK_BYTES = 4 << 20  # parsed at a time
_NAME_READ_BYTES = 4096  # a name is read back up to this many bytes of its line
_MAX_FRAMES = 1 << 16
_CONTAINING_SCAN = 4
_HEAD_BYTES = 64  # compared on growth, to tell an append from a rewrite
_MAX_ADDRESS = (1 << 64) - 1


def parse_perf_map(chunk: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Starts, sizes and line offsets of the lines of ``chunk``, and how many lines
    were garbage.

    Never raises: anything that is not ``START SIZE name`` (or an empty line) is
    a garbage line, whitespace-only lines included.
    """
    starts, sizes, offsets = [], [], []
    for match in _LINE.finditer(chunk):
        starts.append(int(match.group(1), 16))
        sizes.append(int(match.group(2), 16))
        offsets.append(match.start())
    lines = chunk.count(b"\n") + (1 if chunk and not chunk.endswith(b"\n") else 0)
    empty = chunk.count(b"\n\n") + chunk.startswith(b"\n")
    garbage = lines - len(starts) - empty
    return (
        np.array(starts, dtype=np.uint64),
        np.array(sizes, dtype=np.uint64),
        np.array(offsets, dtype=np.uint64),
        max(garbage, 0),
    )


class RangeIndex:
    """Address ranges sorted by start, each with the file offset of its line; of ranges
    with one start, the latest (the one further into the file) wins.

    Kept as numpy arrays (a JIT's map can have millions of lines); lookups are
    memoized by the caller, so a searchsorted each is cheap enough.
    """

    def __init__(self, starts: np.ndarray, ends: np.ndarray, offsets: np.ndarray) -> None:
        order = np.lexsort((-offsets.astype(np.int64), starts))
        sorted_starts = starts[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = sorted_starts[1:] != sorted_starts[:-1]
        keep = order[first]
        del order
        self._starts = sorted_starts[first]
        del sorted_starts
        self._ends = ends[keep]
        self._offsets = offsets[keep]

    def __len__(self) -> int:
        return len(self._starts)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self._starts, self._ends, self._offsets

    def lookup(self, address: int) -> tuple[int, int] | None:
        """The start and line offset of the range containing ``address``, or None."""
        if not len(self._starts) or not 0 <= address <= _MAX_ADDRESS:
            return None
        i = int(np.searchsorted(self._starts, np.uint64(address), side="right")) - 1
        for j in range(i, max(i - 1 - _CONTAINING_SCAN, -1), -1):
            if int(self._starts[j]) <= address < int(self._ends[j]):
                return int(self._starts[j]), int(self._offsets[j])
        return None


_NO_RANGES = np.zeros(0, dtype=np.uint64)
_EMPTY = RangeIndex(_NO_RANGES, _NO_RANGES, _NO_RANGES)


class PerfMap:
    """One process's perf map, read on first need and followed as it grows.

    Only each line's range and its offset in the file are kept (24 bytes a
    line); a name is read back from the file when an address first needs it,
    through a descriptor kept open, so the names stay readable after the
    process exits or the file is deleted. The file is parsed in chunks of
    :data:`_CHUNK_BYTES`, so reading a big map never holds more than one
    chunk's lines as Python objects.
    """

    def __init__(
        self, hostfs: HostFS, pid: int, reporter: Reporter, max_bytes: int | None = None
    ) -> None:
        """``max_bytes``: the budget this map must fit (the symbolizer's whole cache)."""
        self._hostfs = hostfs
        self._pid = pid
        self._reporter = reporter
        self._max_entries = _MAX_ENTRIES
        self._max_frames = _MAX_FRAMES
        if max_bytes is not None:
            self._max_entries = max(1, min(_MAX_ENTRIES, max_bytes // 2 // _LINE_BYTES))
            self._max_frames = max(1, min(_MAX_FRAMES, max_bytes // 4 // _FRAME_BYTES))
        self._shown: str | None = None  # /tmp/perf-NSPID.map, as the process names it
        self._gone = False
        self._checked = float("-inf")
        # The file names are read back from: a descriptor closed with this object (or by
        # close()), so the names outlive the process and the file.
        self._kept: BinaryIO | None = None
        self._release: weakref.finalize | None = None
        self._reset()

    def _reset(self) -> None:
        self._base, self._recent = _EMPTY, _EMPTY
        self._recent_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._offset = 0  # bytes parsed: up to the last complete line
        self._file: tuple[int, int, int, int] | None = None  # dev, ino, size, mtime when read
        self._head = b""
        self._frames: dict[int, Frame] = {}

    def __len__(self) -> int:
        return len(self._base) + len(self._recent)

    @property
    def nbytes(self) -> int:
        """Memory held: the lines' arrays and the frames remembered (see _FRAME_BYTES)."""
        return _MAP_BYTES + _LINE_BYTES * len(self) + _FRAME_BYTES * len(self._frames)

    def frame(self, address: int, leaf: bool) -> Frame | None:
        """The JIT frame for ``address``, None when the map (re-checked if due) lacks it.

        A non-leaf address is a return address: it is searched at ``address - 1``.
        """
        lookup = address if leaf else address - 1
        frame = self._frames.get(lookup)
        if frame is not None:
            return frame
        name = self._name_at(lookup)
        if name is None and self.refresh():
            name = self._name_at(lookup)
        if name is None:
            return None
        shown = self._shown or ""
        frame = Frame(demangle(name), FrameKind.USER, posixpath.basename(shown), True, shown)
        if len(self._frames) >= self._max_frames:
            self._frames.clear()
        self._frames[lookup] = frame
        return frame

    def _name_at(self, address: int) -> str | None:
        found = self._recent.lookup(address) if len(self._recent) else None
        found = found or self._base.lookup(address)
        if found is None:
            return None
        start, offset = found
        name = self._read_name(start, offset)
        if name is None and self.refresh(force=True):  # rewritten in place since it was read
            return self._name_at(address)
        return name

    def _read_name(self, start: int, offset: int) -> str | None:
        """The name on the line at ``offset``, if that line still starts at ``start``."""
        if self._kept is None:
            return None
        try:
            line = os.pread(self._kept.fileno(), _NAME_READ_BYTES, offset)
        except OSError:
            return None
        match = _LINE.match(line.split(b"\n", 1)[0])
        if match is None or int(match.group(1), 16) != start:
            return None
        return match.group(3).rstrip().decode("utf-8", "replace")

    def refresh(self, force: bool = False) -> bool:
        """Read what was appended (or everything, if rewritten); True if entries changed.

        Checks the file at most every :data:`RECHECK_SECONDS` unless ``force``.
        """
        now = time.monotonic()
        if self._gone or (not force and now - self._checked < RECHECK_SECONDS):
            return False
        self._checked = now
        shown = self._locate()
        if shown is None:
            return False
        try:
            stream, st = self._hostfs.open_target_file(self._pid, shown, None)
        except ProcessGone:
            self._gone = True  # no root to read it through any more: keep what we have
            return False
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return False  # not written (yet): keep what was read before
            self._reporter.problem(
                ("perf map", self._where(), exc.errno),
                ("perf_map_errors",),
                "cannot read perf map %s: %s",
                self._where(),
                exc.strerror or exc,
            )
            return False
        try:
            return self._read(stream, st)
        except OSError as exc:
            self._reporter.problem(
                ("perf map", self._where(), exc.errno),
                ("perf_map_errors",),
                "cannot read perf map %s: %s",
                self._where(),
                exc,
            )
            return False
        finally:
            if self._kept is not stream:
                stream.close()

    def close(self) -> None:
        """Let go of the file (names already made stay in the frames handed out)."""
        if self._release is not None:
            self._release()
        self._kept = self._release = None

    def _where(self) -> str:
        return f"{self._shown} of process {self._pid}"

    def _locate(self) -> str | None:
        if self._shown is None:
            try:
                ns_pid = namespace_pid(self._hostfs, self._pid)
            except (ProcessGone, OSError):
                self._gone = True
                return None
            self._shown = f"/tmp/perf-{ns_pid}.map"
        return self._shown

    def _read(self, stream: BinaryIO, st: os.stat_result) -> bool:
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if identity == self._file:
            return False
        fd = stream.fileno()
        changed = False
        if not self._appended_to(fd, st):
            changed = bool(len(self))
            self._reset()
        self.close()
        self._kept, self._release = stream, weakref.finalize(self, stream.close)
        self._file = identity
        if not self._offset:
            self._head = os.pread(fd, _HEAD_BYTES, 0)
        read_lines = False
        while self._offset < st.st_size and self._check_entries():
            chunk = os.pread(fd, min(_CHUNK_BYTES, st.st_size - self._offset), self._offset)
            complete = chunk[: chunk.rfind(b"\n") + 1]
            if complete:
                self._add(complete, self._offset)
                self._offset += len(complete)
                read_lines = True
            elif len(chunk) == _CHUNK_BYTES:  # a line longer than a chunk: garbage
                end = _next_line(fd, self._offset + len(chunk), st.st_size)
                if end is None:
                    break
                self._reporter.count("perf_map_bad_lines")
                self._offset = end
            else:
                break  # an unfinished last line: read once it is complete
        self._index_recent()
        if read_lines:
            self._reporter.count("perf_maps_read")
        return changed or read_lines

    def _entries(self) -> int:
        return len(self._base) + sum(len(part[0]) for part in self._recent_parts)

    def _check_entries(self) -> bool:
        """Whether there is room for more lines; warns once when there is not."""
        if self._entries() < self._max_entries:
            return True
        self._full()
        return False

    def _full(self) -> None:
        self._reporter.problem(
            ("perf map too big", self._where()),
            ("perf_map_errors",),
            "perf map %s has over %d lines: the lines after those are not read "
            "(cache.perf_map_bytes bounds them)",
            self._where(),
            self._max_entries,
        )

    def _appended_to(self, fd: int, st: os.stat_result) -> bool:
        """Whether the file is the one read before, grown: same inode, same first bytes,
        and a line break where reading stopped."""
        if self._file is None or not self._offset:
            return False
        if (st.st_dev, st.st_ino) != self._file[:2] or st.st_size < self._offset:
            return False
        if os.pread(fd, len(self._head), 0) != self._head:
            return False
        return os.pread(fd, 1, self._offset - 1) == b"\n"

    def _add(self, chunk: bytes, at: int) -> None:
        starts, sizes, offsets, garbage = parse_perf_map(chunk)
        if garbage:
            self._reporter.count("perf_map_bad_lines", garbage)
        room = self._max_entries - self._entries()
        if len(starts) > room:  # the rest is not kept
            starts, sizes, offsets = starts[:room], sizes[:room], offsets[:room]
            self._full()
        if len(starts):
            self._recent_parts.append((starts, starts + sizes, offsets + np.uint64(at)))

    def _index_recent(self) -> None:
        if not self._recent_parts:
            return
        self._frames.clear()  # a newer entry may now cover a remembered address
        parts = self._recent_parts
        recent_count = sum(len(p[0]) for p in parts)
        if recent_count > max(4096, len(self._base) // 4):
            # Fold the recent entries into the base: amortized, few sorts of the whole map.
            parts.insert(0, self._base.arrays())
            self._base = self._recent = _EMPTY
            self._base = _merged(parts)
        else:
            self._recent = _merged(list(parts))


def _merged(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> RangeIndex:
    """One index of ``parts`` (emptied: each column is let go once it is copied)."""
    columns = [list(column) for column in zip(*parts, strict=True)]
    parts.clear()
    merged = []
    while columns:
        merged.append(np.concatenate(columns.pop(0)))
    return RangeIndex(*merged)


def _next_line(fd: int, at: int, size: int) -> int | None:
    """The offset after the next line break at or after ``at``, None if there is none yet."""
    while at < size:
        chunk = os.pread(fd, min(_CHUNK_BYTES, size - at), at)
        newline = chunk.find(b"\n")
        if newline >= 0:
            return at + newline + 1
        at += len(chunk)
    return None


def namespace_pid(hostfs: HostFS, pid: int) -> int:
    """``pid`` as its own pid namespace numbers it (the last ``NSpid`` value)."""
    for line in hostfs.read_text(pid, "status").splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            if fields and fields[-1].isdigit():
                return int(fields[-1])
    return pid  # kernels before 4.1 have no NSpid: no namespaces to undo
