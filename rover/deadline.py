"""One deadline shared by the steps of a bounded operation (the agent's shutdown).

Each step is given what is left of the whole instead of a timeout of its own, so
the steps together can never take longer than the budget, however they divide it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Deadline:
    """``seconds`` from now on ``clock``."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self.end = self.started + seconds

    def remaining(self, keep: float = 0.0) -> float:
        """Seconds left, less ``keep`` held back for the steps after this one (never < 0)."""
        return max(0.0, self.end - keep - self._clock())

    @property
    def expired(self) -> bool:
        return self.remaining() == 0.0

    def elapsed(self) -> float:
        return self._clock() - self.started
