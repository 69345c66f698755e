"""A small fake Kubernetes API server for tests, good enough for the official Python client.

Serves, on 127.0.0.1 in a background thread:

* ``GET /api/v1/{pods,services}`` and ``/api/v1/namespaces/{ns}/{pods,services}``: lists with
  ``fieldSelector`` (``a.b=v``, ``!=``), ``labelSelector`` and ``metadata.resourceVersion``;
  with ``watch=true`` a chunked stream of JSON lines (ADDED/MODIFIED/DELETED) that replays the
  history after ``resourceVersion`` (or starts with ADDED for everything when it is absent/0),
  honours ``timeoutSeconds``, translates changes across the selectors the way the real server
  does (an object leaving the selection arrives as DELETED), and answers a version older than
  the compaction point with an ``ERROR`` event carrying 410 Gone;
* ``GET /api/v1/namespaces/{ns}/{pods,services}/{name}`` and any path stored with
  :meth:`FakeKubernetes.put_object` (e.g. a ReplicaSet, for owner lookups).

Test controls: add/modify/delete pods and services (watchers see the events at once),
:meth:`~FakeKubernetes.break_watches` (drop the open streams mid-chunk),
:meth:`~FakeKubernetes.set_unavailable` (answer 503 to everything, or to one collection),
:meth:`~FakeKubernetes.expire_watches` (compact: open streams get ERROR 410), request counters,
and :meth:`~FakeKubernetes.api_client` / :meth:`~FakeKubernetes.write_kubeconfig`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from rover.process.kubernetes.labels import LabelSelector

RESOURCES = {"pods": "Pod", "services": "Service"}
_COLLECTION = re.compile(r"/api/v1(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>pods|services)")
_ITEM = re.compile(r"/api/v1/namespaces/(?P<ns>[^/]+)/(?P<resource>pods|services)/(?P<name>[^/]+)")
_DEFAULT_WATCH_S = 1800


# --- manifests ---------------------------------------------------------------------------------


def pod_manifest(
    name: str,
    *,
    namespace: str = "default",
    node: str = "node-1",
    labels: Mapping[str, str] | None = None,
    containers: Sequence[tuple[str, str]] = (),
    pod_ip: str = "10.244.0.10",
    uid: str | None = None,
    owner_references: Sequence[Mapping[str, Any]] = (),
    env: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """A running pod; ``containers`` are (name, status containerID such as
    ``containerd://<64 hex>``); ``env`` maps a container name to its variables."""
    env = env or {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuid.uuid4()),
            "labels": dict(labels or {}),
            "ownerReferences": [dict(o) for o in owner_references],
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": c_name,
                    "image": f"example/{c_name}:1",
                    "env": [{"name": k, "value": v} for k, v in env.get(c_name, {}).items()],
                }
                for c_name, _ in containers
            ],
        },
        "status": {
            "phase": "Running",
            "podIP": pod_ip,
            "containerStatuses": [
                {
                    "name": c_name,
                    "containerID": container_id,
                    "image": f"example/{c_name}:1",
                    "imageID": f"example/{c_name}@sha256:{'0' * 64}",
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}},
                }
                for c_name, container_id in containers
            ],
        },
    }


