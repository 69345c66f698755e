"""Per-series windows of one-second slots, and their evaluation against a check item.

Semantics (spec 4.7.2, the documented intent rather than Rover's quirk):

* A slot is a whole second number; the caller maps clock time to slots. A
  later sample in the same slot replaces the earlier one ("last wins").
* An item is evaluated over ITS OWN last ``period`` slots ending at an
  ``anchor`` slot: ``anchor - period < slot <= anchor``. Rover counts over the
  whole ring, whose length is the largest period of all items sharing the
  series; we do not, so an item's window never depends on another item.
* Empty slots (no sample: not yet fetched, a gap, a failed read) never count,
  whatever the threshold: a gap is "no data", not zero.
* The item fires when at least ``count`` slots hold a value >= threshold.
  Its "current" value is the MOST RECENT matching slot's value (Rover happens
  to report the oldest one); the most recent is what a person looking at the
  cause wants to see.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)


class SlotWindow:
    """The recent ``(slot, value)`` samples of one series, oldest first."""

    __slots__ = ("capacity", "_samples")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)  # seconds of history to keep
        self._samples: deque[tuple[int, float]] = deque()

    def add(self, slot: int, value: float) -> None:
        samples = self._samples
        if samples:
            newest = samples[-1][0]
            if slot < newest:
                return  # older than what we hold: a late sample, ignore it
            if slot == newest:
                samples[-1] = (slot, value)
                return
        samples.append((slot, value))
        oldest_kept = slot - self.capacity + 1
        while samples[0][0] < oldest_kept:
            samples.popleft()

    def put(self, slot: int, value: float) -> None:
        """Set a slot's value even when newer slots exist (HTTP slots are totals that
        late requests still change); slots older than the window are ignored."""
        samples = self._samples
        if not samples or slot >= samples[-1][0]:
            self.add(slot, value)
            return
        if slot <= samples[-1][0] - self.capacity:
            return
        index = len(samples) - 1
        while index >= 0 and samples[index][0] > slot:
            index -= 1
        if index >= 0 and samples[index][0] == slot:
            samples[index] = (slot, value)
        else:
            samples.insert(index + 1, (slot, value))

    def between(self, after: int, through: int) -> list[tuple[int, float]]:
        """The ``(slot, value)`` samples with ``after < slot <= through``, oldest first."""
        return [(slot, value) for slot, value in self._samples if after < slot <= through]

    def latest(self) -> tuple[int, float] | None:
        """The newest ``(slot, value)``, or None when empty."""
        return self._samples[-1] if self._samples else None

    def match(self, threshold: float, period: int, count: int, anchor: int) -> float | None:
        """The most recent matching value if ``count`` slots of the ``period``
        ending at ``anchor`` are >= ``threshold``; else None."""
        first = anchor - period + 1
        matched = 0
        current: float | None = None
        for slot, value in reversed(self._samples):
            if slot > anchor:
                continue
            if slot < first:
                break
            if value >= threshold:
                matched += 1
                if current is None:
                    current = value
        return current if matched >= count else None

    def __len__(self) -> int:
        return len(self._samples)


class WindowStore(Generic[Key]):
    """Windows keyed by series; only series declared by :meth:`retain` accept samples."""

    def __init__(self) -> None:
        self._windows: dict[Key, SlotWindow] = {}

    def retain(self, capacities: dict[Key, int]) -> None:
        """Keep (or create) exactly these series, each with its history length."""
        for key in [k for k in self._windows if k not in capacities]:
            del self._windows[key]
        for key, capacity in capacities.items():
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = SlotWindow(capacity)
            else:
                window.capacity = max(1, capacity)

    def add(self, key: Key, slot: int, value: float) -> None:
        window = self._windows.get(key)
        if window is not None:
            window.add(slot, value)

    def put(self, key: Key, slot: int, value: float) -> None:
        window = self._windows.get(key)
        if window is not None:
            window.put(slot, value)

    def get(self, key: Key) -> SlotWindow | None:
        return self._windows.get(key)

    def discard(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self._windows.pop(key, None)

    def clear(self) -> None:
        self._windows.clear()

    def __len__(self) -> int:
        return len(self._windows)
