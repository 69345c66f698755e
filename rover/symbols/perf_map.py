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
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import numpy as np

from rover.hostfs import HostFS, ProcessGone
from rover.profile import Frame, FrameKind
from rover.symbols.demangle import demangle
from rover.symbols.report import Reporter

RECHECK_SECONDS = 0.05
_LINE = re.compile(
    rb"^[ \t]*(?:0x)?([0-9a-fA-F]{1,16})[ \t]+(?:0x)?([0-9a-fA-F]{1,16})[ \t]+([^\s][^\n]*)$",
    re.MULTILINE,
)
_MAX_BYTES = 512 << 20  # a perf map beyond this is read no further
_MAX_FRAMES = 1 << 16
_CONTAINING_SCAN = 4
_HEAD_BYTES = 64  # compared on growth, to tell an append from a rewrite
_MAX_ADDRESS = (1 << 64) - 1


def parse_perf_map(chunk: bytes) -> tuple[list[int], list[int], list[bytes], int]:
    """Starts, sizes and names of the lines of ``chunk``, and how many lines were garbage.

    Never raises: anything that is not ``START SIZE name`` (or an empty line) is
    a garbage line, whitespace-only lines included.
    """
    found = _LINE.findall(chunk)
    starts = [int(start, 16) for start, _, _ in found]
    sizes = [int(size, 16) for _, size, _ in found]
    names = [name.rstrip() for _, _, name in found]
    lines = chunk.count(b"\n") + (1 if chunk and not chunk.endswith(b"\n") else 0)
    empty = chunk.count(b"\n\n") + chunk.startswith(b"\n")
    garbage = lines - len(found) - empty
    return starts, sizes, names, max(garbage, 0)


class RangeIndex:
    """Address ranges sorted by start; of ranges with one start, the latest wins.

    Kept as numpy arrays (a JIT's map can have hundreds of thousands of lines);
    lookups are memoized by the caller, so a searchsorted each is cheap enough.
    """

    def __init__(self, starts: np.ndarray, ends: np.ndarray, ids: np.ndarray) -> None:
        order = np.lexsort((-ids, starts))
        sorted_starts = starts[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = sorted_starts[1:] != sorted_starts[:-1]
        keep = order[first]
        self._starts = sorted_starts[first]
        self._ends = ends[keep]
        self._ids = ids[keep]

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, address: int) -> int:
        """The id of the range containing ``address``, or -1."""
        if not len(self._starts) or not 0 <= address <= _MAX_ADDRESS:
            return -1
        i = int(np.searchsorted(self._starts, np.uint64(address), side="right")) - 1
        for j in range(i, max(i - 1 - _CONTAINING_SCAN, -1), -1):
            if int(self._starts[j]) <= address < int(self._ends[j]):
                return int(self._ids[j])
        return -1


_NO_RANGES = np.zeros(0, dtype=np.uint64)
_NO_IDS = np.zeros(0, dtype=np.int64)
_EMPTY = RangeIndex(_NO_RANGES, _NO_RANGES, _NO_IDS)


