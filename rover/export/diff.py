"""Differential flame graphs: what grew and what shrank between two profiles.

Both profiles are merged into one tree (processes matched by name, frames by
name and module, as in one flame graph). Values are **normalized by totals**:
a frame's "before" and "after" are compared as shares of their own profile's
total, so a 10-second profile compares with a 60-second one, and the change is
in percentage points of the total (``+12.5 pp``). A frame is as wide as its
before share plus its after share, so frames that vanished or appeared stay
visible; its colour goes from neutral to red (grew) or blue (shrank) in
proportion to its change, the largest change being fully saturated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rover.export.flamegraph import render_page
from rover.export.names import UNKNOWN, process_name
from rover.export.palette import DIFF_COLORS, DIFF_LEGEND, MATCH_COLOR, frame_color, rgb_hex
from rover.export.summary import (
    SummaryItem,
    default_title,
    format_count,
    format_duration_ns,
    format_value,
)
from rover.export.tree import (
    DEFAULT_MIN_FRACTION,
    PROCESS,
    ROOT,
    collector_paused,
    frame_category,
    frame_key,
)
from rover.export.values import ValueView
from rover.profile import Frame, Profile


@dataclass(slots=True)
class DiffNode:
    """A frame in the context of its callers, with its value in both profiles."""

    name: str
    category: str
    module: str = ""
    before: int = 0
    after: int = 0
    # keyed as FlameNode's children: frame_key(frame), or the name for processes
    children: dict[tuple[str, str, bool, bool] | str, DiffNode] = field(default_factory=dict)

    def process_child(self, name: str) -> DiffNode:
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = DiffNode(name, PROCESS)
        return node

    def frame_child(self, frame: Frame) -> DiffNode:
        key = frame_key(frame)
        node = self.children.get(key)
        if node is None:
            node = self.children[key] = DiffNode(
                frame.name or UNKNOWN, frame_category(frame), frame.module
            )
        return node

    def sorted_children(self) -> list[DiffNode]:
        return sorted(self.children.values(), key=lambda n: (n.name, n.category, n.module))


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
        before, after = self.share(node)
        return after - before


def _add(root: DiffNode, profile: Profile, view: ValueView, after: bool) -> None:
    """Add every stack of ``profile`` to one side of the tree, as build_tree does."""
    for key, values in profile:
        value = view.of(values)
        if value <= 0:
            continue
        node = root.process_child(process_name(profile, key.pid))
        path = [root, node]
        for frame in key.frames:
            node = node.frame_child(frame)
            path.append(node)
        if after:
            for node in path:
                node.after += value
        else:
            for node in path:
                node.before += value


def diff_tree(
    before: Profile,
    after: Profile,
    before_view: ValueView,
    after_view: ValueView,
    min_fraction: float = DEFAULT_MIN_FRACTION,
) -> DiffTree:
    """Both profiles in one tree; frames narrower than ``min_fraction`` of it are left out.

    Pruning waits until both are in: a frame too narrow in one profile may be
    wide in the other, and its small side still counts.
    """
    tree = DiffTree(DiffNode("all", ROOT))
    with collector_paused():
        _add(tree.root, before, before_view, after=False)
        _add(tree.root, after, after_view, after=True)
        tree.before_total, tree.after_total = tree.root.before, tree.root.after
        limit = tree.weight(tree.root) * min_fraction
        pending = [tree.root]
        while pending:
            node = pending.pop()
            narrow = [key for key, child in node.children.items() if tree.weight(child) < limit]
            for key in narrow:
                del node.children[key]
            tree.hidden += len(narrow)
            pending.extend(node.children.values())
    return tree


def diff_data(tree: DiffTree, view: ValueView) -> dict:
    """The page script's data (see assets/flamegraph.js), with the ``diff`` part."""
    frames: list[list[str]] = []
    frame_index: dict[tuple[str, str, str], int] = {}
    nodes: list[int | float] = []
    before: list[int] = []
    after: list[int] = []
    max_change = 0.0
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
        if node.category != ROOT:
            max_change = max(max_change, abs(tree.change(node)))
        pending.extend((child, depth + 1) for child in reversed(node.sorted_children()))
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
            "maxChange": max_change,
            "colors": {name: list(rgb) for name, rgb in DIFF_COLORS.items()},
        },
    }


def diff_summary(
    tree: DiffTree,
    view: ValueView,
    names: tuple[str, str],
    durations: tuple[int, int],
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
    items.append(SummaryItem("Compared", "as shares of each profile's total"))
    if tree.hidden:
        items.append(SummaryItem("Hidden", f"{format_count(tree.hidden)} narrow frames"))
    return items


def render_diff_html(
    before: Profile,
    after: Profile,
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
    return render_page(
        title or f"Differential {default_title(after)}",
        diff_summary(tree, view, names, (before.duration_ns, after.duration_ns)),
        legend,
        diff_data(tree, view),
    )
