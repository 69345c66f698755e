"""``.Pod.OwnerName "Deployment"``: the pod's owner of a kind, following controller references
upwards (pod -> ReplicaSet -> Deployment) as Rover does; each owner object read from the API is
cached for a while, since ownership practically never changes.

The cache is bounded in bytes (``cache.kubernetes_owner_bytes``, least recently used first
out) and follows the pods: :meth:`OwnerResolver.retain` drops the owners no current pod
leads to, so the ReplicaSets of every past rollout are not kept.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from rover.byte_cache import ByteLru, CacheStats, str_bytes
from rover.process.kubernetes.model import OwnerRef, PodInfo

_CACHE_TTL_S = 600.0
_REQUEST_TIMEOUT_S = 10.0
DEFAULT_OWNER_BYTES = 1 << 20  # cache.kubernetes_owner_bytes
# An OwnerRef (a dataclass with its attribute dict) besides its strings; the float and
# tuple of an entry besides its owners.
_REF_BYTES = 160
_ENTRY_BYTES = 24 + 64

OwnerKey = tuple[str, str, str, str]  # api version, kind, namespace, name


class OwnerLookupError(Exception):
    """An owner object could not be read from the API server."""


class OwnerResolver:
    def __init__(
        self,
        api_client: Any,
        cache_ttl_s: float = _CACHE_TTL_S,
        budget_bytes: int = DEFAULT_OWNER_BYTES,
    ) -> None:
        self._api = api_client
        self._ttl = cache_ttl_s
        # (when read, the object's own owner references) by the object's key
        self._cache: ByteLru[OwnerKey, tuple[float, tuple[OwnerRef, ...]]] = ByteLru(
            "kubernetes_owners", budget_bytes
        )

    def stats(self) -> CacheStats:
        return self._cache.stats()

    def owner_of_kind(self, pod: PodInfo, kind: str) -> str | None:
        """The name of the pod's nearest owner of ``kind`` (case-insensitive), or None."""
        owner = self._find(pod, kind)
        return owner.name if owner is not None else None

    def retain(self, pods: Iterable[PodInfo]) -> None:
        """Forget the owners that none of ``pods`` (the current ones) leads to."""
        reachable: set[OwnerKey] = set()
        pending = deque((pod.namespace, ref) for pod in pods for ref in pod.owners)
        while pending:
            namespace, ref = pending.popleft()
            key = _key(namespace, ref)
            if key in reachable:
                continue
            reachable.add(key)
            cached = self._cache.peek(key)
            if cached is not None:
                pending.extend((namespace, parent) for parent in cached[1])
        for key in self._cache.keys_by_age():
            if key not in reachable:
                self._cache.pop(key)

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
        key = _key(namespace, ref)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        owners = tuple(
            OwnerRef(
                o.get("apiVersion", ""), o.get("kind", ""), o.get("name", ""), o.get("controller")
            )
            for o in self._get(namespace, ref).get("metadata", {}).get("ownerReferences", [])
        )
        self._cache.put(key, (now, owners), _entry_bytes(key, owners))
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


def _key(namespace: str, ref: OwnerRef) -> OwnerKey:
    return (ref.api_version, ref.kind, namespace, ref.name)


def _entry_bytes(key: OwnerKey, owners: tuple[OwnerRef, ...]) -> int:
    """The key (a tuple of four strings) and the owners (each three strings)."""
    strings = sum(map(str_bytes, key)) + sum(
        str_bytes(o.api_version) + str_bytes(o.kind) + str_bytes(o.name) for o in owners
    )
    return (
        sys.getsizeof(key)
        + sys.getsizeof(owners)
        + strings
        + _REF_BYTES * len(owners)
        + _ENTRY_BYTES
    )
