"""Differential flame graphs: what grew and what shrank between two profiles.

Both profiles are merged into one tree. **Matching**: processes by name, frames
by name and kind (user, kernel, no symbol), as folded stacks write them; the
module is not compared, because folded stacks do not keep it (a profile read
from a ``.folded`` file then compares with the ``.pb.gz`` of the same run),
and a function of the same name under the same callers is the same code.

Values are **normalized by totals**: a frame's "before" and "after" are
compared as shares of their own profile's total, so a 10-second profile
compares with a 60-second one, and the change is in percentage points of the
total (``+12.5 pp``). A frame is as wide as its before share plus its after
share, so frames that vanished or appeared stay visible.

**Colour** (see :data:`SATURATION`): white-ish when the frame's share did not
change, towards red when it grew and blue when it shrank, by how much it
changed relative to itself, ``(after - before) / max(before, after)``: fully
coloured from a doubling or a halving (and for frames that appeared or
vanished), a 7% change only tinted. flamegraph.pl scales by the largest
change in the graph instead, so noise is fully coloured when nothing changed.

The tree is built from both profiles' sorted stacks as one merged stream (see
:mod:`rover.export.tree`), so memory is bounded by what is drawn.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat

from rover.export.flamegraph import render_page
from rover.export.names import UNKNOWN, folded_name
from rover.export.palette import DIFF_COLORS, DIFF_LEGEND, MATCH_COLOR, frame_color, rgb_hex
from rover.export.stacktable import StackTable
from rover.export.summary import (
    SummaryItem,
    default_title,
    format_count,
    format_duration_ns,
    format_value,
)
from rover.export.tree import (
    DEFAULT_MIN_FRACTION,
    ROOT,
    NodeLabel,
    PathFolder,
    collector_paused,
    frame_category,
    table_label,
)
from rover.export.values import ValueView
from rover.profile import Frame

# The relative change of a frame, (after - before) / max(before, after), at
# which its colour is full: a doubling (+50%) or a halving (-50%).
SATURATION = 0.5


@dataclass(slots=True)
class DiffNode:
    """A frame in the context of its callers, with its value in both profiles."""

    name: str
    category: str
    module: str = ""
    before: int = 0
    after: int = 0
    children: list[DiffNode] = field(default_factory=list)  # sorted by name

    def sorted_children(self) -> list[DiffNode]:
        return self.children


@dataclass(slots=True)
class DiffTree:
    root: DiffNode
    before_total: int = 0
    after_total: int = 0
    hidden: int = 0

    def share(self, node: DiffNode) -> tuple[float, float]:
        """The node's share of the before and of the after total."""
        before = node.before / self.before_total if self.before_total else 0.0
        after = node.after / self.after_total if self.after_total else 0.0
        return before, after

    def weight(self, node: DiffNode) -> float:
        """How wide the node is drawn: both shares together."""
        before, after = self.share(node)
        return before + after

    def change(self, node: DiffNode) -> float:
        """The change of the node's share, in fractions of the total (-0.5: -50 pp)."""
        before, after = self.share(node)
        return after - before

    def relative_change(self, node: DiffNode) -> float:
        """The change relative to the node's larger share: -1 (vanished) to +1 (new)."""
        before, after = self.share(node)
        larger = max(before, after)
        return (after - before) / larger if larger else 0.0


def match_key(frame: Frame) -> tuple[str, str]:
    """What makes frames of the two profiles the same node: the folded name and the kind."""
    return (folded_name(frame.name or UNKNOWN), frame_category(frame))


def _shared_ranks(
    before: StackTable, after: StackTable
) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    """(frame ranks, process ranks) of each table in one shared order of match keys."""
    frame_keys = [list(map(match_key, t.frames)) for t in (before, after)]
    process_keys = [[folded_name(t.process_name(pid)) for pid in t.pids] for t in (before, after)]
    frame_rank = {key: i for i, key in enumerate(sorted({*frame_keys[0], *frame_keys[1]}))}
    process_rank = {key: i for i, key in enumerate(sorted({*process_keys[0], *process_keys[1]}))}
    return tuple(  # type: ignore[return-value]
        ([frame_rank[k] for k in frames], [process_rank[k] for k in processes])
        for frames, processes in zip(frame_keys, process_keys, strict=True)
    )


