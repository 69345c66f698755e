"""The title and one-line summary shown above a flame graph."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rover.export.names import process_label
from rover.export.values import ValueView
from rover.profile import Profile, ProfileType

if TYPE_CHECKING:
    from rover.export.stacktable import StackTable
    from rover.export.tree import FlameTree

_TYPE_LABEL = {ProfileType.ON_CPU: "On-CPU", ProfileType.OFF_CPU: "Off-CPU"}
_MAX_PROCESSES = 8  # beyond this the summary says "and N more"


def format_count(n: int) -> str:
    return f"{n:,}"


def format_duration_ns(ns: int) -> str:
    """A duration for people: 850 ns, 12.3 µs, 4.56 ms, 10 s, 150 s."""
    for unit, size in (("s", 1_000_000_000), ("ms", 1_000_000), ("µs", 1_000)):
        if ns >= size:
            return f"{ns / size:.3g} {unit}" if ns < 100 * size else f"{ns / size:.0f} {unit}"
    return f"{ns} ns"


def format_value(value: int, view: ValueView) -> str:
    """``1,234 samples`` or, for durations, ``1,234 µs (1.23 ms)``."""
    text = f"{format_count(value)} {view.unit}"
    if view.ns_per_unit and value >= 1000:  # small numbers need no translation
        text += f" ({format_duration_ns(value * view.ns_per_unit)})"
    return text


# What a time value measures, said after it ("1,234 µs (1.23 ms) off-CPU").
_VALUE_LABEL = {"off_cpu": "off-CPU", "cpu": "on CPU"}


def format_total(value: int, view: ValueView) -> str:
    """A total for a one-line summary: ``1,234 samples``, ``747 switches``,
    ``12,345 µs (12.3 ms) off-CPU``."""
    label = _VALUE_LABEL.get(view.name)
    return f"{format_value(value, view)} {label}" if label else format_value(value, view)


def default_title(profile: Profile) -> str:
    return f"{_TYPE_LABEL[profile.type]} flame graph"


@dataclass(frozen=True, slots=True)
class SummaryItem:
    label: str
    text: str


def summary_items(table: StackTable, view: ValueView, tree: FlameTree) -> list[SummaryItem]:
    """What a reader checks first: what was measured, how much, how long, of whom."""
    profile = table.header
    items = [
        SummaryItem("Type", _TYPE_LABEL[profile.type]),
        SummaryItem("Total", format_value(tree.root.value, view)),
    ]
    if profile.duration_ns:
        items.append(SummaryItem("Duration", format_duration_ns(profile.duration_ns)))
    if profile.period_ns:
        items.append(SummaryItem("Frequency", f"{1e9 / profile.period_ns:.4g} Hz"))
    items.append(SummaryItem("Stacks", format_count(tree.stacks)))
    items.append(SummaryItem("Processes", _processes_text(table)))
    if tree.hidden:
        items.append(
            SummaryItem("Hidden", f"{tree.hidden:,} frames under {tree.min_fraction:.1%} of total")
        )
    if profile.counters:
        counters = ", ".join(f"{k}={format_count(v)}" for k, v in sorted(profile.counters.items()))
        items.append(SummaryItem("Counters", counters))
    return items


def summary_line(items: list[SummaryItem]) -> str:
    return " · ".join(f"{item.label}: {item.text}" for item in items)


def _processes_text(table: StackTable) -> str:
    pids = sorted(table.pids)
    if not pids:
        return "none"
    shown = [process_label(table.header, pid) for pid in pids[:_MAX_PROCESSES]]
    if len(pids) > _MAX_PROCESSES:
        shown.append(f"and {len(pids) - _MAX_PROCESSES} more")
    return ", ".join(shown)
