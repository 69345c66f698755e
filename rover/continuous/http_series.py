"""HTTP monitors' series: which requests a check item counts, and per-second values
(spec 4.7.2-4.7.3, 8.13 rules 7-10).

An HTTP check item watches one series per listed path (``URIList``), else one
series of the requests its ``URIRegex`` finds (unanchored), else one series of
every request. A served request becomes an :class:`HttpEvent`; the events of
one second in one series make that slot's value: the error rate
``errors / events * 100`` or the mean response time ``sum ms / events``. A
second without events has no value (no slot), so it never reaches a threshold
and is never sent as a meter (windows.py: a gap is "no data").
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from rover.continuous.policy import CheckItem, MonitorType

PATH = "path"
REGEX = "regex"
GLOBAL = "global"


@dataclass(frozen=True, slots=True)
class Uri:
    """The request filter of one HTTP series: a listed path, a regex, or every request."""

    kind: str  # PATH, REGEX or GLOBAL
    value: str = ""

    @property
    def label(self) -> str:
        """The meter's ``uri`` label (spec 4.7.7): the path, the regex, or "global"."""
        return GLOBAL if self.kind == GLOBAL else self.value

    @property
    def sampling_regex(self) -> str:
        """What a triggered NETWORK task samples (spec 8.13 rule 10): the path or regex
        used as a regex; "" (every request) for the global series."""
        return "" if self.kind == GLOBAL else self.value

    def matches(self, path: str) -> bool:
        if self.kind == PATH:
            return path == self.value
        if self.kind == REGEX:
            try:
                return compiled(self.value).search(path) is not None
            except re.error:  # policies drop such items; only hand-made items get here
                return False
        return True


@functools.lru_cache(maxsize=256)
def compiled(regex: str) -> re.Pattern[str]:
    return re.compile(regex)


def item_uris(item: CheckItem) -> tuple[Uri, ...]:
    """The series of an HTTP item, one per distinct listed path, else one."""
    if item.uri_list:
        return tuple(Uri(PATH, path) for path in dict.fromkeys(item.uri_list))
    if item.uri_regex:
        return (Uri(REGEX, item.uri_regex),)
    return (Uri(GLOBAL),)


@dataclass(frozen=True, slots=True)
class HttpEvent:
    """One served request and its response (spec 8.13 rules 4-6)."""

    pid: int
    path: str  # the request target up to the first "?"
    time_s: float  # when the request was read, on the profiler's clock
    duration_ms: int  # from the request read to the response's first send
    error: bool  # status >= 500


class SlotTotals:
    """One series' events in one second."""

    __slots__ = ("events", "errors", "total_ms")

    def __init__(self) -> None:
        self.events = 0
        self.errors = 0
        self.total_ms = 0

    def add(self, event: HttpEvent) -> None:
        self.events += 1
        self.errors += event.error
        self.total_ms += event.duration_ms

    def value(self, monitor: MonitorType) -> float | None:
        """The slot's value for this monitor; None without events."""
        if self.events == 0:
            return None
        if monitor is MonitorType.HTTP_ERROR_RATE:
            return self.errors / self.events * 100.0
        return self.total_ms / self.events
