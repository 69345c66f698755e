"""From fired check items to triggers: causes grouped by target and dimension (spec 4.7.4-5)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass

from rover.continuous.http_series import Uri
from rover.continuous.policy import MonitorType, TargetType
from rover.continuous.policy_cache import Watch
from rover.network.model import SamplingRule, SamplingSettings
from rover.process.model import DiscoveredProcess

# NETWORK dimensions prefer the process that represents the instance's traffic.
_MAIN_PROCESS_LABELS = ("mesh-application", "k8s-service")


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a trigger fired: a monitor's configured threshold and the value that met it."""

    monitor: MonitorType
    threshold: float
    current: float
    uri: Uri | None = None  # HTTP monitors: the series' request filter (a "uri" cause)


@dataclass(frozen=True, slots=True)
class Trigger:
    """One task to ask the backend for: the main process, its causes, and every
    process of the dimension that will be profiled."""

    target: TargetType
    process_id: str  # of the main process
    process: DiscoveredProcess  # the main process: its entity goes into the report
    causes: tuple[Cause, ...]
    duration_s: int
    processes: tuple[tuple[str, DiscoveredProcess], ...]  # (backend id, process), main first

    def sampling_uri_regexes(self) -> tuple[str, ...]:
        """A NETWORK task's ``samplingURIRegexes`` (spec 4.7.5, 8.13 rule 10): each HTTP
        cause's path or regex, or the single "" when one cause counts every request.
        Non-HTTP causes add nothing."""
        regexes = [c.uri.sampling_regex for c in self.causes if c.uri is not None]
        if "" in regexes:
            return ("",)
        return tuple(dict.fromkeys(regexes))

    def sampling_rules(self) -> list[SamplingRule]:
        """The triggered NETWORK task's local sampling rules: every request of the
        causes' URIs, slow or not, 4xx and 5xx, with complete uncapped content."""
        settings = SamplingSettings(
            require_complete_request=True,
            max_request_size=-1,
            require_complete_response=True,
            max_response_size=-1,
        )
        return [
            SamplingRule(regex, 0, when_4xx=True, when_5xx=True, settings=settings)
            for regex in self.sampling_uri_regexes()
        ]


@dataclass(frozen=True, slots=True)
class Finding:
    """A check item that fired for a process."""

    watch: Watch
    current: float
    uri: Uri | None = None  # the series that fired, for HTTP items

    @property
    def cause(self) -> Cause:
        item = self.watch.item
        return Cause(item.monitor, item.threshold, self.current, self.uri)


def dimension_of(target: TargetType, process_id: str, process: DiscoveredProcess) -> Hashable:
    """What one task covers: a process for ON/OFF_CPU, a service instance for NETWORK."""
    if target is TargetType.NETWORK:
        return (target, process.entity.service_name, process.entity.instance_name)
    return (target, process_id)


def group_triggers(findings: list[Finding], duration_s: int) -> list[Trigger]:
    """One trigger per (target, dimension), in a stable order."""
    grouped: dict[Hashable, dict[str, list[Finding]]] = defaultdict(lambda: defaultdict(list))
    for finding in findings:
        watch = finding.watch
        dimension = dimension_of(watch.item.target, watch.process_id, watch.process)
        grouped[dimension][watch.process_id].append(finding)

    triggers: list[Trigger] = []
    for by_process in grouped.values():
        process_ids = sorted(by_process)
        main_id = _main_process_id(process_ids, by_process)
        main = by_process[main_id][0].watch
        others = [(pid, by_process[pid][0].watch.process) for pid in process_ids if pid != main_id]
        triggers.append(
            Trigger(
                target=main.item.target,
                process_id=main_id,
                process=main.process,
                causes=tuple(_unique_causes(by_process[main_id])),
                duration_s=duration_s,
                processes=((main_id, main.process), *others),
            )
        )
    triggers.sort(key=lambda t: (t.target, t.process_id))
    return triggers


def _main_process_id(process_ids: list[str], by_process: dict[str, list[Finding]]) -> str:
    if len(process_ids) > 1:
        for label in _MAIN_PROCESS_LABELS:
            for process_id in process_ids:
                if label in by_process[process_id][0].watch.process.entity.labels:
                    return process_id
    return process_ids[0]


def _unique_causes(findings: list[Finding]) -> list[Cause]:
    """One cause per monitor type (an item exists once per monitor per target), and for
    HTTP monitors one per series that fired (each listed path its own)."""
    seen: dict[tuple[MonitorType, Uri | None], Cause] = {}
    for finding in findings:
        seen.setdefault((finding.watch.item.monitor, finding.uri), finding.cause)
    return list(seen.values())
