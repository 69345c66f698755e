"""speedscope's JSON file format (https://www.speedscope.app/file-format-schema.json).

Written: one ``sampled`` profile per process, heaviest first (speedscope
opens the first; its profile menu switches), named ``name (pid)``; frames are
shared between them. Weights are the chosen value in its raw unit: durations
in ``nanoseconds``, counts as ``none``. A frame's ``file`` is its module's
path (or name); kernel frames' is ``[kernel.kallsyms]`` (``[kernel.kallsyms]/MODULE``
for a kernel module's). A ``rover`` key (ignored by speedscope) records the
profile type and value, so a file read back means what it meant.

Read: ``sampled`` and ``evented`` profiles (an evented profile's time between
events goes to the stack open at that moment); each profile becomes a process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Iterator

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
from rover.export.summary import default_title
from rover.export.values import ValueView
from rover.profile import Frame, FrameKind, Profile, ProfileType, ValueType

SCHEMA = "https://www.speedscope.app/file-format-schema.json"
_UNITS = (*TIME_UNITS, "bytes", "none")
_PROCESS_NAME = re.compile(r"^(?P<name>.*) \((?P<pid>\d+)\)$")


def speedscope_unit(unit: str) -> str:
    return unit if unit in _UNITS else "none"


def frame_file(frame: Frame) -> str:
    if frame.is_kernel:
        module = frame.module
        return KERNEL_MAPPING if module in ("", KERNEL_MODULE) else f"{KERNEL_MAPPING}/{module}"
    return frame.file or frame.module


def speedscope_document(profile: Profile, view: ValueView, title: str | None = None) -> dict:
    value_type = profile.value_types[view.index]
    unit = speedscope_unit(value_type.unit)
    frames: list[dict] = []
    frame_index: dict[tuple, int] = {}

    def index_of(frame: Frame) -> int:
        key = (frame.name, frame.kind is FrameKind.KERNEL, frame.module, frame.file)
        index = frame_index.get(key)
        if index is None:
            index = frame_index[key] = len(frames)
            entry = {"name": frame.name or UNKNOWN}
            file = frame_file(frame)
            if file:
                entry["file"] = file
            frames.append(entry)
        return index

    by_pid: dict[int, tuple[list[list[int]], list[int]]] = {}
    for key, values in profile:
        weight = values[view.index]
        if weight <= 0:
            continue
        samples, weights = by_pid.setdefault(key.pid, ([], []))
        samples.append([index_of(frame) for frame in key.frames])
        weights.append(weight)
    profiles = [
        {
            "type": "sampled",
            "name": process_label(profile, pid),
            "unit": unit,
            "startValue": 0,
            "endValue": sum(weights),
            "samples": samples,
            "weights": weights,
        }
        for pid, (samples, weights) in by_pid.items()
    ]
    profiles.sort(key=lambda p: (-p["endValue"], p["name"]))
    if not profiles:  # speedscope refuses a file without profiles
        profiles.append(
            {"type": "sampled", "name": "no samples", "unit": unit, "startValue": 0,
             "endValue": 0, "samples": [], "weights": []}
        )  # fmt: skip
    return {
        "$schema": SCHEMA,
        "name": title or f"{default_title(profile)} ({view.name})",
        "exporter": f"rover {__version__}",
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": profiles,
        "rover": {"type": profile.type.value, "value": value_type.type, "unit": value_type.unit},
    }


def render_speedscope(profile: Profile, view: ValueView, title: str | None = None) -> str:
    return json.dumps(speedscope_document(profile, view, title), separators=(",", ":")) + "\n"


# --- reading ------------------------------------------------------------------


def parse_speedscope(
    text: str, source: str = "<speedscope>", profile_type: ProfileType | None = None
) -> Profile:
    """A profile from speedscope JSON; CorruptProfile says what is wrong.

    ``profile_type`` says what the weights measure when the file was not
    written by rover (default on-CPU): counts are samples or switches,
    durations CPU or blocked time.
    """
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CorruptProfile(f"{source}: not speedscope JSON: {exc}") from None
    return _Reader(document, source, profile_type).profile()


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
        if isinstance(written, dict) and self.profile_type is None:
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

    def profile(self) -> Profile:
        for i, entry in enumerate(self.profiles):
            if not isinstance(entry, dict) or entry.get("unit") not in _UNITS:
                raise self.corrupt(f"profile {i} has no valid unit")
        units = list(dict.fromkeys(entry["unit"] for entry in self.profiles))
        profile_type, value_type, scales = self._value_type(units)
        profile = Profile(profile_type, (value_type,))
        name = self.document.get("name")
        processes = ProcessNumbering(profile)
        for i, entry in enumerate(self.profiles):
            label = entry.get("name") if isinstance(entry.get("name"), str) else ""
            match = _PROCESS_NAME.match(label)
            if match:
                pid = processes.pid(match.group("name"), int(match.group("pid")))
            else:
                pid = processes.pid(label or (name if isinstance(name, str) else "") or UNKNOWN)
            scale = scales[entry["unit"]]
            for frames, weight in self._stacks(i, entry):
                value = round(weight * scale)
                if value:
                    profile.add(pid, frames, [value])
        return profile

    def _stacks(self, i: int, entry: dict) -> Iterator[tuple[tuple[Frame, ...], float]]:
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
                yield tuple(self._frame_at(i, index) for index in stack), self._number(i, weight)
        elif kind == "evented":
            yield from self._evented(i, entry)
        else:
            raise self.corrupt(f"profile {i} has type {kind!r}, not 'sampled' or 'evented'")

    def _evented(self, i: int, entry: dict) -> Iterator[tuple[tuple[Frame, ...], float]]:
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
                yield tuple(self._frame_at(i, index) for index in open_frames), at - last
            last = at
            frame = event.get("frame")
            if event["type"] == "O":
                self._frame_at(i, frame)
                open_frames.append(frame)
            elif not open_frames or open_frames[-1] != frame:
                raise self.corrupt(f"profile {i}: frame {frame!r} closed but not the open one")
            else:
                open_frames.pop()

    def _frame_at(self, i: int, index: object) -> Frame:
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(self.frames):
            return self.frames[index]
        raise self.corrupt(f"profile {i} refers to frame {index!r}, which does not exist")

    def _number(self, i: int, value: object) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return value
        raise self.corrupt(f"profile {i}: {value!r} is not a number")
