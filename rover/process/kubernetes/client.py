"""Connecting to the API server: the pod's service account inside a cluster, else a
kubeconfig (``KUBECONFIG``, which may list several files, or ``~/.kube/config``)."""

from __future__ import annotations

import os

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException


class KubernetesConnectError(RuntimeError):
    """No usable way to reach the API server."""


def load_api_client() -> client.ApiClient:
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            raise KubernetesConnectError(
                f"running in a pod (KUBERNETES_SERVICE_HOST is set) but the service account "
                f"cannot be used: {exc}; check that the pod mounts its service account token"
            ) from exc
        return client.ApiClient(configuration)
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        return config.new_client_from_config(
            config_file=kubeconfig, persist_config=False, client_configuration=configuration
        )
    except (ConfigException, OSError) as exc:
        raise KubernetesConnectError(
            f"not running in a pod (KUBERNETES_SERVICE_HOST is unset) and no usable kubeconfig "
            f"at {kubeconfig}: {exc}; set KUBECONFIG or run the agent in the cluster"
        ) from exc
