"""Evaluating every watch against its windows (spec 4.7.2-4.7.4)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

from rover.continuous.plan import SeriesKey, watch_series
from rover.continuous.policy import TRIGGERABLE_TARGETS
from rover.continuous.policy_cache import Watch
from rover.continuous.trigger import Finding, dimension_of
from rover.continuous.windows import WindowStore

log = logging.getLogger(__name__)


class Checker:
    """Finds the watches whose item fires; says once per service and item what it
    cannot check (HTTP monitors without an HTTP event source), while the rest keep
    working. An HTTP item is checked per series: each listed path fires on its own."""

    def __init__(self, http: bool = True) -> None:
        self.http = http  # whether served HTTP requests are observed at all
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
            if not item.measured or (item.http and not self.http):
                self._notice(
                    watch,
                    "needs HTTP observation, which this agent does not have; "
                    "the policy's other items still work",
                )
                continue
            if item.target not in TRIGGERABLE_TARGETS:
                self._notice(watch, f"targets {item.target}, which this agent cannot start")
                continue
            if not may_trigger(dimension_of(item.target, watch.process_id, watch.process)):
                continue  # silenced: no need to look
            for key, uri in watch_series(watch):
                window = windows.get(key)
                if window is None:
                    continue
                current = window.match(item.threshold, item.period, item.count, anchor)
                if current is not None:
                    findings.append(Finding(watch, current, uri))
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
