"""``.Pod.OwnerName "Deployment"``: the pod's owner of a kind, following controller references
upwards (pod -> ReplicaSet -> Deployment) as Rover does; each owner object read from the API is
cached for a while, since ownership practically never changes."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from typing import Any

from rover.process.kubernetes.model import OwnerRef, PodInfo

_CACHE_TTL_S = 600.0
_REQUEST_TIMEOUT_S = 10.0


class OwnerLookupError(Exception):
    """An owner object could not be read from the API server."""


class OwnerResolver:
    def __init__(self, api_client: Any, cache_ttl_s: float = _CACHE_TTL_S) -> None:
        self._api = api_client
        self._ttl = cache_ttl_s
        self._cache: dict[tuple[str, str, str, str], tuple[float, tuple[OwnerRef, ...]]] = {}
        self._lock = threading.Lock()

    def owner_of_kind(self, pod: PodInfo, kind: str) -> str | None:
        """The name of the pod's nearest owner of ``kind`` (case-insensitive), or None."""
        owner = self._find(pod, kind)
        return owner.name if owner is not None else None

    def _find(self, pod: PodInfo, kind: str) -> OwnerRef | None:
        pending = deque(pod.owners)
        seen: set[tuple[str, str]] = set()
        while pending:
            ref = pending.popleft()
            if ref.kind.lower() == kind.lower():
                return ref
            if ref.controller is False or (ref.kind, ref.name) in seen:
                continue
            seen.add((ref.kind, ref.name))
            pending.extend(self._owners_of(pod.namespace, ref))
        return None

    def _owners_of(self, namespace: str, ref: OwnerRef) -> tuple[OwnerRef, ...]:
        key = (ref.api_version, ref.kind, namespace, ref.name)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        owners = tuple(
            OwnerRef(
                o.get("apiVersion", ""), o.get("kind", ""), o.get("name", ""), o.get("controller")
            )
            for o in self._get(namespace, ref).get("metadata", {}).get("ownerReferences", [])
        )
        with self._lock:
            self._cache[key] = (now, owners)
        return owners

    def _get(self, namespace: str, ref: OwnerRef) -> dict[str, Any]:
        prefix = "/api/v1" if ref.api_version == "v1" else f"/apis/{ref.api_version}"
        path = f"{prefix}/namespaces/{namespace}/{ref.kind.lower()}s/{ref.name}"
        method, url, headers, _body, _post = self._api.param_serialize(
            "GET", path, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
        )
        response = self._api.call_api(method, url, headers, _request_timeout=_REQUEST_TIMEOUT_S)
        data = response.read()
        if response.status != 200:
            raise OwnerLookupError(f"GET {path} answered {response.status}")
        return json.loads(data)
