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

Writing streams: samples are encoded a batch at a time into the gzip stream.

Reading accepts any pprof file (gzipped or not): inlined lines become frames of
their own, and locations without a function are named ``module+0xoffset``.
The encoded message is kept in memory and its samples parsed one at a time, so
a file may take at most :data:`MAX_PPROF_BYTES` decompressed (a gzip bomb is
refused, after counting, before anything is kept). Sample values must be
non-negative (difference profiles, ``pprof -diff_base``, are refused) and each
sample type's total must fit in int64.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from google.protobuf.message import DecodeError

from rover.export.names import (
    KERNEL_MAPPING,
    KERNEL_MODULE,
    UNKNOWN,
    frame_from_name,
)
from rover.export.pprof_pb import profile_pb2 as pb
from rover.export.protowire import WireError, split_repeated
from rover.export.readback import TIME_UNITS, CorruptProfile, ProcessNumbering
from rover.export.stacktable import StackTable, ValueOutOfRange
from rover.export.values import ValueView
from rover.profile import Frame, FrameKind, Profile, ProfileType, ValueType

# The most a pprof profile may take decompressed: it is kept in memory while
# its samples are read (a million distinct 30-frame stacks take about 70 MiB).
MAX_PPROF_BYTES = 256 * 2**20
_GZIP_MAGIC = b"\x1f\x8b"
_INFLATE_CHUNK = 2**20
_SAMPLE_FIELD = 2  # Profile.sample
PROCESS_LABEL = "process"
PID_LABEL = "pid"
_OFF_CPU_VALUES = {"switches", "off_cpu"}
_COUNTER = re.compile(r"^([\w.-]+)=(\d+)$")
_BATCH = 10_000  # samples encoded at a time


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


