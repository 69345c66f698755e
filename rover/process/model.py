"""What process discovery produces and every other part consumes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ProcessKind(enum.Enum):
    """Which oneof member the process is reported as (spec 2.2 / 4.2)."""

    HOST = "host"  # EBPFHostProcessMetadata: processes found by the regex scanner
    KUBERNETES = "kubernetes"  # EBPFKubernetesProcessMetadata: processes of pods


@dataclass(frozen=True, slots=True)
class Entity:
    """SkyWalking's identity of a process: layer, service, instance, process name, labels."""

    layer: str
    service_name: str
    instance_name: str
    process_name: str
    labels: tuple[str, ...] = ()

    def matches(self, other: Entity) -> bool:
        """Equal as the backend compares them: labels as a set."""
        return (
            self.layer == other.layer
            and self.service_name == other.service_name
            and self.instance_name == other.instance_name
            and self.process_name == other.process_name
            and set(self.labels) == set(other.labels)
        )


@dataclass(frozen=True)
class DiscoveredProcess:
    """One OS process under one entity (one process may yield several entities).

    ``properties`` are the string key/values reported with ``reportProcesses``:
    ``host_ip``, ``pid``, ``command_line``, ``support_ebpf_profiling`` and, for
    Kubernetes processes, ``container_ip``, ``container_name``, ``pod_name``.
    ``start_time`` (clock ticks since boot, from /proc/PID/stat) tells a reused
    pid from the original process.
    """

    pid: int
    entity: Entity
    kind: ProcessKind
    start_time: int = 0
    properties: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> tuple[int, int, Entity]:
        """Identity across scans: the same OS process under the same entity."""
        return (self.pid, self.start_time, self.entity)

    @property
    def profilable(self) -> bool:
        return self.properties.get("support_ebpf_profiling") == "true"
