"""speedscope's JSON file format (https://www.speedscope.app/file-format-schema.json).

Written: one ``sampled`` profile per process, heaviest first (speedscope
opens the first; its profile menu switches), named ``name (pid)``; frames are
shared between them. Weights are the chosen value in its raw unit: durations
in ``nanoseconds``, counts as ``none``. A frame's ``file`` is its module's
path (or name); kernel frames' is ``[kernel.kallsyms]`` (``[kernel.kallsyms]/MODULE``
for a kernel module's). A ``rover`` key (ignored by speedscope) records the
profile type and value, so a file read back means what it meant.

Written a stack at a time, never as one document in memory.

Read: ``sampled`` and ``evented`` profiles (an evented profile's time between
events goes to the stack open at that moment); each profile becomes a process.
The JSON is parsed whole, so a file may take at most :data:`MAX_SPEEDSCOPE_CHARS`.
Weights must be non-negative and their total must fit in int64.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from rover import __version__
from rover.export.names import (
    KERNEL_MAPPING,
    KERNEL_MODULE,
    UNKNOWN,
    frame_from_name,
    process_label,
)
from rover.export.readback import (
    TIME_UNITS,
    CorruptProfile,
    ProcessNumbering,
    count_or_time_value,
)
from rover.export.stacktable import StackTable, ValueOutOfRange
from rover.export.summary import default_title
from rover.export.values import ValueView
from rover.profile import Frame, FrameKind, Profile, ProfileType, ValueType

SCHEMA = "https://www.speedscope.app/file-format-schema.json"
# The most a speedscope file may take: it is parsed whole, in about 4x its size
# (a million distinct 30-frame stacks take about 135 MiB).
MAX_SPEEDSCOPE_CHARS = 256 * 2**20
_BATCH = 4096  # samples written at a time
_UNITS = (*TIME_UNITS, "bytes", "none")
_PROCESS_NAME = re.compile(r"^(?P<name>.*) \((?P<pid>\d+)\)$")


def speedscope_unit(unit: str) -> str:
    return unit if unit in _UNITS else "none"


def frame_file(frame: Frame) -> str:
    if frame.is_kernel:
        module = frame.module
        return KERNEL_MAPPING if module in ("", KERNEL_MODULE) else f"{KERNEL_MAPPING}/{module}"
    return frame.file or frame.module


def write_speedscope(
    table: StackTable, view: ValueView, out: TextIO, title: str | None = None
) -> None:
    """Write ``table`` as speedscope JSON, one stack at a time.

    The document is what ``json.dumps`` of the whole would give (compact
    separators), written in pieces so that it never is in memory at once.
    """
    value_type = table.value_types[view.index]
    unit = speedscope_unit(value_type.unit)
    column = table.values[view.index]
    weighed = [index for index in range(len(table)) if column[index] > 0]
    by_process: dict[int, list[int]] = {}  # process index -> its stacks with a weight
    for index in weighed:
        by_process.setdefault(_process_of(table.stacks[index]), []).append(index)
    frame_index = _frame_indexes(table, weighed)

    def dump(value: object) -> str:
        return json.dumps(value, separators=(",", ":"))

    head = {
        "$schema": SCHEMA,
        "name": title or f"{default_title(table.header)} ({view.name})",
        "exporter": f"rover {__version__}",
        "activeProfileIndex": 0,
    }
    out.write(dump(head)[:-1] + ',"shared":{"frames":[')
    out.write(",".join(map(dump, frame_index.entries)) + ']},"profiles":[')
    processes = []
    for process, indexes in by_process.items():
        name = process_label(table.header, table.pids[process])
        processes.append((-sum(column[i] for i in indexes), name, indexes))
    processes.sort(key=lambda p: (p[0], p[1]))
    if not processes:  # speedscope refuses a file without profiles
        processes.append((0, "no samples", []))
    for number, (negative_total, name, indexes) in enumerate(processes):
        out.write("," if number else "")
        out.write(
            dump({"type": "sampled", "name": name, "unit": unit, "startValue": 0,
                  "endValue": -negative_total})[:-1]
        )  # fmt: skip
        out.write(',"samples":[')
        for start in range(0, len(indexes), _BATCH):
            chunk = indexes[start : start + _BATCH]
            stacks = (
                "[" + ",".join(map(str, map(frame_index.of.__getitem__, table.ids(i)[1:]))) + "]"
                for i in chunk
            )
            out.write(("," if start else "") + ",".join(stacks))
        out.write('],"weights":[')
        for start in range(0, len(indexes), _BATCH):
            chunk = indexes[start : start + _BATCH]
            out.write(("," if start else "") + ",".join(str(column[i]) for i in chunk))
        out.write("]}")
    metadata = {"type": table.type.value, "value": value_type.type, "unit": value_type.unit}
    out.write('],"rover":' + dump(metadata) + "}\n")


def _process_of(stack: bytes) -> int:
    return int.from_bytes(stack[:4], sys.byteorder)


@dataclass
class _FrameIndex:
    entries: list[dict]  # speedscope's shared frames
    of: list[int]  # table frame id -> index in entries (-1: unused)


def _frame_indexes(table: StackTable, stacks: list[int]) -> _FrameIndex:
    """speedscope's frames, in order of first use, each distinct (name, kind, file) once."""
    result = _FrameIndex([], [-1] * len(table.frames))
    seen: dict[tuple, int] = {}
    for index in stacks:
        for frame_id in table.ids(index)[1:]:
            if result.of[frame_id] >= 0:
                continue
            frame = table.frames[frame_id]
            key = (frame.name, frame.kind is FrameKind.KERNEL, frame.module, frame.file)
            number = seen.get(key)
            if number is None:
                number = seen[key] = len(result.entries)
                entry = {"name": frame.name or UNKNOWN}
                file = frame_file(frame)
                if file:
                    entry["file"] = file
                result.entries.append(entry)
            result.of[frame_id] = number
    return result


