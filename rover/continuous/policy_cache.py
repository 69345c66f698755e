"""The policies known per service and the processes each one covers (spec 4.7.1)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from rover.continuous.policy import CheckItem, ServicePolicy
from rover.process.model import DiscoveredProcess

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Watch:
    """One check item applied to one registered process."""

    process_id: str  # the backend's id of the process
    process: DiscoveredProcess
    item: CheckItem


class PolicyCache:
    """Service -> policy, and service -> registered processes (refreshed every round).

    Unlike Rover, process sets are refreshed on every round, not only when a
    service's policy changes (spec quirk 3), so new or restarted processes are
    watched at once.
    """

    def __init__(self) -> None:
        self._policies: dict[str, ServicePolicy] = {}
        self._processes: dict[str, dict[str, DiscoveredProcess]] = {}

    def known_uuids(self, services: list[str]) -> dict[str, str]:
        """What to send in the policy query: the cached uuid per service, or ""."""
        return {s: self._policies[s].uuid if s in self._policies else "" for s in services}

    def apply(self, updates: list[ServicePolicy]) -> None:
        """Replace a service's policy when its uuid changed; drop it when removed."""
        for update in updates:
            cached = self._policies.get(update.service)
            if update.removed:
                if cached is not None:
                    log.info("continuous profiling policy of service %r removed", update.service)
                    del self._policies[update.service]
            elif cached is None or cached.uuid != update.uuid:
                log.info(
                    "continuous profiling policy of service %r is now %s (%d item(s))",
                    update.service,
                    update.uuid,
                    len(update.items),
                )
                self._policies[update.service] = update

    def refresh(self, registered: dict[str, DiscoveredProcess]) -> None:
        """Take the current process sets; forget services that have no process left."""
        by_service: dict[str, dict[str, DiscoveredProcess]] = defaultdict(dict)
        for process_id, process in registered.items():
            by_service[process.entity.service_name][process_id] = process
        self._processes = dict(by_service)
        for service in [s for s in self._policies if s not in self._processes]:
            del self._policies[service]

    def clear(self) -> None:
        self._policies.clear()
        self._processes.clear()

    def policies(self) -> list[ServicePolicy]:
        return list(self._policies.values())

    def watches(self) -> list[Watch]:
        """Every (process, item) pair to evaluate, in a stable order."""
        result: list[Watch] = []
        for service in sorted(self._policies):
            processes = self._processes.get(service, {})
            for item in self._policies[service].items:
                for process_id in sorted(processes):
                    result.append(Watch(process_id, processes[process_id], item))
        return result

    def __contains__(self, service: str) -> bool:
        return service in self._policies
