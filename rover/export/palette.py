"""Frame colours, shared by the HTML and SVG flame graphs.

flamegraph.pl's "java" scheme: user code red, kernel orange; plus grey for
frames without a symbol. The shade comes from a hash of the name, so a
function keeps its colour between runs and neighbours stay distinguishable.
"""

from __future__ import annotations

import zlib

from rover.export.tree import KERNEL, PROCESS, ROOT, UNSYMBOLIZED, USER

# category -> (base rgb, rgb added at full hash weight)
_RAMPS = {
    USER: ((200, 50, 50), (55, 80, 80)),
    KERNEL: ((190, 90, 0), (65, 65, 0)),
    UNSYMBOLIZED: ((170, 170, 170), (40, 40, 40)),
    PROCESS: ((200, 200, 90), (40, 40, 40)),
    ROOT: ((210, 210, 200), (0, 0, 0)),
}

LEGEND = (
    (USER, "user"),
    (KERNEL, "kernel"),
    (UNSYMBOLIZED, "no symbol"),
    (PROCESS, "process"),
)

MATCH_COLOR = "#d24ee6"  # search hits, flamegraph.pl's magenta

# Differential graphs: a frame is mixed from "same" (nearly white, as
# flamegraph.pl draws no change) towards "grew" or "shrank" by its relative
# change (see diff.SATURATION; flamegraph.pl's convention: red hotter, blue colder).
DIFF_COLORS = {
    "grew": (215, 40, 30),
    "shrank": (40, 90, 215),
    "same": (240, 240, 234),
}
DIFF_LEGEND = (("grew", "grew"), ("shrank", "shrank"), ("same", "unchanged"))


def rgb_hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def frame_color(category: str, name: str) -> str:
    """``#rrggbb`` for a frame, stable for a given category and name."""
    base, spread = _RAMPS.get(category, _RAMPS[USER])
    weight = (zlib.crc32(name.encode("utf-8", "replace")) & 0xFFFF) / 0xFFFF
    r, g, b = (min(255, int(c + s * weight)) for c, s in zip(base, spread, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def legend_color(category: str) -> str:
    """The middle shade of a category, for legends."""
    base, spread = _RAMPS[category]
    r, g, b = (int(c + s / 2) for c, s in zip(base, spread, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"