# --- reading ------------------------------------------------------------------


def read_speedscope(
    f: TextIO, source: str = "<speedscope>", profile_type: ProfileType | None = None
) -> StackTable:
    """A table from a speedscope file; see :func:`speedscope_table`."""
    text = f.read(MAX_SPEEDSCOPE_CHARS + 1)
    if len(text) > MAX_SPEEDSCOPE_CHARS:
        raise CorruptProfile(
            f"{source} is larger than {MAX_SPEEDSCOPE_CHARS // 2**20} MiB, rover's limit for "
            "a speedscope file (it is parsed whole, in memory)"
        )
    document = _parse(text, source)
    del text  # before the table is built
    return _Reader(document, source, profile_type).table()


def parse_speedscope(
    text: str, source: str = "<speedscope>", profile_type: ProfileType | None = None
) -> Profile:
    """A profile from speedscope JSON; see :func:`speedscope_table`."""
    return speedscope_table(text, source, profile_type).to_profile()


def speedscope_table(
    text: str, source: str = "<speedscope>", profile_type: ProfileType | None = None
) -> StackTable:
    """A table from speedscope JSON; CorruptProfile says what is wrong.

    ``profile_type`` says what the weights measure when the file was not
    written by rover (default on-CPU): counts are samples or switches,
    durations CPU or blocked time. Rover's own files say it themselves.
    """
    return _Reader(_parse(text, source), source, profile_type).table()


def _parse(text: str, source: str) -> object:
    try:
        # Frame indexes repeat millions of times: one int object each, not one per use.
        return json.loads(text, parse_int=_Ints().__getitem__)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CorruptProfile(f"{source}: not speedscope JSON: {exc}") from None


class _Ints(dict):
    def __missing__(self, text: str) -> int:
        value = self[text] = int(text)
        return value