def diff_tree(
    before: StackTable,
    after: StackTable,
    before_view: ValueView,
    after_view: ValueView,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> DiffTree:
    """Both profiles in one tree; frames narrower than ``min_fraction`` of it are left out.

    A frame too narrow in one profile may be wide in the other: a node is
    judged on both of its shares together, once both profiles' stacks under
    it have been merged.
    """
    views = (before_view, after_view)
    tables = (before, after)
    columns = [t.values[v.index] for t, v in zip(tables, views, strict=True)]
    totals = [v.total(c) for v, c in zip(views, columns, strict=True)]
    tree = DiffTree(DiffNode("all", ROOT), totals[0], totals[1])
    limit = (bool(totals[0]) + bool(totals[1])) * min_fraction

    def keep(values: list[int]) -> bool:
        return sum(v / t for v, t in zip(values, totals, strict=True) if t) >= limit

    folder = PathFolder(2, table_label, keep, _diff_node)
    streams = []
    for side, (table, ranks) in enumerate(zip(tables, _shared_ranks(before, after), strict=True)):
        order, keys = table.sorted_keys(*ranks)
        streams.append(zip(keys, repeat(side), order, strict=False))
    with collector_paused():
        for key, side, index in heapq.merge(*streams):
            value = columns[side][index] // views[side].divisor
            if value > 0:
                folder.add(key, tables[side], tables[side].ids(index), side, value)
        values, children, tree.hidden = folder.finish()
    tree.root.before, tree.root.after = values
    tree.root.children = children
    return tree


def _diff_node(label: NodeLabel, values: list[int], children: list) -> DiffNode:
    name, category, module = label
    return DiffNode(name, category, module, values[0], values[1], children)


def diff_data(tree: DiffTree, view: ValueView) -> dict:
    """The page script's data (see assets/flamegraph.js), with the ``diff`` part."""
    frames: list[list[str]] = []
    frame_index: dict[tuple[str, str, str], int] = {}
    nodes: list[int | float] = []
    before: list[int] = []
    after: list[int] = []
    pending: list[tuple[DiffNode, int]] = [(tree.root, 0)]
    while pending:
        node, depth = pending.pop()
        key = (node.name or UNKNOWN, node.category, node.module)
        index = frame_index.get(key)
        if index is None:
            index = frame_index[key] = len(frames)
            frames.append([*key, frame_color(node.category, node.name)])
        nodes += (index, round(tree.weight(node), 9), depth)
        before.append(node.before)
        after.append(node.after)
        pending.extend((child, depth + 1) for child in reversed(node.children))
    return {
        "frames": frames,
        "nodes": nodes,
        "unit": view.unit,
        "nsPerUnit": view.ns_per_unit,
        "matchColor": MATCH_COLOR,
        "diff": {
            "before": before,
            "after": after,
            "beforeTotal": tree.before_total,
            "afterTotal": tree.after_total,
            "saturation": SATURATION,
            "colors": {name: list(rgb) for name, rgb in DIFF_COLORS.items()},
        },
    }


def diff_summary(
    tree: DiffTree,
    view: ValueView,
    names: tuple[str, str],
    durations: Sequence[int],
) -> list[SummaryItem]:
    items = []
    for label, name, total, duration in zip(
        ("Before", "After"), names, (tree.before_total, tree.after_total), durations, strict=True
    ):
        text = f"{name}: " if name else ""
        text += format_value(total, view)
        if duration:
            text += f" in {format_duration_ns(duration)}"
        items.append(SummaryItem(label, text))
    items.append(SummaryItem("Compared", "as shares of each profile's total; frames by name"))
    items.append(SummaryItem("Colour", f"full at a ±{SATURATION:.0%} change of a frame's share"))
    if tree.hidden:
        items.append(SummaryItem("Hidden", f"{format_count(tree.hidden)} narrow frames"))
    return items


def render_diff_html(
    before: StackTable,
    after: StackTable,
    view: ValueView,
    *,
    after_view: ValueView | None = None,
    names: tuple[str, str] = ("", ""),
    title: str | None = None,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> str:
    """A differential flame graph of ``after`` against ``before`` (same value in both)."""
    tree = diff_tree(before, after, view, after_view or view, min_fraction)
    legend = [(kind, label, rgb_hex(DIFF_COLORS[kind])) for kind, label in DIFF_LEGEND]
    durations = (before.header.duration_ns, after.header.duration_ns)
    return render_page(
        title or f"Differential {default_title(after.header)}",
        diff_summary(tree, view, names, durations),
        legend,
        diff_data(tree, view),
    )
