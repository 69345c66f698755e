"""Who may trigger again: execute and silence durations per dimension (spec 4.7.6)."""

from __future__ import annotations

from collections.abc import Hashable


class TriggerHistory:
    """When each dimension last started a task.

    A dimension may not trigger while its task runs (``execute_s`` after the
    start) nor until MORE than ``silence_s`` has passed since that start. A
    task whose local start failed still counts as started at the attempt:
    the backend already holds that task, and retrying every check round would
    fill it with orphan tasks (Rover instead never retries until restart).
    """

    def __init__(self, execute_s: float, silence_s: float) -> None:
        self.execute_s = execute_s
        self.silence_s = silence_s
        self._started: dict[Hashable, float] = {}

    def may_trigger(self, dimension: Hashable, now: float) -> bool:
        started = self._started.get(dimension)
        if started is None:
            return True
        elapsed = now - started
        return elapsed >= self.execute_s and elapsed > self.silence_s

    def record(self, dimension: Hashable, started_at: float) -> None:
        self._started[dimension] = started_at

    def forget_expired(self, now: float) -> None:
        """Drop dimensions that may trigger again anyway (keeps the map bounded)."""
        for dimension in [d for d in self._started if self.may_trigger(d, now)]:
            del self._started[dimension]

    def __len__(self) -> int:
        return len(self._started)
