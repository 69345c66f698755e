"""Counters of what symbolization skipped or used, and warnings logged once per subject.

Bad input is never raised to callers: it is counted here and logged the first
time it is seen, so a corrupt library mapped by a hundred processes (or a perf
map with garbage lines read every flush) makes one log line, not a hundred.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable

log = logging.getLogger("rover.symbols")

_MAX_SUBJECTS = 1 << 14  # forget old subjects beyond this (a long-running agent)


class Reporter:
    """Named counters plus a log-once memory of the subjects already warned about."""

    def __init__(self, names: Iterable[str]) -> None:
        self.counters: dict[str, int] = dict.fromkeys(names, 0)
        self._warned: set[Hashable] = set()

    def count(self, counter: str, n: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + n

    def problem(
        self, subject: Hashable, counters: tuple[str, ...], message: str, *args: object
    ) -> bool:
        """Count and log a problem with ``subject`` the first time it is seen.

        Returns False (and does nothing) for a subject already reported.
        """
        if subject in self._warned:
            return False
        if len(self._warned) >= _MAX_SUBJECTS:
            self._warned.clear()
        self._warned.add(subject)
        for counter in counters:
            self.count(counter)
        log.warning(message, *args)
        return True
