"""A self-contained HTML flame graph: one file, inline CSS/JS, no network.

The merged call tree is embedded as compact JSON and laid out by the script in
``assets/flamegraph.js``. Frames narrower than ``min_fraction`` of the total
are left out while the tree is built (see :mod:`rover.export.tree`), so the
file size and the memory used depend on the shape of the profile, not on the
number of stacks.

Hooks that tests and people can rely on: ``#title``, ``#summary``, ``#legend``,
``#reset-zoom``, ``#invert`` (flame/icicle toggle, ``aria-pressed``), ``#search``,
``#search-result``, ``#details`` (hover text), ``#flamegraph`` (``data-rendered``:
frames drawn, ``data-zoomed``: name of the zoomed frame, ``data-layout``:
``flame`` or ``icicle``) holding one ``div.frame`` per drawn frame with
``data-name``, ``data-kind``, ``data-value`` and ``data-depth`` (plus
``data-before`` and ``data-after`` in a differential graph, see
:mod:`rover.export.diff`); the data is in ``script#profile-data``.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources

from rover.export.palette import LEGEND, MATCH_COLOR, frame_color, legend_color
from rover.export.stacktable import StackTable
from rover.export.summary import SummaryItem, default_title, summary_items
from rover.export.tree import DEFAULT_MIN_FRACTION, FlameNode, FlameTree, build_tree
from rover.export.values import ValueView

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def flamegraph_data(tree: FlameTree, view: ValueView) -> dict:
    """The JSON document the page script reads (see assets/flamegraph.js).

    ``nodes`` is the tree in pre-order (children alphabetical) as a flat list of
    ``frame index, value, depth`` triples: compact, and nothing on either side
    recurses, however deep the stacks. ``frames`` holds each distinct
    ``[name, category, module, colour]`` once.
    """
    frames: list[list[str]] = []
    frame_index: dict[tuple[str, str, str], int] = {}
    nodes: list[int] = []
    pending: list[tuple[FlameNode, int]] = [(tree.root, 0)]
    while pending:
        node, depth = pending.pop()
        key = (node.name, node.category, node.module)
        index = frame_index.get(key)
        if index is None:
            index = frame_index[key] = len(frames)
            frames.append([*key, frame_color(node.category, node.name)])
        nodes += (index, node.value, depth)
        pending.extend((child, depth + 1) for child in reversed(node.sorted_children()))
    return {
        "frames": frames,
        "nodes": nodes,
        "unit": view.unit,
        "nsPerUnit": view.ns_per_unit,
        "matchColor": MATCH_COLOR,
    }


def script_json(document: object) -> str:
    """JSON safe inside ``<script>``: no ``</script>`` or ``<!--`` can appear."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(
    table: StackTable,
    view: ValueView,
    title: str | None = None,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> str:
    tree = build_tree(table, view, min_fraction)
    legend = [(category, label, legend_color(category)) for category, label in LEGEND]
    return render_page(
        title or default_title(table.header),
        summary_items(table, view, tree),
        legend,
        flamegraph_data(tree, view),
    )


def render_page(
    title: str, summary: list[SummaryItem], legend: list[tuple[str, str, str]], data: dict
) -> str:
    """The page around a flame graph's data; ``legend`` is (kind, label, colour) keys."""
    fields = {
        "title": html.escape(title),
        "summary": _summary_html(summary),
        "legend": _legend_html(legend),
        "css": _asset("flamegraph.css", forbidden="</style"),
        "js": _asset("flamegraph.js", forbidden="</script"),
        "data": script_json(data),
    }
    # One pass, so text substituted in is never scanned for placeholders again.
    return _PLACEHOLDER.sub(lambda m: fields[m.group(1)], _asset("flamegraph.html"))


def _summary_html(items: list[SummaryItem]) -> str:
    return "".join(
        f'<span class="item"><span class="label">{html.escape(item.label)}</span> '
        f"{html.escape(item.text)}</span>"
        for item in items
    )


def _legend_html(legend: list[tuple[str, str, str]]) -> str:
    return "".join(
        f'<span class="key" data-kind="{kind}">'
        f'<span class="swatch" style="background:{color}"></span>'
        f"{html.escape(label)}</span>"
        for kind, label, color in legend
    )


def _asset(name: str, forbidden: str | None = None) -> str:
    text = resources.files("rover.export").joinpath("assets", name).read_text(encoding="utf-8")
    if forbidden and forbidden in text.lower():
        raise RuntimeError(f"asset {name} contains {forbidden!r} and would end its element early")
    return text