def write_pprof(table: StackTable, view: ValueView, out: BinaryIO) -> None:
    """Write the gzipped pprof encoding of ``table``; ``view`` names the default sample type.

    Streamed: samples are encoded a batch at a time, after the sample types
    and before mappings, locations, functions and strings, so the bytes are in
    field order and the whole message is never in memory.
    """
    encoder = _Encoder()
    string = encoder.string
    head = pb.Profile()
    for value_type in table.value_types:
        head.sample_type.add(type=string(value_type.type), unit=string(value_type.unit))
    column, divisor = table.values[view.index], view.divisor
    order = sorted(range(len(table)), key=lambda i: column[i] // divisor, reverse=True)
    main_binary = _main_binary(table, order)
    if main_binary is not None:
        encoder.mapping_id(main_binary)
    locations = [0] * len(table.frames)  # frame id -> location id, 0 until used
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:  # mtime 0: same bytes
        gz.write(head.SerializeToString())
        batch = pb.Profile()
        for index in order:
            values = [column[index] for column in table.values]
            if not any(values):
                continue
            ids = table.ids(index)
            sample = batch.sample.add(value=values)
            for frame_id in reversed(ids[1:]):
                if not locations[frame_id]:
                    locations[frame_id] = encoder.location_id(table.frames[frame_id])
                sample.location_id.append(locations[frame_id])
            pid = table.pids[ids[0]]
            name = string(table.process_name(pid))
            sample.label.add(key=string(PROCESS_LABEL), str=name)
            if pid > 0:
                sample.label.add(key=string(PID_LABEL), num=pid)
            if len(batch.sample) >= _BATCH:
                gz.write(batch.SerializeToString())
                batch = pb.Profile()  # not Clear(): that keeps the message's memory
        gz.write(batch.SerializeToString())
        gz.write(_tail(encoder, table.header, view).SerializeToString())


def _tail(encoder: _Encoder, header: Profile, view: ValueView) -> pb.Profile:
    """Everything after the samples: tables, times, period, comments, default type."""
    message, string = encoder.message, encoder.string
    message.default_sample_type = string(view.name)
    if header.type is ProfileType.ON_CPU and header.period_ns:
        message.period_type.type = string("cpu")
        message.period_type.unit = string("nanoseconds")
        message.period = header.period_ns
    message.time_nanos = header.start_time_ns
    message.duration_nanos = header.duration_ns
    counters = sorted((k, v) for k, v in header.counters.items() if v)
    message.comment.extend(string(f"{k}={v}") for k, v in counters)
    message.string_table.extend(string.table)
    return message


def _main_binary(table: StackTable, order: list[int]) -> Frame | None:
    """A frame of the heaviest process's executable: pprof takes mapping[0] for it.

    The process name is the executable's name (cut to 15 characters by the
    kernel); failing a match, the outermost user frame of the heaviest stack.
    """
    for index in order:
        ids = table.ids(index)
        user = [table.frames[i] for i in ids[1:]]
        user = [frame for frame in user if not frame.is_kernel and (frame.file or frame.module)]
        if not user:
            continue
        name = table.process_name(table.pids[ids[0]])
        for frame in user:
            if os.path.basename(frame.file or frame.module)[:15] == name[:15]:
                return frame
        return user[0]
    return None


# --- reading ------------------------------------------------------------------


def read_pprof(f: BinaryIO, source: str = "<pprof>") -> StackTable:
    """A table from a pprof file (gzipped or not); see :func:`pprof_table`."""
    data = f.read(MAX_PPROF_BYTES + 1)
    if len(data) > MAX_PPROF_BYTES:
        raise _too_big(source, "is larger than")
    return pprof_table(data, source)


def parse_pprof(data: bytes, source: str = "<pprof>") -> Profile:
    """A profile from pprof bytes (gzipped or not); see :func:`pprof_table`."""
    return pprof_table(data, source).to_profile()


def pprof_table(data: bytes, source: str = "<pprof>") -> StackTable:
    """A table from pprof bytes (gzipped or not); CorruptProfile says what is wrong.

    At most :data:`MAX_PPROF_BYTES` are decompressed (a gzip bomb is refused
    before any is kept). Samples are parsed one at a time (see protowire).
    """
    message: bytes | bytearray = _gunzip(data, source) if data[:2] == _GZIP_MAGIC else data
    header = pb.Profile()
    try:
        # protobuf parses any buffer without a copy; its stubs ask for bytes
        samples = split_repeated(message, _SAMPLE_FIELD, header.MergeFromString)  # type: ignore[arg-type]
    except (WireError, DecodeError) as exc:
        raise CorruptProfile(f"{source}: not a pprof profile: {exc}") from None
    return _Decoder(header, source).table(samples)


def _gunzip(data: bytes, source: str) -> bytearray:
    """Every gzip member decompressed; more than MAX_PPROF_BYTES is refused before
    anything is kept (the size is counted first)."""
    size = sum(map(len, _inflate(data, source)))
    out, position = bytearray(size), 0
    for chunk in _inflate(data, source):
        out[position : position + len(chunk)] = chunk
        position += len(chunk)
    return out


def _inflate(data: bytes, source: str) -> Iterator[bytes]:
    total = 0
    while data[:2] == _GZIP_MAGIC:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        pending = data
        while not inflater.eof:
            try:
                chunk = inflater.decompress(pending, _INFLATE_CHUNK)
            except zlib.error as exc:
                raise CorruptProfile(
                    f"{source}: not a pprof profile: bad gzip data ({exc})"
                ) from None
            total += len(chunk)
            if total > MAX_PPROF_BYTES:
                raise _too_big(source, "decompresses to more than")
            pending = inflater.unconsumed_tail
            if not chunk and not pending and not inflater.eof:
                raise CorruptProfile(f"{source}: not a pprof profile: bad gzip data (truncated)")
            yield chunk
        data = inflater.unused_data


def _too_big(source: str, what: str) -> CorruptProfile:
    return CorruptProfile(
        f"{source} {what} {MAX_PPROF_BYTES // 2**20} MiB, rover's limit for a pprof profile"
    )


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
        self._frame_ids: dict[int, tuple[int, ...]] = {}
        self._table: StackTable | None = None

    def corrupt(self, what: str) -> CorruptProfile:
        return CorruptProfile(f"{self.source}: corrupt pprof profile: {what}")

    def string(self, index: int) -> str:
        if not 0 <= index < len(self.strings):
            raise self.corrupt(f"string index {index} out of range")
        return self.strings[index]

    def table(self, samples: Iterable[bytes | memoryview]) -> StackTable:
        """The table of the encoded ``samples`` (the header message holds the rest)."""
        message = self.message
        value_types = tuple(
            ValueType(self.string(t.type), self.string(t.unit)) for t in message.sample_type
        )
        off_cpu = any(vt.type in _OFF_CPU_VALUES for vt in value_types)
        header = Profile(ProfileType.OFF_CPU if off_cpu else ProfileType.ON_CPU, value_types)
        header.start_time_ns = max(0, message.time_nanos)
        header.duration_ns = max(0, message.duration_nanos)
        period_unit = self.string(message.period_type.unit)
        if period_unit in TIME_UNITS and message.period > 0:
            header.period_ns = message.period * TIME_UNITS[period_unit]
        for index in message.comment:
            counter = _COUNTER.match(self.string(index))
            if counter:
                header.count(counter.group(1), int(counter.group(2)))

        table = self._table = StackTable(header)
        processes = ProcessNumbering(header)
        main_binary = self._main_binary()
        for number, encoded in enumerate(samples):
            try:
                sample = pb.Sample.FromString(encoded)  # type: ignore[arg-type]  # as above
            except DecodeError as exc:
                raise self.corrupt(f"sample {number}: {exc}") from None
            values = list(sample.value)
            if len(values) != len(value_types):
                raise self.corrupt(
                    f"a sample has {len(values)} values for {len(value_types)} sample types"
                )
            name, pid = main_binary, 0
            for label in sample.label:
                key = self.string(label.key)
                if key == PROCESS_LABEL and label.str:
                    name = self.string(label.str)
                elif key == PID_LABEL and label.num > 0:
                    pid = label.num
            ids = [table.process_index(processes.pid(name, pid))]
            for location_id in reversed(sample.location_id):  # pprof lists the leaf first
                ids.extend(self.frame_ids(location_id))
            try:
                table.add(ids, values)
            except ValueOutOfRange as exc:
                raise self.corrupt(
                    f"sample {number}: {exc} (rover reads counts and durations, which are >= 0)"
                ) from None
        return table.finish()

    def _main_binary(self) -> str:
        """The process name of samples without a process label: mapping[0]'s file name."""
        if self.message.mapping:
            filename = self.string(self.message.mapping[0].filename)
            if filename and not filename.startswith("["):
                return os.path.basename(filename)
        return UNKNOWN

    def frame_ids(self, location_id: int) -> tuple[int, ...]:
        """The frames of one location, caller first (pprof lists inlined callees first)."""
        ids = self._frame_ids.get(location_id)
        if ids is None:
            assert self._table is not None
            frames = self._location_frames(location_id)
            ids = self._frame_ids[location_id] = tuple(map(self._table.frame_id, frames))
        return ids

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
