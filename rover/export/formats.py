"""Which file format a path names, from its extension."""

from __future__ import annotations

import os

FOLDED = "folded"
HTML = "html"
SVG = "svg"
PPROF = "pprof"
SPEEDSCOPE = "speedscope"

# Longest first: ".speedscope.json" and ".pb.gz" are double extensions, so the
# whole name's ending is matched rather than os.path.splitext's last part.
EXTENSIONS = {
    ".speedscope.json": SPEEDSCOPE,
    ".pb.gz": PPROF,
    ".pprof": PPROF,
    ".folded": FOLDED,
    ".txt": FOLDED,
    ".html": HTML,
    ".htm": HTML,
    ".svg": SVG,
}

# Formats that keep the stacks, so a profile can be read back from them.
READABLE = (FOLDED, PPROF, SPEEDSCOPE)


class UnsupportedFormat(ValueError):
    """The path's extension names no format this package handles (for that direction)."""


def format_for_path(path: str) -> str:
    """``"folded"``, ``"html"``, ``"svg"``, ``"pprof"`` or ``"speedscope"``, from ``path``."""
    name = os.path.basename(os.fspath(path)).lower()
    for extension, fmt in EXTENSIONS.items():
        if name.endswith(extension) and len(name) > len(extension):
            return fmt
    extension = os.path.splitext(name)[1]
    shown = f"extension {extension!r}" if extension else "no extension"
    supported = ", ".join(EXTENSIONS)
    raise UnsupportedFormat(
        f"cannot tell the format of {os.fspath(path)!r} ({shown}); use one of: {supported}"
    )


def readable_format_for_path(path: str) -> str:
    """Like :func:`format_for_path`, for input: only formats that keep the stacks."""
    fmt = format_for_path(path)
    if fmt not in READABLE:
        readable = ", ".join(e for e, f in EXTENSIONS.items() if f in READABLE)
        raise UnsupportedFormat(
            f"cannot read {fmt} files ({os.fspath(path)!r}): a flame graph does not keep "
            f"the stacks; read one of: {readable}"
        )
    return fmt
