"""A standalone SVG flame graph.

``<title>`` elements give hover text; an embedded script (assets/flamegraph-svg.js)
adds click-to-zoom where scripts run, e.g. when the file is opened in a browser.
"""

from __future__ import annotations

from collections.abc import Iterator
from html import escape
from importlib import resources

from rover.export.names import xml_text
from rover.export.palette import LEGEND, frame_color, legend_color
from rover.export.stacktable import StackTable
from rover.export.summary import default_title, format_value, summary_items, summary_line
from rover.export.tree import DEFAULT_MIN_FRACTION, FlameNode, build_tree
from rover.export.values import ValueView

WIDTH = 1200
ROW = 16  # pixels per stack level
FONT_SIZE = 12
CHAR_WIDTH = 0.59 * FONT_SIZE  # Verdana's average, as flamegraph.pl assumes
MARGIN = 10
HEADER = 74  # title, summary and legend
FOOTER = 10


def _attr(text: str) -> str:
    return escape(xml_text(text), quote=True)


def _label(name: str, width: float) -> str:
    """As much of ``name`` as fits in ``width`` pixels, ``..`` marking a cut."""
    fits = int((width - 6) / CHAR_WIDTH)
    if fits < 3:
        return ""
    return name if len(name) <= fits else name[: fits - 2] + ".."


def render_svg(
    table: StackTable,
    view: ValueView,
    title: str | None = None,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> str:
    """The SVG document; its size is bounded by the frames drawn (see tree.build_tree)."""
    tree = build_tree(table, view, min_fraction)
    root = tree.root
    scale = (WIDTH - 2 * MARGIN) / root.value if root.value else 0.0
    levels = tree.depth() + 1
    height = HEADER + levels * ROW + FOOTER
    bottom = height - FOOTER  # the root row sits on this line

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="Verdana, DejaVu Sans, sans-serif" '
        f'font-size="{FONT_SIZE}" data-margin="{MARGIN}" data-graph-width="{WIDTH - 2 * MARGIN}" '
        f'data-char-width="{CHAR_WIDTH}">',
        '<defs><linearGradient id="background" x1="0" y1="0" x2="0" y2="1">'
        '<stop stop-color="#f4f4f4" offset="5%"/><stop stop-color="#eeeeb0" offset="95%"/>'
        "</linearGradient></defs>",
        "<style>g.frame { cursor: pointer; } g.frame:hover rect { stroke: #000; }</style>",
        f'<rect width="{WIDTH}" height="{height}" fill="url(#background)"/>',
        f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="17">'
        f"{_attr(title or default_title(table.header))}</text>",
        f'<text x="{MARGIN}" y="46" fill="#444">'
        f"{_attr(summary_line(summary_items(table, view, tree)))}</text>",
    ]
    out.extend(_legend(y=64))
    if root.value:
        out.extend(_frames(root, view, scale, bottom))
    else:
        out.append(
            f'<text x="{WIDTH / 2}" y="{bottom - 4}" text-anchor="middle" fill="#888">'
            "No samples in this profile.</text>"
        )
    # Hidden unless the script runs and can keep its promise.
    out.append(
        f'<text id="hint" x="{WIDTH - MARGIN}" y="24" text-anchor="end" fill="#888" '
        'display="none">click a frame to zoom, Esc to reset</text>'
    )
    out.append(f"<script><![CDATA[\n{_script()}]]></script>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _legend(y: int) -> list[str]:
    out, x = [], MARGIN
    for category, label in LEGEND:
        out.append(
            f'<rect x="{x}" y="{y - 10}" width="12" height="12" rx="2" '
            f'fill="{legend_color(category)}"/>'
        )
        out.append(f'<text x="{x + 16}" y="{y}">{escape(label)}</text>')
        x += 24 + int(len(label) * CHAR_WIDTH)
    return out


def _frames(root: FlameNode, view: ValueView, scale: float, bottom: int) -> Iterator[str]:
    total = root.value
    pending = [(root, 0, 0)]  # node, depth, offset in value units
    while pending:
        node, depth, offset = pending.pop()
        x = MARGIN + offset * scale
        width = node.value * scale
        y = bottom - (depth + 1) * ROW
        name = _attr(node.name)
        tip = f"{node.name} ({format_value(node.value, view)}, {100 * node.value / total:.2f}%)"
        yield (
            f'<g class="frame" data-name="{name}" data-kind="{node.category}" '
            f'data-offset="{offset}" data-value="{node.value}" data-depth="{depth}">'
            f"<title>{_attr(tip)}</title>"
            f'<rect x="{x:.2f}" y="{y}" width="{width:.2f}" height="{ROW - 1}" rx="2" '
            f'fill="{frame_color(node.category, node.name)}"/>'
            f'<text x="{x + 3:.2f}" y="{y + ROW - 4}">{_attr(_label(node.name, width))}</text>'
            "</g>"
        )
        child_offset = offset
        for child in node.sorted_children():
            pending.append((child, depth + 1, child_offset))
            child_offset += child.value


def _script() -> str:
    path = resources.files("rover.export").joinpath("assets", "flamegraph-svg.js")
    text = path.read_text(encoding="utf-8")
    if "]]>" in text:
        raise RuntimeError("flamegraph-svg.js contains ']]>' and would end its CDATA section")
    return text
