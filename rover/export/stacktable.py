"""Stacks aggregated compactly: what every reader fills and every writer walks.

A file can hold a million distinct stacks of 30 frames. As a
:class:`~rover.profile.Profile` (a tuple of frames, a key and a list of values
per stack) that is about 1 KB a stack, more than twice what the file takes.
Here each distinct frame and process is stored once and a stack is one
``bytes`` of 32-bit ids (the process first, then the frames, root first): 4
bytes a frame. Values are int64 columns, one per value type. Identical stacks
are merged as they are added.

A trie of frames would share prefixes, but deep, varied stacks have several
distinct prefixes per stack and a trie node costs about 130 bytes in Python
(see docs/benchmarks.md): the flat form is three times smaller.

Writers need the stacks sorted (folded stacks, flame graph layouts, diffs) by
their own idea of which frames are the same: :meth:`StackTable.sorted_keys`
sorts by a rank per frame and per process and gives each stack a key whose
byte order is that order, so a common prefix of two keys is a common prefix of
the two stacks.

Values must be non-negative and each column's total must fit in int64 (pprof's
type, and what a flame graph adds up): :meth:`StackTable.add` raises
:class:`ValueOutOfRange` otherwise, and readers say where the value came from.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from rover.profile import Frame, FrameKind, ProcessInfo, Profile, ProfileType, StackKey, ValueType

INT64_MAX = 2**63 - 1
_ID = "I"  # array typecode of an id: 32 bits unsigned
_BIG_ENDIAN_IDS = np.dtype(">u4")
_CHUNK = 1 << 16  # stacks re-keyed at a time: bounds the temporary numpy arrays
Item = TypeVar("Item")


class ValueOutOfRange(ValueError):
    """A negative value, or a total beyond int64."""


def frame_identity(frame: Frame) -> tuple[str, bool, str, bool, str, str]:
    """Everything that tells two frames apart, as a fast-hashing tuple (not the dataclass)."""
    return (frame.name, frame.kind is FrameKind.KERNEL, frame.module, frame.symbolized,
            frame.file, frame.build_id)  # fmt: skip


class StackTable:
    """The distinct stacks of a profile with their values; frames and processes interned.

    ``header`` carries what is not per stack (type, value types, process names,
    times, counters) as a :class:`Profile` without samples.
    """

    def __init__(self, header: Profile) -> None:
        self.header = header
        self.frames: list[Frame] = []
        self.pids: list[int] = []  # process index -> pid
        self.stacks: list[bytes] = []  # ids: process index, then frame ids root first
        self.values = tuple(array("q") for _ in header.value_types)
        self.totals = [0] * len(header.value_types)
        self._frame_ids: dict[tuple, int] = {}
        self._process_index: dict[int, int] = {}
        self._stack_index: dict[bytes, int] | None = {}

    # --- filling ------------------------------------------------------------

    @property
    def type(self) -> ProfileType:
        return self.header.type

    @property
    def value_types(self) -> tuple[ValueType, ...]:
        return self.header.value_types

    def frame_id(self, frame: Frame) -> int:
        key = frame_identity(frame)
        frame_id = self._frame_ids.get(key)
        if frame_id is None:
            frame_id = self._frame_ids[key] = len(self.frames)
            self.frames.append(frame)
        return frame_id

    def process_index(self, pid: int) -> int:
        index = self._process_index.get(pid)
        if index is None:
            index = self._process_index[pid] = len(self.pids)
            self.pids.append(pid)
        return index

    def add(self, ids: Sequence[int], values: Sequence[int]) -> None:
        """Add ``values`` to the stack ``ids`` (a process index, then frame ids root first).

        Raises ValueOutOfRange, leaving the table as it was, for a negative
        value or when a column's total would pass int64.
        """
        if self._stack_index is None:
            raise RuntimeError("the table is finished: no more stacks")
        for column, value in enumerate(values):
            if value < 0:
                raise ValueOutOfRange(f"negative value {value}")
            if self.totals[column] + value > INT64_MAX:
                raise ValueOutOfRange(
                    f"values add up to more than {INT64_MAX:,} (int64), e.g. {value}"
                )
        for column, value in enumerate(values):
            self.totals[column] += value
        key = array(_ID, ids).tobytes()
        index = self._stack_index.get(key)
        if index is None:
            self._stack_index[key] = len(self.stacks)
            self.stacks.append(key)
            for series, value in zip(self.values, values, strict=True):
                series.append(value)
        else:
            for series, value in zip(self.values, values, strict=True):
                series[index] += value

    def finish(self) -> StackTable:
        """Drop the lookup used to merge stacks (as big as the stacks); no adds after."""
        self._stack_index = None
        return self

    # --- reading ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.stacks)

    def ids(self, index: int) -> array:
        """The ids of stack ``index``: its process index, then its frame ids root first."""
        ids = array(_ID)
        ids.frombytes(self.stacks[index])
        return ids

    def process_name(self, pid: int) -> str:
        """The process's name, or its pid when the name is not known."""
        info = self.header.processes.get(pid)
        return info.name if info is not None and info.name else str(pid)

    def sorted_keys(
        self,
        frame_rank: Sequence[int],
        process_rank: Sequence[int],
        *,
        last_frame_rank: Sequence[int] | None = None,
        last_process_rank: Sequence[int] | None = None,
    ) -> tuple[list[int], list[bytes]]:
        """Stack indexes in rank order, and each one's sort key (same order).

        A key is the stack's ranks (its process's, then its frames') as
        big-endian 32-bit numbers, so comparing keys compares stacks rank by
        rank, a stack before its extensions, and stacks whose frames and
        process have equal ranks have equal keys. A stack's last element is
        ranked by the ``last_`` ranks when given (text order: see folded.py).
        """
        ranks = [np.asarray(r, dtype=np.uint32) for r in (frame_rank, process_rank)]
        last_ranks = [
            ranks[i] if r is None else np.asarray(r, dtype=np.uint32)
            for i, r in enumerate((last_frame_rank, last_process_rank))
        ]
        keys: list[bytes] = []
        for start in range(0, len(self.stacks), _CHUNK):
            stacks = self.stacks[start : start + _CHUNK]
            sizes = np.fromiter(map(len, stacks), dtype=np.int64, count=len(stacks)) // 4
            ends = np.cumsum(sizes)
            firsts, lasts = ends - sizes, ends - 1
            ids = np.frombuffer(b"".join(stacks), dtype=np.uint32)
            frames = np.ones(len(ids), dtype=bool)
            frames[firsts] = False
            ranked = np.empty(len(ids), dtype=np.uint32)
            ranked[frames] = ranks[0][ids[frames]]
            framed = sizes > 1
            ranked[lasts[framed]] = last_ranks[0][ids[lasts[framed]]]
            ranked[firsts[framed]] = ranks[1][ids[firsts[framed]]]
            alone = firsts[~framed]  # a process without frames: its last element too
            ranked[alone] = last_ranks[1][ids[alone]]
            blob = ranked.astype(_BIG_ENDIAN_IDS).tobytes()
            bounds = (4 * ends).tolist()
            keys.extend(blob[b:e] for b, e in zip([0, *bounds[:-1]], bounds, strict=True))
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return order, [keys[i] for i in order]

    def to_profile(self) -> Profile:
        """The same stacks as a :class:`Profile` (costly for big tables)."""
        profile = _copy_header(self.header)
        for index, stack in enumerate(self.stacks):
            ids = array(_ID)
            ids.frombytes(stack)
            key = StackKey(self.pids[ids[0]], tuple(self.frames[i] for i in ids[1:]))
            profile.samples[key] = [column[index] for column in self.values]
        return profile

    @classmethod
    def from_profile(cls, profile: Profile) -> StackTable:
        """A table of ``profile``'s stacks (in its order), sharing its processes and counters."""
        table = cls(profile)
        # Stacks share Frame objects: looking them up by identity skips hashing their fields.
        by_object: dict[int, int] = {}
        for key, values in profile:
            ids = [table.process_index(key.pid)]
            for frame in key.frames:
                frame_id = by_object.get(id(frame))
                if frame_id is None:
                    frame_id = by_object[id(frame)] = table.frame_id(frame)
                ids.append(frame_id)
            table.add(ids, values)
        return table.finish()


def _copy_header(header: Profile) -> Profile:
    return Profile(
        header.type,
        header.value_types,
        processes={
            pid: ProcessInfo(p.pid, p.name, p.cmdline) for pid, p in header.processes.items()
        },
        start_time_ns=header.start_time_ns,
        duration_ns=header.duration_ns,
        period_ns=header.period_ns,
        counters=dict(header.counters),
    )


def dense_ranks(items: Sequence[Item], sort_key: Callable[[Item], Any]) -> list[int]:
    """Each item's rank by ``sort_key``; items with equal keys share a rank."""
    keyed = sorted((sort_key(item), i) for i, item in enumerate(items))
    ranks = [0] * len(items)
    rank, previous = -1, object()
    for key, i in keyed:
        if key != previous:
            rank, previous = rank + 1, key
        ranks[i] = rank
    return ranks


def common_prefix(a: bytes, b: bytes) -> int:
    """How many leading 32-bit ids two sort keys share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n // 4
    # Read as big-endian numbers, the prefixes' highest differing bit is in the first
    # differing byte.
    differing = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return (n - (differing.bit_length() + 7) // 8) // 4
