"""pprof's format: a gzipped ``perftools.profiles.Profile`` (protos/pprof/profile.proto).

What a profile becomes, so that ``go tool pprof`` and speedscope show it well:

- every value type is a sample type (on-CPU ``samples/count`` and
  ``cpu/nanoseconds``, period type ``cpu/nanoseconds`` every ``period_ns``;
  off-CPU ``switches/count`` and ``off_cpu/nanoseconds``); the shown value
  (``--value``) is the default sample type;
- one mapping per module: the file (full path when known, else the module
  name) and its build id; every kernel frame is in ``[kernel.kallsyms]``, with
  a kernel module's name kept as its function's file name;
- one location per distinct frame, one function per distinct name; frames are
  already symbolized, so no addresses and every mapping ``has_functions``;
- the process is a sample label, ``process`` (name) and ``pid`` (number),
  rather than a root frame, so ``-top`` lists only code; ``-tagroot=process``
  puts it at the root of ``-traces``/``-tree``/the web flame graph, and
  ``-tagfocus=process=NAME`` picks one process;
- counters become comments (``name=value``).

Reading accepts any pprof file (gzipped or not): inlined lines become frames of
their own, and locations without a function are named ``module+0xoffset``.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import zlib
from collections.abc import Iterator

from google.protobuf.message import DecodeError

from rover.export.names import (
    KERNEL_MAPPING,
    KERNEL_MODULE,
    UNKNOWN,
    frame_from_name,
    process_name,
)
from rover.export.pprof_pb import profile_pb2 as pb
from rover.export.readback import TIME_UNITS, CorruptProfile, ProcessNumbering
from rover.export.values import ValueView
from rover.profile import Frame, FrameKind, Profile, ProfileType, StackKey, ValueType

PROCESS_LABEL = "process"
PID_LABEL = "pid"
_OFF_CPU_VALUES = {"switches", "off_cpu"}
_COUNTER = re.compile(r"^([\w.-]+)=(\d+)$")


class _Strings:
    """pprof's string table: index 0 is always the empty string."""

    def __init__(self) -> None:
        self.table = [""]
        self._index = {"": 0}

    def __call__(self, text: str) -> int:
        index = self._index.get(text)
        if index is None:
            index = self._index[text] = len(self.table)
            self.table.append(text)
        return index


class _Encoder:
    """Builds the message: mappings, functions and locations, each created once."""

    def __init__(self) -> None:
        self.message = pb.Profile()
        self.string = _Strings()
        self._mappings: dict[tuple[str, str], int] = {}
        self._functions: dict[tuple[str, str], int] = {}
        self._locations: dict[tuple, int] = {}

    def mapping_id(self, frame: Frame) -> int:
        if frame.is_kernel:
            key = (KERNEL_MAPPING, "")
        elif frame.file or frame.module:
            key = (frame.file or frame.module, frame.build_id)
        else:
            return 0  # no module known (e.g. read from folded stacks): no mapping
        mapping_id = self._mappings.get(key)
        if mapping_id is None:
            mapping_id = self._mappings[key] = len(self._mappings) + 1
            self.message.mapping.add(
                id=mapping_id,
                filename=self.string(key[0]),
                build_id=self.string(key[1]),
                has_functions=True,  # names come with the frames: nothing to symbolize
            )
        return mapping_id

    def function_id(self, name: str, filename: str) -> int:
        key = (name, filename)
        function_id = self._functions.get(key)
        if function_id is None:
            function_id = self._functions[key] = len(self._functions) + 1
            self.message.function.add(
                id=function_id,
                name=self.string(name),
                system_name=self.string(name),
                filename=self.string(filename),
            )
        return function_id

    def location_id(self, frame: Frame) -> int:
        # A tuple, not the Frame: the dataclass's generated __hash__ is slow.
        key = (frame.name, frame.kind is FrameKind.KERNEL, frame.module, frame.symbolized,
               frame.file, frame.build_id)  # fmt: skip
        location_id = self._locations.get(key)
        if location_id is None:
            location_id = self._locations[key] = len(self._locations) + 1
            # A kernel module's name is kept as its functions' file: the mapping is the kernel's.
            module = frame.module if frame.is_kernel and frame.module != KERNEL_MODULE else ""
            function = self.function_id(frame.name or UNKNOWN, module)
            location = self.message.location.add(id=location_id, mapping_id=self.mapping_id(frame))
            location.line.add(function_id=function)
        return location_id


