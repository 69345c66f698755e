"""The parts of pods and services process discovery needs, taken out of the API objects once
(at watch time) so the rest of the package never touches the client's models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rover.process.kubernetes.labels import selects


@dataclass(frozen=True)
class ContainerInfo:
    name: str
    status_id: str  # as the kubelet reports it, e.g. "containerd://<id>"
    running: bool
    env: tuple[tuple[str, str], ...] = ()  # literal values from the spec (valueFrom is "")

    @property
    def container_id(self) -> str:
        """The id as cgroup paths spell it: the runtime scheme removed."""
        return container_id_from_status(self.status_id)


@dataclass(frozen=True)
class OwnerRef:
    api_version: str
    kind: str
    name: str
    controller: bool | None = None


@dataclass(frozen=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    node_name: str
    pod_ip: str
    labels: Mapping[str, str] = field(default_factory=dict)
    spec_containers: tuple[str, ...] = ()  # names of spec.containers
    containers: tuple[ContainerInfo, ...] = ()  # spec containers that have a status
    owners: tuple[OwnerRef, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class ServiceInfo:
    namespace: str
    name: str
    selector: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class PodContainer:
    """A running container of a pod on this node, with the service its pod belongs to."""

    pod: PodInfo
    container: ContainerInfo
    service_name: str


def container_id_from_status(status_id: str) -> str:
    """``containerd://abc`` / ``cri-o://abc`` / ``docker://abc`` -> ``abc``."""
    return status_id.partition("://")[2].strip().lower() if "://" in status_id else status_id


def pod_from_api(pod: Any) -> PodInfo:
    """From a ``kubernetes.client.V1Pod``."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    spec_containers = list(spec.containers or []) if spec else []
    statuses = {s.name: s for s in (status.container_statuses or [])} if status else {}
    containers = []
    for container in spec_containers:
        container_status = statuses.get(container.name)
        if container_status is None:
            continue
        state = container_status.state
        containers.append(
            ContainerInfo(
                name=container.name,
                status_id=container_status.container_id or "",
                running=bool(state and state.running),
                env=tuple((e.name, e.value or "") for e in (container.env or [])),
            )
        )
    owners = tuple(
        OwnerRef(o.api_version, o.kind, o.name, o.controller) for o in (meta.owner_references or [])
    )
    return PodInfo(
        uid=meta.uid or "",
        namespace=meta.namespace or "",
        name=meta.name or "",
        node_name=(spec.node_name or "") if spec else "",
        pod_ip=(status.pod_ip or "") if status else "",
        labels=dict(meta.labels or {}),
        spec_containers=tuple(c.name for c in spec_containers),
        containers=tuple(containers),
        owners=owners,
    )


def service_from_api(service: Any) -> ServiceInfo:
    """From a ``kubernetes.client.V1Service``."""
    selector = (service.spec.selector or {}) if service.spec else {}
    return ServiceInfo(service.metadata.namespace or "", service.metadata.name or "", selector)


def service_names(
    pods: Iterable[PodInfo], services: Iterable[ServiceInfo]
) -> dict[tuple[str, str], str]:
    """Each pod's service: one whose selector matches its labels. When several do, the
    shortest name wins, then the alphabetically first (Rover's rule, so names agree)."""
    by_namespace: dict[str, list[ServiceInfo]] = {}
    for service in services:
        if service.selector:
            by_namespace.setdefault(service.namespace, []).append(service)
    result: dict[tuple[str, str], str] = {}
    for pod in pods:
        matching = [
            s.name for s in by_namespace.get(pod.namespace, ()) if selects(s.selector, pod.labels)
        ]
        if matching:
            result[pod.key] = min(matching, key=lambda name: (len(name), name))
    return result
