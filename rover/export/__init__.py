"""Writers that turn a :class:`~rover.profile.Profile` into files people read.

The format follows the file extension: folded stacks (``.folded``, ``.txt``),
a self-contained HTML flame graph (``.html``, ``.htm``) or an SVG flame graph
(``.svg``). Files are written atomically.
"""

from __future__ import annotations

import os

from rover.export.atomic import write_atomic
from rover.export.flamegraph import render_html
from rover.export.folded import read_folded, render_folded
from rover.export.svg import render_svg
from rover.export.values import select_value
from rover.profile import Profile

__all__ = ["UnsupportedFormat", "format_for_path", "read_folded", "write_profile"]

_FORMATS = {
    ".folded": "folded",
    ".txt": "folded",
    ".html": "html",
    ".htm": "html",
    ".svg": "svg",
}


class UnsupportedFormat(ValueError):
    """The output path's extension names no format this package writes."""


def format_for_path(path: str) -> str:
    """``"folded"``, ``"html"`` or ``"svg"``, from the extension of ``path``."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    try:
        return _FORMATS[extension]
    except KeyError:
        supported = ", ".join(_FORMATS)
        shown = f"extension {extension!r}" if extension else "no extension"
        raise UnsupportedFormat(
            f"cannot tell the output format of {path!r} ({shown}); use one of: {supported}"
        ) from None


def write_profile(
    profile: Profile, path: str, *, value: str | None = None, title: str | None = None
) -> None:
    """Write ``profile`` to ``path`` in the format its extension names.

    ``value`` picks the number shown (default: samples for on-CPU, off-CPU time
    in microseconds for off-CPU); an unknown one raises ValueError naming the
    valid choices. ``title`` is used by the flame graphs. OSError from an
    unwritable path propagates unchanged, and no partial file is left behind.
    """
    fmt = format_for_path(path)
    view = select_value(profile, value)
    if fmt == "folded":
        text = render_folded(profile, view)
    elif fmt == "html":
        text = render_html(profile, view, title)
    else:
        text = render_svg(profile, view, title)
    write_atomic(os.fspath(path), text.encode("utf-8", "backslashreplace"))