def render_pprof(profile: Profile, view: ValueView) -> bytes:
    """The gzipped pprof encoding of ``profile``; ``view`` names the default sample type."""
    encoder = _Encoder()
    message, string = encoder.message, encoder.string
    for value_type in profile.value_types:
        message.sample_type.add(type=string(value_type.type), unit=string(value_type.unit))
    message.default_sample_type = string(view.name)
    if profile.type is ProfileType.ON_CPU and profile.period_ns:
        message.period_type.type = string("cpu")
        message.period_type.unit = string("nanoseconds")
        message.period = profile.period_ns
    message.time_nanos = profile.start_time_ns
    message.duration_nanos = profile.duration_ns
    counters = sorted((k, v) for k, v in profile.counters.items() if v)
    message.comment.extend(string(f"{k}={v}") for k, v in counters)

    stacks = sorted(profile, key=lambda item: view.of(item[1]), reverse=True)
    main_binary = _main_binary(profile, stacks)
    if main_binary is not None:
        encoder.mapping_id(main_binary)
    for key, values in stacks:
        if not any(values):
            continue
        sample = message.sample.add(value=values)
        sample.location_id.extend(encoder.location_id(f) for f in reversed(key.frames))
        name = string(process_name(profile, key.pid))
        sample.label.add(key=string(PROCESS_LABEL), str=name)
        if key.pid > 0:
            sample.label.add(key=string(PID_LABEL), num=key.pid)
    message.string_table.extend(string.table)
    # mtime=0: the same profile gives the same bytes.
    return gzip.compress(message.SerializeToString(), mtime=0)


def _main_binary(profile: Profile, stacks: list[tuple[StackKey, list[int]]]) -> Frame | None:
    """A frame of the heaviest process's executable: pprof takes mapping[0] for it.

    The process name is the executable's name (cut to 15 characters by the
    kernel); failing a match, the outermost user frame of the heaviest stack.
    """
    for key, _ in stacks:
        user = [
            frame for frame in key.frames if not frame.is_kernel and (frame.file or frame.module)
        ]
        if not user:
            continue
        name = process_name(profile, key.pid)
        for frame in user:
            if os.path.basename(frame.file or frame.module)[:15] == name[:15]:
                return frame
        return user[0]
    return None


# --- reading ------------------------------------------------------------------


