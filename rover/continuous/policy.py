"""Continuous-profiling policies as plain values, and the local validation of a check item.

A service's policy says, per target type (which profiling task to start), which
monitors to watch and when they count as "over the line" (spec 3.4, 4.7.1).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass


class TargetType(enum.StrEnum):
    """The profiling task a policy starts when one of its items fires."""

    ON_CPU = "ON_CPU"
    OFF_CPU = "OFF_CPU"
    NETWORK = "NETWORK"


class MonitorType(enum.StrEnum):
    """What a check item watches (spec 3.6); the order matches the wire enum 0-4."""

    PROCESS_CPU = "PROCESS_CPU"
    PROCESS_THREAD_COUNT = "PROCESS_THREAD_COUNT"
    SYSTEM_LOAD = "SYSTEM_LOAD"
    HTTP_ERROR_RATE = "HTTP_ERROR_RATE"
    HTTP_AVG_RESPONSE_TIME = "HTTP_AVG_RESPONSE_TIME"


# Monitors fed by served HTTP requests (rover.continuous.http_monitor), not by psutil.
HTTP_MONITORS = frozenset({MonitorType.HTTP_ERROR_RATE, MonitorType.HTTP_AVG_RESPONSE_TIME})
# Monitors this agent can measure: all of them (HTTP ones need the HTTP event source).
MEASURED_MONITORS = frozenset(MonitorType)
# Targets this agent can start a task for.
TRIGGERABLE_TARGETS = frozenset(TargetType)


class InvalidCheckItem(ValueError):
    """A check item that fails local validation; the message says why."""


@dataclass(frozen=True, slots=True)
class CheckItem:
    """One monitor of one target type: fires when ``count`` of the last ``period``
    one-second slots are >= ``threshold``."""

    target: TargetType
    monitor: MonitorType
    threshold: float
    period: int  # seconds
    count: int
    uri_list: tuple[str, ...] = ()
    uri_regex: str = ""

    @property
    def measured(self) -> bool:
        return self.monitor in MEASURED_MONITORS

    @property
    def http(self) -> bool:
        return self.monitor in HTTP_MONITORS


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """A service's policy version ``uuid`` and its valid items.

    ``uuid == ""`` means the backend removed the service's policy.
    """

    service: str
    uuid: str
    items: tuple[CheckItem, ...] = ()

    @property
    def removed(self) -> bool:
        return self.uuid == ""


def build_check_item(
    target: str,
    monitor: str,
    threshold: str,
    period: int,
    count: int,
    uri_list: Sequence[str] = (),
    uri_regex: str = "",
) -> CheckItem:
    """A validated check item (spec 4.7.1 step 4), or :class:`InvalidCheckItem`.

    Thresholds are parsed as floats for every monitor type (Rover insists on
    integers for CPU and threads; the OAP only stores integers anyway).
    """
    try:
        target_type = TargetType(target)
    except ValueError:
        raise InvalidCheckItem(f"unknown target type {target!r}") from None
    try:
        monitor_type = MonitorType(monitor)
    except ValueError:
        raise InvalidCheckItem(f"unknown monitor type {monitor!r}") from None
    text = threshold.strip()
    if not text:
        raise InvalidCheckItem("empty threshold")
    try:
        value = float(text)
    except ValueError:
        raise InvalidCheckItem(f"threshold {threshold!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidCheckItem(f"threshold {threshold!r} must be a finite number >= 0")
    if period <= 0:
        raise InvalidCheckItem(f"period {period} must be > 0")
    if count <= 0:
        raise InvalidCheckItem(f"count {count} must be > 0")
    if count > period:
        raise InvalidCheckItem(f"count {count} is larger than period {period}")
    if monitor_type in HTTP_MONITORS and not uri_list and uri_regex:
        try:
            re.compile(uri_regex)  # Python's syntax, not RE2's: close for URI patterns
        except re.error as exc:
            raise InvalidCheckItem(f"URIRegex {uri_regex!r} is invalid: {exc}") from None
    return CheckItem(
        target=target_type,
        monitor=monitor_type,
        threshold=value,
        period=period,
        count=count,
        uri_list=tuple(uri_list),
        uri_regex=uri_regex,
    )
