"""Evaluating every watch against its window (spec 4.7.2-4.7.4)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

from rover.continuous.plan import SeriesKey, series_key
from rover.continuous.policy import TRIGGERABLE_TARGETS
from rover.continuous.policy_cache import Watch
from rover.continuous.trigger import Finding, dimension_of
from rover.continuous.windows import WindowStore

log = logging.getLogger(__name__)


class Checker:
    """Finds the watches whose item fires; says once per service and item what it
    cannot check (HTTP monitors, NETWORK targets), while the rest keep working."""

    def __init__(self) -> None:
        self._noticed: set[tuple[str, ...]] = set()

    def evaluate(
        self,
        watches: list[Watch],
        windows: WindowStore[SeriesKey],
        anchor: int,
        may_trigger: Callable[[Hashable], bool],
    ) -> list[Finding]:
        findings: list[Finding] = []
        for watch in watches:
            item = watch.item
            if not item.measured:
                self._notice(
                    watch,
                    "needs HTTP observation, which this agent does not have; "
                    "the policy's other items still work",
                )
                continue
            if item.target not in TRIGGERABLE_TARGETS:
                self._notice(
                    watch,
                    "targets NETWORK profiling, which this agent does not support: "
                    "its values are reported as meters but it never triggers",
                )
                continue
            if not may_trigger(dimension_of(item.target, watch.process_id, watch.process)):
                continue  # silenced: no need to look
            window = windows.get(series_key(item.monitor, watch.process))
            if window is None:
                continue
            current = window.match(item.threshold, item.period, item.count, anchor)
            if current is not None:
                findings.append(Finding(watch, current))
        return findings

    def _notice(self, watch: Watch, what: str) -> None:
        item = watch.item
        key = (watch.process.entity.service_name, item.target, item.monitor)
        if key not in self._noticed:
            self._noticed.add(key)
            log.warning(
                "continuous profiling: service %r item %s/%s %s",
                key[0],
                item.target,
                item.monitor,
                what,
            )
