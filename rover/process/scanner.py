"""Host processes picked by a regular expression over their command line (Rover's removed
"scanner" finder, REGEX mode), reported as ``hostProcess`` entities.

Each rule names the entity with templates over ``.Process``, ``.Rover`` and ``.Finder``
(``.Finder.Layer``, ``.Finder.RegexMatchGroup N`` -- group N of ``match_cmd``). A process is
claimed by the first rule that matches. As in Rover, processes that end up with the same entity
are reported once (the lowest pid), because the backend could not tell them apart.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rover.config import RegexFinderConfig
from rover.hostfs import HostFS
from rover.process.agent_host import AgentHost
from rover.process.context import PROCESS, ROVER, ProcessView
from rover.process.entity_templates import EntityTemplates
from rover.process.finder import FinderConfigError
from rover.process.log_once import OncePerProcess
from rover.process.model import DiscoveredProcess, Entity, ProcessKind
from rover.process.procfs import HostProcess, scan_host_processes
from rover.process.profilable import ProfilingSupport
from rover.process.template import Kind, Member, ObjectType, RenderError

log = logging.getLogger(__name__)

DEFAULT_LAYER = RegexFinderConfig().layer  # for a rule whose layer is empty


class _RuleView:
    """``.Finder``: the rule that claimed the process."""

    def __init__(self, rule: _Rule, process: HostProcess) -> None:
        self.rule = rule
        self.process = process

    def regex_match_group(self, index: int) -> str:
        match = self.rule.pattern.search(self.process.command_line)
        if match is None or not 0 <= index <= self.rule.pattern.groups:
            raise RenderError(
                f"match_cmd {self.rule.pattern.pattern!r} has no group {index} "
                f"in {self.process.command_line!r}"
            )
        return match.group(index) or ""


FINDER = ObjectType(
    "Finder",
    {
        "Layer": Member(Kind.STRING, lambda view: view.rule.entity.layer),
        "RegexMatchGroup": Member(Kind.STRING, _RuleView.regex_match_group, params=(Kind.INT,)),
    },
)


@dataclass(frozen=True)
class _ScannerData:
    process: ProcessView
    rover: AgentHost
    finder: _RuleView


SCANNER_DATA = ObjectType(
    "ScannerData",
    {
        "Process": Member(PROCESS, lambda data: data.process),
        "Rover": Member(ROVER, lambda data: data.rover),
        "Finder": Member(FINDER, lambda data: data.finder),
    },
)


@dataclass(frozen=True)
class _Rule:
    index: int
    pattern: re.Pattern[str]
    entity: EntityTemplates


class RegexScannerFinder:
    """A :class:`~rover.process.finder.ProcessFinder` over host processes."""

    def __init__(
        self,
        rules: Sequence[RegexFinderConfig],
        *,
        agent: AgentHost,
        hostfs: HostFS | None = None,
        host_ip: str | None = None,
    ) -> None:
        """Raises ``FinderConfigError`` / ``TemplateError`` naming the bad rule field."""
        if not rules:
            raise FinderConfigError("scanner.regex: at least one rule is needed")
        self._rules = [_compile_rule(i, rule) for i, rule in enumerate(rules)]
        self._agent = agent
        self._hostfs = hostfs or agent.hostfs
        self._host_ip = host_ip
        self._profiling = ProfilingSupport(self._hostfs)
        self._once = OncePerProcess(log)
        self._duplicates_reported: frozenset[tuple[int, ...]] = frozenset()
        self.last_scan_vanished = 0  # processes that exited while the last scan read them

    def start(self) -> None:
        """Nothing runs in the background: every scan reads /proc afresh."""

    def stop(self) -> None:
        """Nothing to stop."""

    def wait_synced(self, timeout_s: float) -> bool:
        """Always complete: every scan reads /proc afresh."""
        return True

    def scan(self) -> list[DiscoveredProcess]:
        listing = scan_host_processes(self._hostfs)
        self.last_scan_vanished = listing.vanished
        host_ip = self._host_ip or self._agent.default_ipv4()
        found: list[DiscoveredProcess] = []
        for process in listing.processes:
            discovered = self._discover(process, host_ip)
            if discovered is not None:
                found.append(discovered)
        alive = {(p.pid, p.start_time) for p in listing.processes}
        self._profiling.retain(alive)
        self._once.retain(alive)
        return self._one_per_entity(found)

    def _discover(self, process: HostProcess, host_ip: str) -> DiscoveredProcess | None:
        if not process.cmdline:
            return None
        command_line = process.command_line
        rule = next((r for r in self._rules if r.pattern.search(command_line)), None)
        if rule is None:
            return None
        key = (process.pid, process.start_time)
        data = _ScannerData(
            ProcessView(self._hostfs, process), self._agent, _RuleView(rule, process)
        )
        try:
            entity = rule.entity.render(data)
        except RenderError as exc:
            self._once.log(logging.WARNING, key, "skipping process %d: %s", process.pid, exc)
            return None
        if not entity.service_name:
            self._once.log(
                logging.WARNING,
                key,
                "skipping process %d (%s): scanner.regex[%d].service_name rendered empty",
                process.pid,
                command_line,
                rule.index,
            )
            return None
        properties = {
            "host_ip": host_ip,
            "pid": str(process.pid),
            "command_line": command_line,
            "support_ebpf_profiling": self._profiling.property_value(process),
        }
        return DiscoveredProcess(
            process.pid, entity, ProcessKind.HOST, process.start_time, properties
        )

    def _one_per_entity(self, found: list[DiscoveredProcess]) -> list[DiscoveredProcess]:
        by_entity: dict[tuple[object, ...], list[DiscoveredProcess]] = {}
        for process in found:  # found is in pid order, so each group starts with its lowest pid
            by_entity.setdefault(_entity_identity(process.entity), []).append(process)
        reported: set[tuple[int, ...]] = set()
        for group in by_entity.values():
            pids = tuple(p.pid for p in group)
            if len(pids) < 2:
                continue
            reported.add(pids)
            if pids not in self._duplicates_reported:
                entity = group[0].entity
                log.warning(
                    "processes %s all map to service %r instance %r process %r; reporting "
                    "only pid %d -- make the scanner's name templates tell them apart",
                    list(pids),
                    entity.service_name,
                    entity.instance_name,
                    entity.process_name,
                    pids[0],
                )
        self._duplicates_reported = frozenset(reported)
        return [group[0] for group in by_entity.values()]


def _compile_rule(index: int, config: RegexFinderConfig) -> _Rule:
    where = f"scanner.regex[{index}]"
    if not config.match_cmd.strip():
        raise FinderConfigError(f"{where}.match_cmd must not be empty")
    try:
        pattern = re.compile(config.match_cmd)
    except re.error as exc:
        raise FinderConfigError(
            f"{where}.match_cmd {config.match_cmd!r} is not a valid regular expression: {exc}"
        ) from None
    entity = EntityTemplates.compile(
        where,
        SCANNER_DATA,
        layer=config.layer or DEFAULT_LAYER,
        service_name=config.service_name,
        instance_name=config.instance_name,
        process_name=config.process_name,
        labels=config.labels,
    )
    return _Rule(index, pattern, entity)


def _entity_identity(entity: Entity) -> tuple[object, ...]:
    return (
        entity.layer,
        entity.service_name,
        entity.instance_name,
        entity.process_name,
        frozenset(entity.labels),
    )