class _Reader:
    def __init__(self, document: object, source: str, profile_type: ProfileType | None) -> None:
        self.source = source
        if not isinstance(document, dict) or not str(document.get("$schema", "")).startswith(
            SCHEMA
        ):
            raise CorruptProfile(f"{source}: not a speedscope file (no {SCHEMA!r} $schema)")
        self.document = document
        self.profile_type = profile_type
        shared = document.get("shared")
        frames = shared.get("frames") if isinstance(shared, dict) else None
        profiles = document.get("profiles")
        if not isinstance(frames, list) or not isinstance(profiles, list):
            raise self.corrupt("'shared.frames' and 'profiles' must be lists")
        self.profiles = profiles
        self.frames = [self._frame(i, entry) for i, entry in enumerate(frames)]

    def corrupt(self, what: str) -> CorruptProfile:
        return CorruptProfile(f"{self.source}: corrupt speedscope file: {what}")

    def _frame(self, index: int, entry: object) -> Frame:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise self.corrupt(f"frame {index} has no name")
        name, file = entry["name"] or UNKNOWN, entry.get("file")
        file = file if isinstance(file, str) else ""
        if file.startswith(KERNEL_MAPPING):
            module = file[len(KERNEL_MAPPING) + 1 :] or KERNEL_MODULE
            return frame_from_name(name, FrameKind.KERNEL, module)
        frame = frame_from_name(name, FrameKind.USER, os.path.basename(file))
        return dataclasses.replace(frame, file=file) if file.startswith("/") else frame

    def _value_type(self, units: list[str]) -> tuple[ProfileType, ValueType, dict[str, float]]:
        """The profile type, the one value type, and each unit's factor to it."""
        written = self.document.get("rover")
        if isinstance(written, dict):
            try:
                profile_type = ProfileType(written.get("type"))
                value_type = ValueType(str(written["value"]), str(written["unit"]))
            except (ValueError, KeyError):
                raise self.corrupt("unreadable 'rover' metadata") from None
            return profile_type, value_type, {unit: 1 for unit in units}
        profile_type = self.profile_type or ProfileType.ON_CPU
        value_type, _ = count_or_time_value(profile_type, units[0] if units else "none")
        scales: dict[str, float] = {}
        for unit in units:
            other, scale = count_or_time_value(profile_type, unit)
            if other != value_type:
                raise self.corrupt(f"profiles in different units ({units[0]!r} and {unit!r})")
            scales[unit] = scale
        return profile_type, value_type, scales

    def table(self) -> StackTable:
        for i, entry in enumerate(self.profiles):
            if not isinstance(entry, dict) or entry.get("unit") not in _UNITS:
                raise self.corrupt(f"profile {i} has no valid unit")
        units = list(dict.fromkeys(entry["unit"] for entry in self.profiles))
        profile_type, value_type, scales = self._value_type(units)
        table = StackTable(Profile(profile_type, (value_type,)))
        frame_ids = [table.frame_id(frame) for frame in self.frames]
        name = self.document.get("name")
        processes = ProcessNumbering(table.header)
        for i, entry in enumerate(self.profiles):
            label = entry.get("name") if isinstance(entry.get("name"), str) else ""
            match = _PROCESS_NAME.match(label)
            if match:
                pid = processes.pid(match.group("name"), int(match.group("pid")))
            else:
                pid = processes.pid(label or (name if isinstance(name, str) else "") or UNKNOWN)
            process = table.process_index(pid)
            scale = scales[entry["unit"]]
            for frames, weight in self._stacks(i, entry):
                if weight < 0:
                    raise self.corrupt(f"profile {i}: negative weight {weight}")
                value = round(weight * scale)
                if value:
                    try:
                        table.add([process, *map(frame_ids.__getitem__, frames)], (value,))
                    except ValueOutOfRange as exc:
                        raise self.corrupt(f"profile {i}: {exc}") from None
            self.profiles[i] = None  # its samples can go now
        return table.finish()

    def _stacks(self, i: int, entry: dict) -> Iterator[tuple[tuple[int, ...], float]]:
        """(frame indexes root first, weight) of each sample or span of one profile."""
        kind = entry.get("type")
        if kind == "sampled":
            samples, weights = entry.get("samples"), entry.get("weights")
            if not isinstance(samples, list) or not isinstance(weights, list):
                raise self.corrupt(f"profile {i}: 'samples' and 'weights' must be lists")
            if len(samples) != len(weights):
                raise self.corrupt(f"profile {i}: {len(samples)} samples, {len(weights)} weights")
            for stack, weight in zip(samples, weights, strict=True):
                if not isinstance(stack, list):
                    raise self.corrupt(f"profile {i}: a sample is not a list of frames")
                yield tuple(self._frame_index(i, index) for index in stack), self._number(i, weight)
        elif kind == "evented":
            yield from self._evented(i, entry)
        else:
            raise self.corrupt(f"profile {i} has type {kind!r}, not 'sampled' or 'evented'")

    def _evented(self, i: int, entry: dict) -> Iterator[tuple[tuple[int, ...], float]]:
        events = entry.get("events")
        if not isinstance(events, list):
            raise self.corrupt(f"profile {i}: 'events' must be a list")
        open_frames: list[int] = []
        last = None
        for event in events:
            if not isinstance(event, dict) or event.get("type") not in ("O", "C"):
                raise self.corrupt(f"profile {i}: an event is not an open or close event")
            at = self._number(i, event.get("at"))
            if last is not None and open_frames and at > last:
                yield tuple(open_frames), at - last
            last = at
            frame = event.get("frame")
            if event["type"] == "O":
                open_frames.append(self._frame_index(i, frame))
            elif not open_frames or open_frames[-1] != frame:
                raise self.corrupt(f"profile {i}: frame {frame!r} closed but not the open one")
            else:
                open_frames.pop()

    def _frame_index(self, i: int, index: object) -> int:
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(self.frames):
            return index
        raise self.corrupt(f"profile {i} refers to frame {index!r}, which does not exist")

    def _number(self, i: int, value: object) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return value
        raise self.corrupt(f"profile {i}: {value!r} is not a number")
