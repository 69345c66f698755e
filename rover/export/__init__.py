"""Writers that turn a :class:`~rover.profile.Profile` into files, and readers back.

The format follows the file extension (see :mod:`rover.export.formats`):
folded stacks (``.folded``, ``.txt``), a self-contained HTML flame graph
(``.html``, ``.htm``), an SVG flame graph (``.svg``), pprof (``.pb.gz``,
``.pprof``) or speedscope JSON (``.speedscope.json``). Files are written
atomically. Folded, pprof and speedscope files can be read back.
"""

from __future__ import annotations

import os

from rover.export.atomic import write_atomic
from rover.export.diff import render_diff_html
from rover.export.flamegraph import render_html
from rover.export.folded import parse_folded, profile_from_folded, read_folded, render_folded
from rover.export.formats import (
    FOLDED,
    HTML,
    PPROF,
    SPEEDSCOPE,
    UnsupportedFormat,
    format_for_path,
    readable_format_for_path,
)
from rover.export.pprof import parse_pprof, render_pprof
from rover.export.readback import CorruptProfile
from rover.export.speedscope import parse_speedscope, render_speedscope
from rover.export.svg import render_svg
from rover.export.values import select_value
from rover.profile import Profile, ProfileType

__all__ = [
    "CorruptProfile",
    "UnsupportedFormat",
    "format_for_path",
    "read_folded",
    "read_profile",
    "write_diff",
    "write_profile",
]


def write_profile(
    profile: Profile, path: str, *, value: str | None = None, title: str | None = None
) -> None:
    """Write ``profile`` to ``path`` in the format its extension names.

    ``value`` picks the number shown (default: samples for on-CPU, off-CPU time
    in microseconds for off-CPU); an unknown one raises ValueError naming the
    valid choices. pprof keeps every value and shows ``value`` by default.
    ``title`` is used by the flame graphs and speedscope. OSError from an
    unwritable path propagates unchanged, and no partial file is left behind.
    """
    fmt = format_for_path(path)
    view = select_value(profile, value)
    if fmt == PPROF:
        data = render_pprof(profile, view)
    else:
        if fmt == FOLDED:
            text = render_folded(profile, view)
        elif fmt == HTML:
            text = render_html(profile, view, title)
        elif fmt == SPEEDSCOPE:
            text = render_speedscope(profile, view, title)
        else:
            text = render_svg(profile, view, title)
        data = text.encode("utf-8", "backslashreplace")
    write_atomic(os.fspath(path), data)


def write_diff(
    before: Profile,
    after: Profile,
    path: str,
    *,
    value: str | None = None,
    title: str | None = None,
    names: tuple[str, str] = ("", ""),
) -> None:
    """Write the differential flame graph of ``after`` against ``before`` (HTML only).

    ``names`` (e.g. the file names) label the two sides in the summary and in
    errors. ``value`` is picked in both (default: the before profile's default). Raises
    UnsupportedFormat for a path that is not .html/.htm, ValueError when the
    profiles cannot be compared, OSError when the file cannot be written.
    """
    if format_for_path(path) != HTML:
        raise UnsupportedFormat(
            f"a differential flame graph is an HTML page: {os.fspath(path)!r} must end in .html"
        )
    old, new = names[0] or "before", names[1] or "after"
    if before.type is not after.type:
        raise ValueError(
            f"cannot compare an {before.type.value} profile ({old}) "
            f"with an {after.type.value} one ({new})"
        )
    view = select_value(before, value)
    try:
        after_view = select_value(after, view.name)
    except ValueError as exc:
        raise ValueError(f"{new}: {exc}") from None
    if (view.unit, view.divisor) != (after_view.unit, after_view.divisor):
        raise ValueError(
            f"{view.name} is in {view.unit} in {old} but in {after_view.unit} in {new}"
        )
    page = render_diff_html(before, after, view, after_view=after_view, names=names, title=title)
    write_atomic(os.fspath(path), page.encode("utf-8", "backslashreplace"))


def read_profile(path: str, profile_type: ProfileType | None = None) -> Profile:
    """Read a folded, pprof or speedscope file (by its extension) into a profile.

    ``profile_type`` says what a file's bare numbers measure when the file does
    not say (folded stacks, other tools' speedscope files); default on-CPU.
    Raises UnsupportedFormat for other extensions, CorruptProfile (a
    ValueError) for content that is not what the extension promises, and
    OSError when the file cannot be read.
    """
    fmt = readable_format_for_path(path)
    path = os.fspath(path)
    if fmt == PPROF:
        with open(path, "rb") as f:
            return parse_pprof(f.read(), source=path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise CorruptProfile(f"{path}: not a {fmt} file: not UTF-8 text ({exc.reason})") from None
    if fmt == SPEEDSCOPE:
        return parse_speedscope(text, source=path, profile_type=profile_type)
    stacks = parse_folded(text.splitlines(), source=path)
    return profile_from_folded(stacks, profile_type or ProfileType.ON_CPU)