class PerfMap:
    """One process's perf map, read on first need and followed as it grows."""

    def __init__(self, hostfs: HostFS, pid: int, reporter: Reporter) -> None:
        self._hostfs = hostfs
        self._pid = pid
        self._reporter = reporter
        self._location: tuple[Path, str] | None = None
        self._gone = False
        self._checked = float("-inf")
        self._reset()

    def _reset(self) -> None:
        self._starts, self._ends = _NO_RANGES, _NO_RANGES
        # Names stay in one blob per read ("\0"-separated), found by (blob, offset, length).
        self._blobs: list[bytes] = []
        self._name_blob = np.zeros(0, dtype=np.uint32)
        self._name_offset = np.zeros(0, dtype=np.uint64)
        self._name_length = np.zeros(0, dtype=np.uint32)
        self._base, self._recent = _EMPTY, _EMPTY
        self._base_count = 0
        self._offset = 0  # bytes parsed: up to the last complete line
        self._file: tuple[int, int, int, int] | None = None  # dev, ino, size, mtime when read
        self._head = b""
        self._frames: dict[int, Frame] = {}

    def __len__(self) -> int:
        return len(self._starts)

    def frame(self, address: int, leaf: bool) -> Frame | None:
        """The JIT frame for ``address``, None when the map (re-checked if due) lacks it.

        A non-leaf address is a return address: it is searched at ``address - 1``.
        """
        lookup = address if leaf else address - 1
        frame = self._frames.get(lookup)
        if frame is not None:
            return frame
        i = self._find(lookup)
        if i < 0 and self.refresh():
            i = self._find(lookup)
        if i < 0:
            return None
        path, shown = self._location or (Path(), "")
        frame = Frame(demangle(self._name(i)), FrameKind.USER, path.name, True, shown)
        if len(self._frames) >= _MAX_FRAMES:
            self._frames.clear()
        self._frames[lookup] = frame
        return frame

    def _name(self, i: int) -> str:
        offset = int(self._name_offset[i])
        raw = self._blobs[self._name_blob[i]][offset : offset + int(self._name_length[i])]
        return raw.decode("utf-8", "replace")

    def _find(self, address: int) -> int:
        found = self._recent.lookup(address) if len(self._recent) else -1
        return found if found >= 0 else self._base.lookup(address)

    def refresh(self, force: bool = False) -> bool:
        """Read what was appended (or everything, if rewritten); True if entries changed.

        Checks the file at most every :data:`RECHECK_SECONDS` unless ``force``.
        """
        now = time.monotonic()
        if self._gone or (not force and now - self._checked < RECHECK_SECONDS):
            return False
        self._checked = now
        location = self._locate()
        if location is None:
            return False
        try:
            return self._read(location[0])
        except OSError as exc:
            self._reporter.problem(
                ("perf map", str(location[0]), exc.errno),
                ("perf_map_errors",),
                "cannot read perf map %s: %s",
                location[0],
                exc,
            )
            return False

    def _locate(self) -> tuple[Path, str] | None:
        if self._location is None:
            try:
                ns_pid = namespace_pid(self._hostfs, self._pid)
            except (ProcessGone, OSError):
                self._gone = True  # no root to read it through any more: keep what we have
                return None
            shown = f"/tmp/perf-{ns_pid}.map"
            self._location = (self._hostfs.target_path(self._pid, shown), shown)
        return self._location

    def _read(self, path: Path) -> bool:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False  # not written (yet): keep what was read before
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if identity == self._file or not stat.S_ISREG(st.st_mode):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return False
            changed = False
            if not self._appended_to(fd, st):
                changed = bool(len(self))
                self._reset()
            self._file = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            end = min(st.st_size, _MAX_BYTES)
            if st.st_size > _MAX_BYTES:
                self._reporter.problem(
                    ("perf map too big", str(path)),
                    ("perf_map_errors",),
                    "perf map %s is over %d MB: only its start is read",
                    path,
                    _MAX_BYTES >> 20,
                )
            data = os.pread(fd, end - self._offset, self._offset) if end > self._offset else b""
        finally:
            os.close(fd)
        complete = data[: data.rfind(b"\n") + 1]
        if not complete:
            return changed
        if not self._offset:
            self._head = complete[:_HEAD_BYTES]
        self._offset += len(complete)
        self._add(complete)
        return True

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

    def _add(self, chunk: bytes) -> None:
        starts, sizes, names, garbage = parse_perf_map(chunk)
        if garbage:
            self._reporter.count("perf_map_bad_lines", garbage)
        self._reporter.count("perf_maps_read")
        if not starts:
            return
        new_starts = np.array(starts, dtype=np.uint64)
        new_ends = new_starts + np.array(sizes, dtype=np.uint64)  # wraps at 2**64: harmless
        lengths = np.fromiter(map(len, names), dtype=np.uint32, count=len(names))
        offsets = np.zeros(len(names), dtype=np.uint64)
        np.cumsum(lengths[:-1] + np.uint32(1), out=offsets[1:])
        blob = np.full(len(names), len(self._blobs), dtype=np.uint32)
        self._blobs.append(b"\0".join(names))
        self._starts = np.concatenate((self._starts, new_starts))
        self._ends = np.concatenate((self._ends, new_ends))
        self._name_blob = np.concatenate((self._name_blob, blob))
        self._name_offset = np.concatenate((self._name_offset, offsets))
        self._name_length = np.concatenate((self._name_length, lengths))
        self._frames.clear()  # a newer entry may now cover a remembered address
        total = len(self._starts)
        ids = np.arange(total, dtype=np.int64)
        if total - self._base_count > max(4096, self._base_count // 4):
            # Fold the recent entries into the base: amortized, few sorts of the whole map.
            self._base = RangeIndex(self._starts, self._ends, ids)
            self._base_count, self._recent = total, _EMPTY
        else:
            tail = slice(self._base_count, None)
            self._recent = RangeIndex(self._starts[tail], self._ends[tail], ids[tail])


def namespace_pid(hostfs: HostFS, pid: int) -> int:
    """``pid`` as its own pid namespace numbers it (the last ``NSpid`` value)."""
    for line in hostfs.read_text(pid, "status").splitlines():
        if line.startswith("NSpid:"):
            fields = line.split()[1:]
            if fields and fields[-1].isdigit():
                return int(fields[-1])
    return pid  # kernels before 4.1 have no NSpid: no namespaces to undo
