"""The merged call tree a flame graph draws: one node per distinct path.

The tree is built from the stacks in sorted order, the way flamegraph.pl's
``flow`` merges sorted folded lines: only the path of the current stack is
open; when the next stack leaves a node, that node's value is final and, if it
is narrower than ``min_fraction`` of the total (flamegraph.pl's ``--minwidth``),
it is dropped there and then. Memory is bounded by the depth and by what is
drawn (at most 1/min_fraction nodes per level), not by the number of stacks;
values stay exact (a dropped node's value still counts in its parents).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from rover.export.names import UNKNOWN
from rover.export.stacktable import StackTable, common_prefix, dense_ranks
from rover.export.values import ValueView
from rover.profile import Frame

# Frames under this share of the total are too narrow to see (~1 px of 1000).
DEFAULT_MIN_FRACTION = 0.001

# Node categories; they decide colours and the legend.
ROOT = "root"
PROCESS = "process"
USER = "user"
KERNEL = "kernel"
UNSYMBOLIZED = "unsymbolized"


def frame_category(frame: Frame) -> str:
    if not frame.symbolized:
        return UNSYMBOLIZED
    return KERNEL if frame.is_kernel else USER


NodeLabel = tuple[str, str, str]  # name, category, module


def node_label(frame: Frame) -> NodeLabel:
    """What a flame graph node shows and is sorted by: name, category, module."""
    return (frame.name or UNKNOWN, frame_category(frame), frame.module)


@dataclass(slots=True)
class FlameNode:
    """A frame in the context of all its callers; ``value`` includes callees."""

    name: str
    category: str
    module: str = ""
    value: int = 0
    children: list[FlameNode] = field(default_factory=list)  # in flamegraph.pl's order

    def sorted_children(self) -> list[FlameNode]:
        """Children in flamegraph.pl's order: alphabetical, so layouts are stable."""
        return self.children


@dataclass(slots=True)
class FlameTree:
    root: FlameNode
    stacks: int  # distinct stacks with a non-zero value
    hidden: int = 0  # frames left out for being narrower than min_fraction
    min_fraction: float = 0.0

    def depth(self) -> int:
        """Levels below the root (0 for a bare root)."""
        deepest, pending = 0, [(self.root, 0)]
        while pending:
            node, depth = pending.pop()
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in node.children)
        return deepest


class PathFolder:
    """Merges stacks given in sorted order into a tree, dropping nodes ``keep`` refuses.

    Each open node has one running value per column (one profile, or two for
    a diff). ``label(source, ids, level)`` names a node when it opens (level 0
    is the process); ``make(label, values, children)`` builds a kept node when
    it closes.
    """

    def __init__(
        self,
        columns: int,
        label: Callable[[object, Sequence[int], int], NodeLabel],
        keep: Callable[[list[int]], bool],
        make: Callable[[NodeLabel, list[int], list], object],
    ) -> None:
        self.label = label
        self.keep = keep
        self.make = make
        self.hidden = 0  # dropped nodes whose parent was kept
        self._key = b""
        # open levels; index 0 is the root, which is always open
        self._values: list[list[int]] = [[0] * columns]
        self._children: list[list] = [[]]
        self._dropped: list[int] = [0]
        self._labels: list[NodeLabel] = [("", "", "")]  # the root's is never used

    def add(self, key: bytes, source: object, ids: Sequence[int], column: int, value: int) -> None:
        """Add ``value`` to ``column`` of stack ``ids`` of ``source``; its sort key is ``key``.

        Stacks must come in key order (see :meth:`StackTable.sorted_keys`).
        """
        depth = len(key) // 4
        shared = common_prefix(self._key, key) if self._key else 0
        self._close_to(shared + 1)
        columns = len(self._values[0])
        for level in range(shared, depth):
            self._values.append([0] * columns)
            self._children.append([])
            self._dropped.append(0)
            self._labels.append(self.label(source, ids, level))
        self._values[-1][column] += value
        self._key = key

    def finish(self) -> tuple[list[int], list, int]:
        """The root's values, its kept children, and how many dropped nodes had kept parents."""
        self._close_to(1)
        self.hidden += self._dropped[0]
        return self._values[0], self._children[0], self.hidden

    def _close_to(self, levels: int) -> None:
        """Close open nodes until ``levels`` remain (the root counts as one)."""
        while len(self._values) > levels:
            values = self._values.pop()
            children = self._children.pop()
            dropped = self._dropped.pop()
            label = self._labels.pop()
            parent = self._values[-1]
            for column, value in enumerate(values):
                parent[column] += value
            if self.keep(values):
                self.hidden += dropped
                self._children[-1].append(self.make(label, values, children))
            else:
                self._dropped[-1] += 1


def flame_ranks(table: StackTable) -> tuple[list[int], list[int]]:
    """Frame and process ranks that order nodes as flamegraph.pl does (by name)."""
    frame_rank = dense_ranks(table.frames, node_label)
    process_rank = dense_ranks([table.process_name(pid) for pid in table.pids], str)
    return frame_rank, process_rank


def build_tree(
    table: StackTable, view: ValueView, min_fraction: float = DEFAULT_MIN_FRACTION
) -> FlameTree:
    """Merge every stack of ``table`` under ``all`` -> process name -> frames.

    Nodes narrower than ``min_fraction`` of the total are dropped as the tree is
    built (see the module docstring); the root keeps the exact total.
    """
    column = table.values[view.index]
    min_value = view.total(column) * min_fraction
    folder = PathFolder(1, table_label, lambda values: values[0] >= min_value, _flame_node)
    stacks = 0
    with collector_paused():
        for index, key in zip(*table.sorted_keys(*flame_ranks(table)), strict=True):
            value = column[index] // view.divisor
            if value > 0:
                stacks += 1
                folder.add(key, table, table.ids(index), 0, value)
        values, children, hidden = folder.finish()
    root = FlameNode("all", ROOT, value=values[0], children=children)
    return FlameTree(root, stacks, hidden, min_fraction)


def table_label(table: object, ids: Sequence[int], level: int) -> NodeLabel:
    """A node's label from a table's stack: the process at level 0, then frames."""
    assert isinstance(table, StackTable)
    if level == 0:
        return (table.process_name(table.pids[ids[0]]), PROCESS, "")
    return node_label(table.frames[ids[level]])


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a big tree is built.

    Trees hold no cycles, but allocating millions of objects triggers
    collections that each walk everything alive: that, not the work, took
    most of the time (3-4x).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _flame_node(label: NodeLabel, values: list[int], children: list) -> FlameNode:
    name, category, module = label
    return FlameNode(name, category, module, values[0], children)
