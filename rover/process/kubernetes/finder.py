"""Processes of the pods on this node, named by analyzers (Rover's Kubernetes finder).

Pods on this node (``spec.nodeName``) and services are watched into local copies; each scan maps
every running container (its status ``containerID``) to the host processes whose cgroup names
that container, and lets every analyzer decide whether, and under which entity, to report them.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from rover.byte_cache import CacheStats
from rover.config import KubernetesConfig
from rover.hostfs import HostFS
from rover.process.agent_host import AgentHost
from rover.process.context import ProcessView
from rover.process.finder import FinderConfigError
from rover.process.kubernetes.analyzer import Analyzer
from rover.process.kubernetes.cgroup import container_from_cgroup_file
from rover.process.kubernetes.client import load_api_client
from rover.process.kubernetes.context import (
    KUBERNETES_DATA,
    ContainerView,
    KubernetesData,
    PodView,
    selector_cache_stats,
)
from rover.process.kubernetes.model import (
    PodContainer,
    PodInfo,
    ServiceInfo,
    pod_from_api,
    service_from_api,
    service_names,
)
from rover.process.kubernetes.owner import DEFAULT_OWNER_BYTES, OwnerResolver
from rover.process.kubernetes.watch import Reflector
from rover.process.log_once import OncePerProcess
from rover.process.model import DiscoveredProcess, ProcessKind
from rover.process.procfs import HostProcess, scan_host_processes
from rover.process.profilable import ProfilingSupport
from rover.process.template import RenderError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchSettings:
    """How the watches behave; the defaults suit production, tests shorten them."""

    watch_timeout_s: int = 300
    request_timeout_s: float = 30.0
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0


class KubernetesFinder:
    """A :class:`~rover.process.finder.ProcessFinder` for pods on ``config.node_name``
    (``config.active`` is the caller's business: it decides whether to build one)."""

    def __init__(
        self,
        config: KubernetesConfig,
        *,
        agent: AgentHost,
        hostfs: HostFS | None = None,
        api_client: client.ApiClient | None = None,
        cluster_name: str = "",
        host_ip: str | None = None,
        watch: WatchSettings | None = None,
        owner_cache_bytes: int = DEFAULT_OWNER_BYTES,
    ) -> None:
        """Compiles the analyzers (``FinderConfigError``/``TemplateError`` on bad config) and
        connects the client (``KubernetesConnectError``); watching begins at :meth:`start`.
        Without ``api_client`` the in-cluster service account or a kubeconfig is used.
        ``owner_cache_bytes`` bounds the pods' owners read from the API server."""
        if not config.node_name.strip():
            raise FinderConfigError(
                "kubernetes.node_name must be set (in a DaemonSet: from spec.nodeName)"
            )
        self._analyzers = [Analyzer(i, a, KUBERNETES_DATA) for i, a in enumerate(config.analyzers)]
        self._agent = agent
        self._hostfs = hostfs or agent.hostfs
        self._cluster_name = cluster_name.strip()
        self._host_ip = host_ip
        self._node_name = config.node_name.strip()
        self._owns_client = api_client is None
        self._api_client = api_client or load_api_client()
        self._owners = OwnerResolver(self._api_client, budget_bytes=owner_cache_bytes)
        self._pods, self._services = self._reflectors(config, watch or WatchSettings())
        self._service_names: tuple[tuple[int, ...], dict[tuple[str, str], str]] = ((), {})
        self._profiling = ProfilingSupport(self._hostfs)
        self._once = OncePerProcess(log)
        self.last_scan_vanished = 0  # processes that exited while the last scan read them

    def _reflectors(
        self, config: KubernetesConfig, settings: WatchSettings
    ) -> tuple[list[Reflector[PodInfo]], list[Reflector[ServiceInfo]]]:
        api = client.CoreV1Api(self._api_client)
        on_node = f"spec.nodeName={self._node_name}"
        namespaces = [ns.strip() for ns in config.namespaces if ns.strip()]
        options = dataclasses.asdict(settings)
        pods: list[Reflector[PodInfo]] = []
        services: list[Reflector[ServiceInfo]] = []
        for namespace in namespaces or [""]:
            list_pods: Callable[..., Any]
            list_services: Callable[..., Any]
            if namespace:
                list_pods = functools.partial(
                    api.list_namespaced_pod, namespace, field_selector=on_node
                )
                list_services = functools.partial(api.list_namespaced_service, namespace)
            else:
                list_pods = functools.partial(
                    api.list_pod_for_all_namespaces, field_selector=on_node
                )
                list_services = api.list_service_for_all_namespaces
            label = namespace or "all namespaces"
            pods.append(
                Reflector(f"pods ({label})", list_pods, pod_from_api, lambda p: p.key, **options)
            )
            services.append(
                Reflector(
                    f"services ({label})",
                    list_services,
                    service_from_api,
                    lambda s: s.key,
                    **options,
                )
            )
        return pods, services

    # --- lifecycle -------------------------------------------------------------------------

    def _watches(self) -> list[Reflector[Any]]:
        return [*self._pods, *self._services]

    def start(self) -> None:
        for reflector in self._watches():
            reflector.start()

    def stop(self) -> None:
        reflectors = self._watches()
        for reflector in reflectors:
            reflector.request_stop()
        for reflector in reflectors:
            reflector.stop()
        if self._owns_client:
            self._api_client.close()

    def caches(self) -> list[CacheStats]:
        """The pods' owners and the parsed label selectors (``rover.byte_cache.HasCaches``)."""
        return [self._owners.stats(), selector_cache_stats()]

    @property
    def synced(self) -> bool:
        """Whether every watched collection has been listed at least once."""
        return all(r.synced.is_set() for r in self._watches())

    def wait_synced(self, timeout_s: float) -> bool:
        """Whether every watched collection has been listed at least once within the time."""
        deadline = time.monotonic() + timeout_s
        for reflector in self._watches():
            if not reflector.synced.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    # --- scanning --------------------------------------------------------------------------

    def scan(self) -> list[DiscoveredProcess]:
        if not self.synced:
            # Pods listed before services would be named without their service (or skipped)
            # for a whole scan period: answer nothing until the view is complete.
            return []
        containers = self._running_containers()
        if not containers:  # no process of ours is alive: forget them all
            self._profiling.retain(set())
            self._once.retain(set())
            return []
        listing = scan_host_processes(self._hostfs)
        self.last_scan_vanished = listing.vanished
        host_ip = self._host_ip or self._agent.default_ipv4()
        found: list[DiscoveredProcess] = []
        alive: set[tuple[int, int]] = set()
        for process in listing.processes:
            cgroup = container_from_cgroup_file(process.cgroup)
            pod_container = containers.get(cgroup.container_id) if cgroup else None
            if pod_container is None:
                continue
            alive.add((process.pid, process.start_time))
            found.extend(self._discover(process, pod_container, host_ip))
        self._profiling.retain(alive)
        self._once.retain(alive)
        return found

    def _running_containers(self) -> dict[str, PodContainer]:
        pod_snapshots = [r.snapshot() for r in self._pods]
        service_snapshots = [r.snapshot() for r in self._services]
        pods = [pod for _, items in pod_snapshots for pod in items]
        versions = tuple(v for v, _ in (*pod_snapshots, *service_snapshots))
        if versions != self._service_names[0]:  # matching selectors is the costly part
            services = [s for _, items in service_snapshots for s in items]
            self._service_names = (versions, service_names(pods, services))
        names = self._service_names[1]
        self._owners.retain(pods)  # the owners of deleted pods go with them
        containers: dict[str, PodContainer] = {}
        for pod in pods:
            if pod.node_name != self._node_name:
                continue
            for container in pod.containers:
                if container.running and container.container_id:
                    containers[container.container_id] = PodContainer(
                        pod, container, names.get(pod.key, "")
                    )
        return containers

    def _discover(
        self, process: HostProcess, pod_container: PodContainer, host_ip: str
    ) -> list[DiscoveredProcess]:
        if not process.cmdline:
            return []
        pod, container = pod_container.pod, pod_container.container
        data = KubernetesData(
            ProcessView(self._hostfs, process),
            PodView(pod, pod_container.service_name, self._owners),
            ContainerView(container),
            self._agent,
        )
        properties = {
            "host_ip": host_ip,
            "container_ip": pod.pod_ip,
            "container_name": container.name,
            "pod_name": pod.name,
            "pid": str(process.pid),
            "command_line": process.command_line,
            "support_ebpf_profiling": self._profiling.property_value(process),
        }
        found = []
        for analyzer in self._analyzers:
            if not analyzer.active:
                continue
            key = (process.pid, process.start_time, analyzer.index)
            try:
                entity = analyzer.entity_for(data)
            except RenderError as exc:
                self._once.log(logging.WARNING, key, "process %d: %s", process.pid, exc)
                continue
            if entity is None:
                continue
            if not entity.service_name:
                self._once.log(
                    logging.WARNING,
                    key,
                    "process %d in pod %s/%s: kubernetes.analyzers[%d].service_name rendered "
                    "empty; not reported",
                    process.pid,
                    pod.namespace,
                    pod.name,
                    analyzer.index,
                )
                continue
            if self._cluster_name and "::" not in entity.service_name:
                entity = dataclasses.replace(
                    entity, service_name=f"{self._cluster_name}::{entity.service_name}"
                )
            found.append(
                DiscoveredProcess(
                    process.pid,
                    entity,
                    ProcessKind.KUBERNETES,
                    process.start_time,
                    dict(properties),
                )
            )
        return found
