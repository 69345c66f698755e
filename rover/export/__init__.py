"""Writers that turn a :class:`~rover.profile.Profile` into files, and readers back.

The format follows the file extension (see :mod:`rover.export.formats`):
folded stacks (``.folded``, ``.txt``), a self-contained HTML flame graph
(``.html``, ``.htm``), an SVG flame graph (``.svg``), pprof (``.pb.gz``,
``.pprof``) or speedscope JSON (``.speedscope.json``). Files are written
atomically. Folded, pprof and speedscope files can be read back.

Files are read into a :class:`~rover.export.stacktable.StackTable` (stacks
aggregated, frames interned) and every writer streams from one, so converting
a big file takes memory in proportion to its distinct stacks, not to its
lines, and an output is never built whole in memory (flame graphs keep only
the frames wide enough to draw). pprof and speedscope inputs are parsed whole
and have a size limit (:data:`~rover.export.pprof.MAX_PPROF_BYTES`,
:data:`~rover.export.speedscope.MAX_SPEEDSCOPE_CHARS`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import BinaryIO, TextIO

from rover.export.atomic import write_atomic
from rover.export.diff import render_diff_html
from rover.export.flamegraph import render_html
from rover.export.folded import folded_table, read_folded, write_folded
from rover.export.formats import (
    FOLDED,
    HTML,
    PPROF,
    SPEEDSCOPE,
    UnsupportedFormat,
    format_for_path,
    readable_format_for_path,
)
from rover.export.pprof import read_pprof, write_pprof
from rover.export.readback import CorruptProfile
from rover.export.speedscope import read_speedscope, write_speedscope
from rover.export.stacktable import StackTable
from rover.export.svg import render_svg
from rover.export.values import ValueView, select_value
from rover.profile import Profile, ProfileType

__all__ = [
    "CorruptProfile",
    "StackTable",
    "UnsupportedFormat",
    "format_for_path",
    "read_folded",
    "read_profile",
    "read_table",
    "write_diff",
    "write_profile",
]


def write_profile(
    profile: Profile | StackTable,
    path: str,
    *,
    value: str | None = None,
    title: str | None = None,
) -> None:
    """Write ``profile`` to ``path`` in the format its extension names.

    ``value`` picks the number shown (default: samples for on-CPU, off-CPU time
    in microseconds for off-CPU); an unknown one raises ValueError naming the
    valid choices. pprof keeps every value and shows ``value`` by default.
    ``title`` is used by the flame graphs and speedscope. OSError from an
    unwritable path propagates unchanged, and no partial file is left behind.
    """
    fmt = format_for_path(path)
    table = _as_table(profile)
    view = select_value(table.header, value)
    write_atomic(os.fspath(path), _writer(fmt, table, view, title))


def _writer(
    fmt: str, table: StackTable, view: ValueView, title: str | None
) -> Callable[[BinaryIO], None]:
    if fmt == PPROF:
        return lambda f: write_pprof(table, view, f)
    if fmt == FOLDED:
        return _text(lambda out: write_folded(table, view, out))
    if fmt == SPEEDSCOPE:
        return _text(lambda out: write_speedscope(table, view, out, title))
    render = render_html if fmt == HTML else render_svg
    return _text(lambda out: out.write(render(table, view, title)))


def _text(write: Callable[[TextIO], object]) -> Callable[[BinaryIO], None]:
    """A binary writer from a text one: UTF-8, names that are not valid Unicode escaped."""

    def write_binary(f: BinaryIO) -> None:
        out = io.TextIOWrapper(f, encoding="utf-8", errors="backslashreplace", newline="\n")
        write(out)
        out.flush()
        out.detach()  # the caller closes the file

    return write_binary


def write_diff(
    before: Profile | StackTable,
    after: Profile | StackTable,
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
    before, after = _as_table(before), _as_table(after)
    if before.type is not after.type:
        raise ValueError(
            f"cannot compare an {before.type.value} profile ({old}) "
            f"with an {after.type.value} one ({new})"
        )
    view = select_value(before.header, value)
    try:
        after_view = select_value(after.header, view.name)
    except ValueError as exc:
        raise ValueError(f"{new}: {exc}") from None
    if (view.unit, view.divisor) != (after_view.unit, after_view.divisor):
        raise ValueError(
            f"{view.name} is in {view.unit} in {old} but in {after_view.unit} in {new}"
        )
    page = render_diff_html(before, after, view, after_view=after_view, names=names, title=title)
    write_atomic(os.fspath(path), page.encode("utf-8", "backslashreplace"))


def _as_table(profile: Profile | StackTable) -> StackTable:
    return profile if isinstance(profile, StackTable) else StackTable.from_profile(profile)


def read_table(path: str, profile_type: ProfileType | None = None) -> StackTable:
    """Read a folded, pprof or speedscope file (by its extension) into a table.

    ``profile_type`` says what a file's bare numbers measure when the file does
    not say (other tools' folded stacks and speedscope files); default on-CPU.
    Raises UnsupportedFormat for other extensions, CorruptProfile (a
    ValueError) for content that is not what the extension promises or is out
    of range, and OSError when the file cannot be read.
    """
    fmt = readable_format_for_path(path)
    path = os.fspath(path)
    if fmt == PPROF:
        with open(path, "rb") as f:
            return read_pprof(f, source=path)
    try:
        with open(path, encoding="utf-8") as f:
            if fmt == SPEEDSCOPE:
                return read_speedscope(f, source=path, profile_type=profile_type)
            return folded_table(f, source=path, profile_type=profile_type)
    except UnicodeDecodeError as exc:
        raise CorruptProfile(f"{path}: not a {fmt} file: not UTF-8 text ({exc.reason})") from None


def read_profile(path: str, profile_type: ProfileType | None = None) -> Profile:
    """Like :func:`read_table`, as a :class:`Profile` (for small files)."""
    return read_table(path, profile_type).to_profile()
