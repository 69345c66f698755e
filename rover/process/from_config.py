"""The finders the agent's configuration (``rover.config.AgentConfig``) activates.

Each is returned as a builder, so the caller decides when construction (template compilation,
Kubernetes client set-up, and their errors) happens. The Kubernetes client is imported only
when that finder is built. The finders take the configuration's own rule types.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

from rover.hostfs import HostFS
from rover.process.agent_host import AgentHost
from rover.process.finder import ProcessFinder
from rover.process.scanner import RegexScannerFinder

if TYPE_CHECKING:
    from rover.config import AgentConfig, KubernetesConfig


def finders_from_config(config: AgentConfig, agent_id: str) -> list[Callable[[], ProcessFinder]]:
    """Builders for the active finders: the regex scanner (mode REGEX) and/or Kubernetes."""
    hostfs = HostFS(config.core.host_root, config.core.host_proc_mapping)
    agent = AgentHost(instance_id=agent_id, hostfs=hostfs)
    discovery = config.process_discovery
    builders: list[Callable[[], ProcessFinder]] = []
    if discovery.scanner.active:
        builders.append(functools.partial(RegexScannerFinder, discovery.scanner.regex, agent=agent))
    if discovery.kubernetes.active:
        builders.append(
            functools.partial(
                _kubernetes,
                discovery.kubernetes,
                agent,
                config.core.cluster_name,
                config.cache.kubernetes_owner_bytes,
            )
        )
    return builders


def _kubernetes(
    config: KubernetesConfig, agent: AgentHost, cluster_name: str, owner_cache_bytes: int
) -> ProcessFinder:
    from rover.process.kubernetes.finder import KubernetesFinder

    return KubernetesFinder(
        config, agent=agent, cluster_name=cluster_name, owner_cache_bytes=owner_cache_bytes
    )
