"""Folded stacks: ``root;caller;leaf value``, one line per distinct stack.

The format of Brendan Gregg's stackcollapse scripts and bcc's ``profile -f``:
the first frame is the process name, kernel frames end in ``_[k]``, and the
value follows the last space (frame names may contain spaces).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from rover.export.names import folded_frame, folded_name, frame_from_folded, process_name
from rover.export.readback import FOLDED_VALUE, CorruptProfile, ProcessNumbering
from rover.export.values import ValueView
from rover.profile import Frame, Profile, ProfileType


def folded_lines(profile: Profile, view: ValueView) -> list[str]:
    """The folded lines (without newlines), sorted by stack, zero values left out.

    Stacks that become equal once named (same process name, same frame names)
    are merged into one line.
    """
    totals: dict[str, int] = defaultdict(int)
    for key, values in profile:
        names = [folded_name(process_name(profile, key.pid))]
        names.extend(folded_frame(frame) for frame in key.frames)
        totals[";".join(names)] += view.of(values)
    return [f"{stack} {value}" for stack, value in sorted(totals.items()) if value]


def render_folded(profile: Profile, view: ValueView) -> str:
    return "".join(line + "\n" for line in folded_lines(profile, view))


def parse_folded(lines: Iterable[str], source: str = "<folded>") -> list[tuple[list[str], int]]:
    """Parse folded lines into (frames root first, value); blank lines are skipped.

    Raises ValueError (:class:`CorruptProfile`) naming ``source`` and the line
    number of a malformed line.
    """
    stacks: list[tuple[list[str], int]] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        try:
            value = int(count)
        except ValueError:
            value = None
        if not stack or value is None:
            raise CorruptProfile(
                f"{source}:{lineno}: expected 'frame;frame;... value', got {line!r:.200}"
            )
        stacks.append((stack.split(";"), value))
    return stacks


def read_folded(path: str) -> list[tuple[list[str], int]]:
    """Read a folded-stacks file (see :func:`parse_folded`)."""
    with open(path, encoding="utf-8") as f:
        return parse_folded(f, source=path)


def profile_from_folded(
    stacks: Iterable[tuple[list[str], int]], profile_type: ProfileType = ProfileType.ON_CPU
) -> Profile:
    """A profile of folded stacks: the first field is the process, ``_[k]`` marks kernel frames.

    The one column of numbers is read as the type's usual folded value (see
    :data:`~rover.export.readback.FOLDED_VALUE`): sample counts for on-CPU,
    microseconds blocked for off-CPU.
    """
    value_type, scale = FOLDED_VALUE[profile_type]
    profile = Profile(profile_type, (value_type,))
    processes = ProcessNumbering(profile)
    known: dict[str, Frame] = {}  # the same names come back on every line
    for fields, value in stacks:
        frames = []
        for field in fields[1:]:
            frame = known.get(field)
            if frame is None:
                frame = known[field] = frame_from_folded(field)
            frames.append(frame)
        profile.add(processes.pid(fields[0]), tuple(frames), [value * scale])
    return profile