def parse_pprof(data: bytes, source: str = "<pprof>") -> Profile:
    """A profile from pprof bytes (gzipped or not); CorruptProfile says what is wrong."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise CorruptProfile(f"{source}: not a pprof profile: bad gzip data ({exc})") from None
    message = pb.Profile()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise CorruptProfile(f"{source}: not a pprof profile: {exc}") from None
    return _Decoder(message, source).profile()


class _Decoder:
    def __init__(self, message: pb.Profile, source: str) -> None:
        self.message = message
        self.source = source
        self.strings = list(message.string_table)
        if not message.sample_type or not self.strings or self.strings[0] != "":
            raise CorruptProfile(
                f"{source}: not a pprof profile (no sample types or no string table)"
            )
        self.mappings = {m.id: m for m in message.mapping}
        self.functions = {f.id: f for f in message.function}
        self.locations = {loc.id: loc for loc in message.location}
        self._frames: dict[int, tuple[Frame, ...]] = {}

    def corrupt(self, what: str) -> CorruptProfile:
        return CorruptProfile(f"{self.source}: corrupt pprof profile: {what}")

    def string(self, index: int) -> str:
        if not 0 <= index < len(self.strings):
            raise self.corrupt(f"string index {index} out of range")
        return self.strings[index]

    def profile(self) -> Profile:
        message = self.message
        value_types = tuple(
            ValueType(self.string(t.type), self.string(t.unit)) for t in message.sample_type
        )
        off_cpu = any(vt.type in _OFF_CPU_VALUES for vt in value_types)
        profile = Profile(ProfileType.OFF_CPU if off_cpu else ProfileType.ON_CPU, value_types)
        profile.start_time_ns = max(0, message.time_nanos)
        profile.duration_ns = max(0, message.duration_nanos)
        period_unit = self.string(message.period_type.unit)
        if period_unit in TIME_UNITS and message.period > 0:
            profile.period_ns = message.period * TIME_UNITS[period_unit]
        for index in message.comment:
            counter = _COUNTER.match(self.string(index))
            if counter:
                profile.count(counter.group(1), int(counter.group(2)))

        processes = ProcessNumbering(profile)
        main_binary = self._main_binary()
        for sample in message.sample:
            if len(sample.value) != len(value_types):
                raise self.corrupt(
                    f"a sample has {len(sample.value)} values for {len(value_types)} sample types"
                )
            name, pid = main_binary, 0
            for label in sample.label:
                key = self.string(label.key)
                if key == PROCESS_LABEL and label.str:
                    name = self.string(label.str)
                elif key == PID_LABEL and label.num > 0:
                    pid = label.num
            frames: list[Frame] = []
            for location_id in reversed(sample.location_id):  # pprof lists the leaf first
                frames.extend(self.frames(location_id))
            profile.add(processes.pid(name, pid), tuple(frames), list(sample.value))
        return profile

    def _main_binary(self) -> str:
        """The process name of samples without a process label: mapping[0]'s file name."""
        if self.message.mapping:
            filename = self.string(self.message.mapping[0].filename)
            if filename and not filename.startswith("["):
                return os.path.basename(filename)
        return UNKNOWN

    def frames(self, location_id: int) -> tuple[Frame, ...]:
        """The frames of one location, caller first (pprof lists inlined callees first)."""
        frames = self._frames.get(location_id)
        if frames is None:
            frames = self._frames[location_id] = tuple(self._location_frames(location_id))
        return frames

    def _location_frames(self, location_id: int) -> Iterator[Frame]:
        location = self.locations.get(location_id)
        if location is None:
            raise self.corrupt(f"a sample refers to location {location_id}, which does not exist")
        mapping = self.mappings.get(location.mapping_id)
        if location.mapping_id and mapping is None:
            raise self.corrupt(f"location {location_id} refers to a missing mapping")
        filename = self.string(mapping.filename) if mapping else ""
        build_id = self.string(mapping.build_id) if mapping else ""
        kernel = filename.startswith(KERNEL_MAPPING)
        module = os.path.basename(filename) if filename and not kernel else ""
        file = filename if filename.startswith("/") else ""
        if not location.line:  # not symbolized: name it by the address in its file
            offset = location.address
            if mapping is not None:
                offset = location.address - mapping.memory_start + mapping.file_offset
            base = KERNEL_MODULE if kernel else module or UNKNOWN
            name = f"{base}+0x{max(0, offset):x}"
            kind = FrameKind.KERNEL if kernel else FrameKind.USER
            yield Frame(name, kind, base if kernel else module, False, file, build_id)
            return
        for line in reversed(location.line):
            function = self.functions.get(line.function_id)
            if function is None:
                raise self.corrupt(f"location {location_id} refers to a missing function")
            name = self.string(function.name) or self.string(function.system_name) or UNKNOWN
            if kernel:
                kernel_module = self.string(function.filename) or KERNEL_MODULE
                yield frame_from_name(name, FrameKind.KERNEL, kernel_module)
            else:
                named = frame_from_name(name, FrameKind.USER, module)
                yield dataclasses.replace(named, file=file, build_id=build_id)
