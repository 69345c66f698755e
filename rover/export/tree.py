"""The merged call tree a flame graph draws: one node per distinct path."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass, field

from rover.export.names import UNKNOWN, process_name
from rover.export.values import ValueView
from rover.profile import Frame, FrameKind, Profile

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


def frame_key(frame: Frame) -> tuple[str, str, bool, bool]:
    """What makes two frames one node: name, module, kernel or not, symbolized or not."""
    # Not the Frame itself: its generated __hash__ (and the enum's) run in
    # Python and dominate the cost of big profiles.
    return (frame.name, frame.module, frame.kind is FrameKind.KERNEL, frame.symbolized)


@dataclass(slots=True)
class FlameNode:
    """A frame in the context of all its callers; ``value`` includes callees."""

    name: str
    category: str
    module: str = ""
    value: int = 0
    # keyed by (name, module, is kernel, symbolized), or by the name for processes
    children: dict[tuple[str, str, bool, bool] | str, FlameNode] = field(default_factory=dict)

    def process_child(self, name: str) -> FlameNode:
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = FlameNode(name, PROCESS)
        return node

    def frame_child(self, frame: Frame) -> FlameNode:
        key = frame_key(frame)
        node = self.children.get(key)
        if node is None:
            name = frame.name or UNKNOWN
            node = self.children[key] = FlameNode(name, frame_category(frame), frame.module)
        return node

    def sorted_children(self) -> list[FlameNode]:
        """Children in flamegraph.pl's order: alphabetical, so layouts are stable."""
        return sorted(self.children.values(), key=lambda n: (n.name, n.category, n.module))


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
            pending.extend((child, depth + 1) for child in node.children.values())
        return deepest


def build_tree(
    profile: Profile, view: ValueView, min_fraction: float = DEFAULT_MIN_FRACTION
) -> FlameTree:
    """Merge every stack of ``profile`` under ``all`` -> process name -> frames.

    Frames that differ only in ``symbolized`` stay apart, like any distinct frames.
    Subtrees worth less than ``min_fraction`` of the total are then dropped
    (see :func:`prune`).
    """
    root = FlameNode("all", ROOT)
    stacks = 0
    with collector_paused():
        for key, values in profile:
            value = view.of(values)
            if value <= 0:
                continue
            stacks += 1
            root.value += value
            node = root.process_child(process_name(profile, key.pid))
            node.value += value
            for frame in key.frames:
                node = node.frame_child(frame)
                node.value += value
        hidden = prune(root, root.value * min_fraction)
    return FlameTree(root, stacks, hidden, min_fraction)


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a big tree is built.

    Trees hold no cycles, but allocating a million nodes triggers collections
    that each walk the whole growing tree: that, not building it, took most
    of the time (3-4x).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def prune(root: FlameNode, min_value: float) -> int:
    """Drop subtrees worth less than ``min_value``; return how many nodes went.

    Parents keep their values, so what was dropped shows as a gap, the way
    flamegraph.pl elides frames too narrow to see. This bounds the output by
    the profile's shape (at most 1/min_fraction nodes per level), not its size.
    """
    if min_value <= 0:
        return 0
    hidden, pending = 0, [root]
    while pending:
        node = pending.pop()
        narrow = [key for key, child in node.children.items() if child.value < min_value]
        for key in narrow:
            del node.children[key]
        hidden += len(narrow)
        pending.extend(node.children.values())
    return hidden
