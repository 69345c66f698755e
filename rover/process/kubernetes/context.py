"""What Kubernetes analyzers' filters and templates see: ``.Pod``, ``.Container``, ``.Process``
and ``.Rover`` (names as in Rover's ``pkg/process/finders/kubernetes/template.go`` and its
service-discovery documentation)."""

from __future__ import annotations

from dataclasses import dataclass

from rover.byte_cache import ByteLru, CacheStats, str_bytes
from rover.process.agent_host import AgentHost
from rover.process.context import PROCESS, ROVER, ProcessView
from rover.process.kubernetes.labels import LabelSelector
from rover.process.kubernetes.model import ContainerInfo, PodInfo
from rover.process.kubernetes.owner import OwnerResolver
from rover.process.template import Kind, Member, ObjectType, RenderError


class ContainerView:
    def __init__(self, container: ContainerInfo) -> None:
        self.container = container

    def env_value(self, names: str) -> str:
        """The value of the first of the comma separated variables the container sets."""
        wanted = names.split(",")
        for name, value in self.container.env:
            if name in wanted:
                return value
        present = [name for name, _ in self.container.env]
        raise RenderError(f"container {self.container.name!r} sets none of {wanted} ({present})")


class PodView:
    def __init__(
        self, pod: PodInfo, service_name: str, owners: OwnerResolver | None = None
    ) -> None:
        self.pod = pod
        self.service_name = service_name
        self.owners = owners

    def label_value(self, names: str, default: str = "") -> str:
        """The first non-empty value among the comma separated label keys, else ``default``."""
        for name in names.split(","):
            value = self.pod.labels.get(name, "")
            if value:
                return value
        return default

    def has_container(self, name: str) -> bool:
        return name in self.pod.spec_containers

    def label_selector(self, selector: str) -> bool:
        return _parse_selector(selector).matches(self.pod.labels)

    def find_container(self, name: str) -> ContainerView:
        for container in self.pod.containers:
            if container.name == name:
                return ContainerView(container)
        raise RenderError(f"pod {self.pod.name!r} has no container {name!r}")

    def owner_name(self, kinds: str) -> str:
        name = self._owner(kinds)
        if name is None:
            raise RenderError(f"pod {self.pod.name!r} has no owner of kind {kinds!r}")
        return name

    def has_owner_name(self, kinds: str) -> bool:
        return self._owner(kinds) is not None

    def _owner(self, kinds: str) -> str | None:
        """The first of the comma separated kinds the pod is owned by; the pseudo-kind
        ``Service`` is the pod's service (Rover's rule)."""
        for kind in (k.strip() for k in kinds.split(",") if k.strip()):
            if kind.lower() == "service":
                if self.service_name:
                    return self.service_name
                continue
            if self.owners is None:
                raise RenderError("owner lookups need the Kubernetes API client")
            name = self.owners.owner_of_kind(self.pod, kind)
            if name is not None:
                return name
        return None


# Parsed ``.Pod.LabelSelector`` arguments. An entry is charged its text four times over:
# the text, and the keys, operators and values parsed from it (each a string of its own).
_SELECTORS: ByteLru[str, LabelSelector] = ByteLru("label_selectors", 256 << 10)
_SELECTOR_BYTES = 200  # the selector and its tuple of requirements, besides the strings


def _parse_selector(selector: str) -> LabelSelector:
    parsed = _SELECTORS.get(selector)
    if parsed is None:
        parsed = LabelSelector.parse(selector)
        _SELECTORS.put(selector, parsed, 4 * str_bytes(selector) + _SELECTOR_BYTES)
    return parsed


def selector_cache_stats() -> CacheStats:
    return _SELECTORS.stats()


CONTAINER = ObjectType(
    "Container",
    {
        "Name": Member(Kind.STRING, lambda view: view.container.name),
        "ID": Member(Kind.STRING, lambda view: view.container.status_id),
        "EnvValue": Member(Kind.STRING, ContainerView.env_value, params=(Kind.STRING,)),
    },
)

POD = ObjectType(
    "Pod",
    {
        "Name": Member(Kind.STRING, lambda view: view.pod.name),
        "Namespace": Member(Kind.STRING, lambda view: view.pod.namespace),
        "Node": Member(Kind.STRING, lambda view: view.pod.node_name),
        # Rover's older default config passes no default: accept both forms
        "LabelValue": Member(
            Kind.STRING, PodView.label_value, params=(Kind.STRING, Kind.STRING), optional=1
        ),
        "ServiceName": Member(Kind.STRING, lambda view: view.service_name),
        "HasServiceName": Member(Kind.BOOL, lambda view: view.service_name != ""),
        "HasContainer": Member(Kind.BOOL, PodView.has_container, params=(Kind.STRING,)),
        "LabelSelector": Member(
            Kind.BOOL,
            PodView.label_selector,
            params=(Kind.STRING,),
            check_literals=_parse_selector,
        ),
        "FindContainer": Member(CONTAINER, PodView.find_container, params=(Kind.STRING,)),
        "OwnerName": Member(Kind.STRING, PodView.owner_name, params=(Kind.STRING,)),
        "HasOwnerName": Member(Kind.BOOL, PodView.has_owner_name, params=(Kind.STRING,)),
    },
)


@dataclass(frozen=True)
class KubernetesData:
    process: ProcessView
    pod: PodView
    container: ContainerView
    rover: AgentHost


KUBERNETES_DATA = ObjectType(
    "KubernetesData",
    {
        "Process": Member(PROCESS, lambda data: data.process),
        "Pod": Member(POD, lambda data: data.pod),
        "Container": Member(CONTAINER, lambda data: data.container),
        "Rover": Member(ROVER, lambda data: data.rover),
    },
)
