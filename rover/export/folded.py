"""Folded stacks: ``root;caller;leaf value``, one line per distinct stack.

The format of Brendan Gregg's stackcollapse scripts and bcc's ``profile -f``:
the first frame is the process name, kernel frames end in ``_[k]``, and the
value follows the last space (frame names may contain spaces). Lines are
sorted as text.

What the numbers measure: on-CPU sample counts, bcc's and flamegraph.pl's
default, are written as they always were. Anything else (off-CPU
microseconds, switch counts, CPU nanoseconds) gets a first line such as::

    # rover type=off-cpu value=off_cpu unit=microseconds 0

To flamegraph.pl, difffolded.pl, inferno and speedscope that is a stack with
a count of 0: nothing is drawn for it and nothing is printed. A comment line
without a count would read better, but flamegraph.pl counts it as an invalid
line (a warning on every run) and difffolded.pl turns it into an empty stack.
Rover reads the line back as the file's value type.

Reading streams the file line by line into a :class:`StackTable`; counts must
be non-negative integers whose total fits in int64, else the file and line
are named, as for any malformed line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

from rover.export.names import folded_frame, folded_name, frame_from_folded
from rover.export.readback import FOLDED_VALUE, TIME_UNITS, CorruptProfile, ProcessNumbering
from rover.export.stacktable import INT64_MAX, StackTable, ValueOutOfRange, dense_ranks
from rover.export.values import ValueView
from rover.profile import Profile, ProfileType, ValueType

VALUE_LINE_PREFIX = "# rover "
_VALUE_LINE = re.compile(r"^# rover type=(\S+) value=(\S+) unit=(\S+)$")  # the stack part
_MAX_DIGITS = len(str(INT64_MAX))
_BATCH = 4096  # lines written at a time


@dataclass(frozen=True, slots=True)
class FoldedValue:
    """What a folded file's numbers are, and the factor to the profile's unit."""

    profile_type: ProfileType
    value_type: ValueType
    scale: int = 1

    @classmethod
    def default(cls, profile_type: ProfileType) -> FoldedValue:
        """The usual meaning of bare numbers (see readback.FOLDED_VALUE)."""
        value_type, scale = FOLDED_VALUE[profile_type]
        return cls(profile_type, value_type, scale)

    def line(self) -> str:
        """The value line (see the module docstring), in the unit of the numbers written."""
        unit = self.value_type.unit
        if unit in TIME_UNITS:
            unit = _TIME_UNIT_NAMES[TIME_UNITS[unit] * self.scale]
        fields = f"type={self.profile_type.value} value={self.value_type.type} unit={unit}"
        return f"{VALUE_LINE_PREFIX}{fields} 0"


_TIME_UNIT_NAMES = {ns: name for name, ns in TIME_UNITS.items()}


def written_value(table: StackTable, view: ValueView) -> FoldedValue:
    """What the numbers of ``table`` are once written as ``view`` shows them."""
    value_type = table.value_types[view.index]
    value_type = ValueType(_word(value_type.type), _word(value_type.unit))
    ns_per_number = TIME_UNITS.get(value_type.unit, 0) * view.divisor
    # Durations are written in the unit shown (off-CPU: microseconds), anything else as it is.
    scale = view.divisor if ns_per_number in _TIME_UNIT_NAMES else 1
    return FoldedValue(table.type, value_type, scale)


def value_line(table: StackTable, view: ValueView) -> str | None:
    """The line naming the value type, or None for plain on-CPU sample counts."""
    value = written_value(table, view)
    return None if value == FoldedValue.default(ProfileType.ON_CPU) else value.line()


def _word(text: str) -> str:
    return re.sub(r"\s", "_", text) or "none"


def write_folded(table: StackTable, view: ValueView, out: TextIO) -> None:
    """Write the folded lines of ``table``, sorted; zero values left out.

    Stacks that become equal once named (same process name, same frame names)
    are merged into one line.
    """
    header = value_line(table, view)
    if header is not None:
        out.write(header + "\n")
    frame_text = [folded_frame(frame) for frame in table.frames]
    process_text = [folded_name(table.process_name(pid)) for pid in table.pids]
    mid_frame, mid_process, last_frame, last_process = _text_order(frame_text, process_text)
    order, keys = table.sorted_keys(
        mid_frame, mid_process, last_frame_rank=last_frame, last_process_rank=last_process
    )
    column, divisor = table.values[view.index], view.divisor
    batch: list[str] = []
    previous_key, previous_index, value = b"", -1, 0
    for index, key in zip(order, keys, strict=True):
        if key != previous_key:
            if value:
                batch.append(_line(table, previous_index, process_text, frame_text, value))
                if len(batch) >= _BATCH:
                    out.write("".join(batch))
                    batch.clear()
            previous_key, previous_index, value = key, index, 0
        value += column[index] // divisor
    if value:
        batch.append(_line(table, previous_index, process_text, frame_text, value))
    out.write("".join(batch))


def _text_order(frame_text: list[str], process_text: list[str]) -> tuple[list[int], ...]:
    """Ranks that sort stacks as their lines sort as text (as `sort` and inferno expect).

    A line is ``process;frame;...;last value``: each field is followed by ';'
    except the last, followed by ' '. Ranking every field with what follows it
    makes comparing rank by rank the same as comparing the lines ("f;x" sorts
    after "f.cold" and "f2", which a field-by-field order would not give).
    """
    texts = [*(t + ";" for t in frame_text), *(t + ";" for t in process_text),
             *(t + " " for t in frame_text), *(t + " " for t in process_text)]  # fmt: skip
    ranks = dense_ranks(texts, str)
    frames, processes = len(frame_text), len(process_text)
    middle = frames + processes
    return (ranks[:frames], ranks[frames:middle],
            ranks[middle : middle + frames], ranks[middle + frames :])  # fmt: skip


def _line(
    table: StackTable, index: int, process_text: list[str], frame_text: list[str], value: int
) -> str:
    ids = table.ids(index)
    frames = ";".join(map(frame_text.__getitem__, ids[1:]))
    stack = f"{process_text[ids[0]]};{frames}" if frames else process_text[ids[0]]
    return f"{stack} {value}\n"


# --- reading ------------------------------------------------------------------


def _split(raw: str, lineno: int, source: str) -> tuple[str, int] | None:
    """(stack, count) of one line, None for a blank one; CorruptProfile if malformed."""
    line = raw.rstrip("\r\n")
    if not line.strip():
        return None
    stack, _, count = line.rpartition(" ")
    if stack and count.isascii() and count.isdigit():
        if len(count) > _MAX_DIGITS or int(count) > INT64_MAX:
            raise CorruptProfile(
                f"{source}:{lineno}: count {count:.40} is out of range (at most {INT64_MAX})"
            )
        return stack, int(count)
    if stack and count.startswith("-") and count[1:].isascii() and count[1:].isdigit():
        raise CorruptProfile(f"{source}:{lineno}: negative count {count:.40}; counts are >= 0")
    raise CorruptProfile(f"{source}:{lineno}: expected 'frame;frame;... value', got {line!r:.200}")


def _value_line(stack: str, count: int, lineno: int, source: str) -> FoldedValue:
    match = _VALUE_LINE.match(stack)
    try:
        if match is None or count != 0:
            raise ValueError
        profile_type = ProfileType(match.group(1))
    except ValueError:
        raise CorruptProfile(
            f"{source}:{lineno}: unreadable value line {stack!r:.200}; expected "
            f"'{VALUE_LINE_PREFIX}type=on-cpu|off-cpu value=NAME unit=UNIT 0'"
        ) from None
    name, unit = match.group(2), match.group(3)
    if unit in TIME_UNITS:  # kept in nanoseconds, as profiles keep durations
        return FoldedValue(profile_type, ValueType(name, "nanoseconds"), TIME_UNITS[unit])
    return FoldedValue(profile_type, ValueType(name, unit))


def parse_folded(lines: Iterable[str], source: str = "<folded>") -> list[tuple[list[str], int]]:
    """Parse folded lines into (frames root first, value); blank and value lines are skipped.

    Raises ValueError (:class:`CorruptProfile`) naming ``source`` and the line
    number of a malformed line.
    """
    stacks = []
    for lineno, raw in enumerate(lines, 1):
        parsed = _split(raw, lineno, source)
        if parsed is not None and not parsed[0].startswith(VALUE_LINE_PREFIX):
            stacks.append((parsed[0].split(";"), parsed[1]))
    return stacks


def read_folded(path: str) -> list[tuple[list[str], int]]:
    """Read a folded-stacks file (see :func:`parse_folded`)."""
    with open(path, encoding="utf-8") as f:
        return parse_folded(f, source=path)


class _Interned(dict):
    """field text -> id, made by ``make`` on first sight (so lookups stay in C)."""

    def __init__(self, make: Callable[[str], int]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: str) -> int:
        value = self[key] = self.make(key)
        return value


def _new_table(value: FoldedValue) -> tuple[StackTable, _Interned, _Interned]:
    """A table for ``value``, with its process and frame interners for folded fields."""
    table = StackTable(Profile(value.profile_type, (value.value_type,)))
    numbering = ProcessNumbering(table.header)
    processes = _Interned(lambda name: table.process_index(numbering.pid(name)))
    frames = _Interned(lambda field: table.frame_id(frame_from_folded(field)))
    return table, processes, frames


def folded_table(
    lines: Iterable[str], source: str = "<folded>", profile_type: ProfileType | None = None
) -> StackTable:
    """Folded lines aggregated into a table, one line at a time.

    The first field is the process, ``_[k]`` marks kernel frames. The numbers
    are what the file's value line says, else ``profile_type``'s usual folded
    value (default on-CPU samples; see FOLDED_VALUE).
    """
    value: FoldedValue | None = None
    table: StackTable | None = None
    scale = 1  # the value's, once the first stack fixed it
    for lineno, raw in enumerate(lines, 1):
        parsed = _split(raw, lineno, source)
        if parsed is None:
            continue
        stack, count = parsed
        if stack.startswith(VALUE_LINE_PREFIX):
            said = _value_line(stack, count, lineno, source)
            if value is not None and said != value:
                raise CorruptProfile(
                    f"{source}:{lineno}: {said.line()[:-2]!r} contradicts what the lines "
                    f"before it are ({value.value_type.type} in {value.value_type.unit})"
                )
            value = said
            continue
        if table is None:
            value = value or FoldedValue.default(profile_type or ProfileType.ON_CPU)
            table, processes, frames = _new_table(value)
            scale = value.scale
        fields = stack.split(";")
        ids = [processes[fields[0]], *map(frames.__getitem__, fields[1:])]
        try:
            table.add(ids, (count * scale,))
        except ValueOutOfRange as exc:
            raise CorruptProfile(f"{source}:{lineno}: {exc}") from None
    if table is None:  # no stacks: an empty profile of the said or given type
        value = value or FoldedValue.default(profile_type or ProfileType.ON_CPU)
        table = StackTable(Profile(value.profile_type, (value.value_type,)))
    return table.finish()