def service_manifest(
    name: str, *, namespace: str = "default", selector: Mapping[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
        "spec": {"selector": dict(selector or {}), "ports": [{"port": 80}]},
    }


# --- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Change:
    version: int
    resource: str
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclass(frozen=True)
class _Query:
    resource: str
    namespace: str | None
    field_selector: list[tuple[str, str, str]]
    label_selector: LabelSelector

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        for path, op, value in self.field_selector:
            actual = _lookup(obj, path)
            if (actual == value) != (op == "="):
                return False
        return self.label_selector.matches(meta.get("labels") or {})


class FakeKubernetes:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in RESOURCES}
        self._plain: dict[str, dict[str, Any]] = {}
        self._history: list[_Change] = []
        self._version = 100
        self._compacted = 0  # watches from an older version get 410 Gone
        self._break_generation = 0
        self._expire_generation = 0
        self._closing = False
        self._unavailable: frozenset[str] = frozenset()  # resources answered 503; "*": all
        self._open_watches: Counter[str] = Counter()
        self._requests: Counter[tuple[str, str]] = Counter()
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-k8s-")
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-k8s", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an IPv4 server
        return f"http://{host}:{port}"

    def start(self) -> FakeKubernetes:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._server.server_close()
        self._thread.join(5)
        self._tmp.cleanup()

    # --- clients ---------------------------------------------------------------------------

    def write_kubeconfig(self, path: str | Path | None = None) -> Path:
        """A kubeconfig whose current context points at this server (token auth, no TLS)."""
        target = Path(path) if path else Path(self._tmp.name) / "kubeconfig"
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}],
            "current-context": "fake",
        }
        target.write_text(yaml.safe_dump(kubeconfig))
        return target

    def api_client(self) -> client.ApiClient:
        """A real ``kubernetes.client.ApiClient`` loaded from a kubeconfig for this server."""
        return config.new_client_from_config(
            config_file=str(self.write_kubeconfig()), persist_config=False
        )

    # --- objects ---------------------------------------------------------------------------

    def add_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        return self._store("pods", pod)

    def modify_pod(
        self, namespace: str, name: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """``change`` edits a copy of the pod in place; watchers get MODIFIED."""
        return self._modify("pods", namespace, name, change)

    def delete_pod(self, namespace: str, name: str) -> None:
        self._delete("pods", namespace, name)

    def add_service(self, service: dict[str, Any]) -> dict[str, Any]:
        return self._store("services", service)

    def modify_service(
        self, namespace: str, name: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        return self._modify("services", namespace, name, change)

    def delete_service(self, namespace: str, name: str) -> None:
        self._delete("services", namespace, name)

    def put_object(self, path: str, obj: dict[str, Any]) -> None:
        """Serve ``obj`` at ``path`` for plain GETs (no list/watch)."""
        with self._cond:
            self._plain[path] = copy.deepcopy(obj)

    # --- faults ----------------------------------------------------------------------------

    def break_watches(self) -> int:
        """Drop every open watch stream abruptly (mid chunked body); returns how many."""
        with self._cond:
            count = sum(self._open_watches.values())
            self._break_generation += 1
            self._cond.notify_all()
        return count

    def expire_watches(self) -> int:
        """Compact history: open streams receive ``ERROR`` 410 Gone and end, and any later
        watch from a version before now is refused the same way."""
        with self._cond:
            count = sum(self._open_watches.values())
            self._compacted = self._version + 1
            self._expire_generation += 1
            self._cond.notify_all()
        return count

    def set_unavailable(self, unavailable: bool = True, resource: str | None = None) -> None:
        """While set, every request is answered 503 (an API server that is down), or with
        ``resource`` only the list and watch requests of that collection."""
        key = resource or "*"
        with self._cond:
            self._unavailable = (
                self._unavailable | {key} if unavailable else self._unavailable - {key}
            )

    def _answers_503(self, resource: str | None) -> bool:
        with self._cond:
            return "*" in self._unavailable or resource in self._unavailable

    # --- observation -----------------------------------------------------------------------

    def request_count(self, resource: str, verb: str) -> int:
        """How many ``list`` or ``watch`` requests arrived for ``pods``/``services``."""
        with self._cond:
            return self._requests[(resource, verb)]

    def open_watches(self, resource: str) -> int:
        with self._cond:
            return self._open_watches[resource]

    def wait_for_watches(self, resource: str, count: int = 1, timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._open_watches[resource] < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    # --- internals -------------------------------------------------------------------------

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _store(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", str(uuid.uuid4()))
        key = (meta["namespace"], meta["name"])
        with self._cond:
            if key in self._objects[resource]:
                raise ValueError(f"{resource} {key} already exists")
            meta["resourceVersion"] = str(self._next_version())
            self._objects[resource][key] = obj
            self._record(_Change(self._version, resource, "ADDED", obj, None))
        return copy.deepcopy(obj)

    def _modify(
        self, resource: str, namespace: str, name: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        with self._cond:
            old = self._objects[resource][(namespace, name)]
            new = copy.deepcopy(old)
            change(new)
            new["metadata"]["resourceVersion"] = str(self._next_version())
            self._objects[resource][(namespace, name)] = new
            self._record(_Change(self._version, resource, "MODIFIED", new, old))
        return copy.deepcopy(new)

    def _delete(self, resource: str, namespace: str, name: str) -> None:
        with self._cond:
            old = self._objects[resource].pop((namespace, name))
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._next_version())
            self._record(_Change(self._version, resource, "DELETED", gone, old))

    def _record(self, change: _Change) -> None:
        self._history.append(change)
        self._cond.notify_all()

    def _list(self, query: _Query) -> tuple[int, list[dict[str, Any]]]:
        with self._cond:
            self._requests[(query.resource, "list")] += 1
            items = [
                copy.deepcopy(o)
                for _, o in sorted(self._objects[query.resource].items())
                if query.matches(o)
            ]
            return self._version, items

    def _get(self, path: str) -> dict[str, Any] | None:
        with self._cond:
            match = _ITEM.fullmatch(path)
            if match:
                found = self._objects[match["resource"]].get((match["ns"], match["name"]))
            else:
                found = self._plain.get(path)
            return copy.deepcopy(found) if found is not None else None

    def _serve_watch(self, handler: _Handler, query: _Query, since: str, timeout_s: int) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._requests[(query.resource, "watch")] += 1
            breaks, expiries = self._break_generation, self._expire_generation
            cursor = len(self._history)
            if since not in ("", "0") and int(since) < self._compacted:
                pending = [_gone(since, self._compacted)]
                cursor = -1  # nothing follows the error
            elif since not in ("", "0"):
                pending = [
                    e for c in self._history if c.version > int(since) if (e := _event(c, query))
                ]
            else:
                pending = [
                    {"type": "ADDED", "object": copy.deepcopy(o)}
                    for _, o in sorted(self._objects[query.resource].items())
                    if query.matches(o)
                ]
            self._open_watches[query.resource] += 1
            self._cond.notify_all()
        handler.start_chunked()
        try:
            while True:
                for event in pending:
                    handler.send_chunk(json.dumps(event).encode() + b"\n")
                if cursor < 0:
                    handler.end_chunked()
                    return
                with self._cond:
                    while (
                        len(self._history) <= cursor
                        and not self._closing
                        and breaks == self._break_generation
                        and expiries == self._expire_generation
                        and time.monotonic() < deadline
                    ):
                        self._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                    if breaks != self._break_generation or self._closing:
                        handler.drop_connection()
                        return
                    if expiries != self._expire_generation:
                        pending, cursor = [_gone(str(self._version), self._compacted)], -1
                        continue
                    if time.monotonic() >= deadline:
                        handler.end_chunked()
                        return
                    changes = self._history[cursor:]
                    cursor = len(self._history)
                pending = [e for c in changes if (e := _event(c, query))]
        except (BrokenPipeError, ConnectionResetError, OSError):
            handler.close_connection = True
        finally:
            with self._cond:
                self._open_watches[query.resource] -= 1
                self._cond.notify_all()


def _event(change: _Change, query: _Query) -> dict[str, Any] | None:
    """The event a watcher with this selection sees for one change, if any."""
    if change.resource != query.resource:
        return None
    now, before = query.matches(change.obj), query.matches(change.old)
    if change.type == "MODIFIED":
        kind = {(True, True): "MODIFIED", (True, False): "ADDED", (False, True): "DELETED"}
        event_type = kind.get((now, before))
    elif change.type == "DELETED":
        event_type = "DELETED" if before else None
    else:
        event_type = "ADDED" if now else None
    return {"type": event_type, "object": copy.deepcopy(change.obj)} if event_type else None


def _gone(since: str, compacted: int) -> dict[str, Any]:
    return {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {since} ({compacted})",
            "reason": "Expired",
            "code": 410,
        },
    }


def _lookup(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


def _parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    result = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        match = re.fullmatch(r"([^!=]+)(==|!=|=)(.*)", term)
        if match is None:
            raise ValueError(f"invalid field selector {text!r}")
        path, op, value = match.groups()
        result.append((path.strip(), "!=" if op == "!=" else "=", value.strip()))
    return result


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeKubernetes

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet tests
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urllib.parse.urlsplit(self.path)
        params = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        collection = _COLLECTION.fullmatch(url.path)
        if self.fake._answers_503(collection["resource"] if collection else None):
            self.send_json(503, _status(503, "ServiceUnavailable", "the API server is down"))
            return
        if collection is None:
            found = self.fake._get(url.path)
            if found is None:
                self.send_json(404, _status(404, "NotFound", f"{url.path} not found"))
            else:
                self.send_json(200, found)
            return
        try:
            query = _Query(
                collection["resource"],
                collection["ns"],
                _parse_field_selector(params.get("fieldSelector", "")),
                LabelSelector.parse(params.get("labelSelector", "")),
            )
        except ValueError as exc:
            self.send_json(400, _status(400, "BadRequest", str(exc)))
            return
        if params.get("watch", "").lower() in ("true", "1"):
            timeout_s = int(params.get("timeoutSeconds", _DEFAULT_WATCH_S))
            self.fake._serve_watch(self, query, params.get("resourceVersion", ""), timeout_s)
            return
        version, items = self.fake._list(query)
        self.send_json(
            200,
            {
                "apiVersion": "v1",
                "kind": RESOURCES[query.resource] + "List",
                "metadata": {"resourceVersion": str(version)},
                "items": items,
            },
        )

    def send_json(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def drop_connection(self) -> None:
        """Close without the terminating chunk, as a crashed server or proxy would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _handler_for(fake: FakeKubernetes) -> type[_Handler]:
    return type("FakeKubernetesHandler", (_Handler,), {"fake": fake})


@pytest.fixture
def fake_k8s() -> Iterator[FakeKubernetes]:
    """A started :class:`FakeKubernetes`, closed at teardown."""
    server = FakeKubernetes().start()
    try:
        yield server
    finally:
        server.close()
