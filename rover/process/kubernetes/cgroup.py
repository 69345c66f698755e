"""Which container (and pod) a process belongs to, from its ``/proc/PID/cgroup``.

The container runtime and the kubelet's cgroup driver decide the directory names:

* systemd driver: ``/kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`` (``crio-<id>.scope``,
  ``docker-<id>.scope``; ``crio-conmon-<id>.scope`` is CRI-O's monitor, not the container);
* cgroupfs driver: ``/kubepods/burstable/pod<uid>/<id>`` (CRI-O: ``crio-<id>``).

The hierarchy may hang below another container (kind, docker-in-docker), so the path is read
from its deepest component upwards and the first one that names a container wins; depth means
nothing. cgroup v2 files have one ``0::<path>`` line; v1 files one line per controller, which
are all tried (the v2 line first) because hybrid hosts leave the v2 path at ``/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEX_ID = r"[0-9a-f]{12,}"
_CONTAINER_COMPONENT = [
    # (runtime, pattern) -- the monitor scopes must be tried before the plain prefixes
    ("", re.compile(r"^(?:crio|libpod)-conmon-[0-9a-f]+(?:\.scope)?$")),
    ("containerd", re.compile(rf"^cri-containerd-({_HEX_ID})\.scope$")),
    ("cri-o", re.compile(rf"^crio-({_HEX_ID})(?:\.scope)?$")),
    ("docker", re.compile(rf"^docker-({_HEX_ID})\.scope$")),
    ("podman", re.compile(rf"^libpod-({_HEX_ID})\.scope$")),
    # cgroupfs driver: the bare id; 64 digits so that other hex-named groups do not pass
    ("", re.compile(r"^([0-9a-f]{64})$")),
]
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$"
)


@dataclass(frozen=True)
class ContainerCgroup:
    """The container a cgroup path names; ``runtime`` is "" for the cgroupfs bare-id form."""

    container_id: str
    pod_uid: str = ""  # with dashes, "" when no ancestor names a pod
    runtime: str = ""


def container_from_path(path: str) -> ContainerCgroup | None:
    """The container named by one cgroup path, or None (host process, conmon, unreadable)."""
    components = [c for c in path.strip().split("/") if c]
    for depth in range(len(components) - 1, -1, -1):
        found = _match_component(components[depth])
        if found is None:
            continue
        runtime, container_id = found
        if not container_id:  # a runtime's monitor process: not inside the container
            return None
        return ContainerCgroup(container_id, _pod_uid(components[:depth]), runtime)
    return None


def container_from_cgroup_file(text: str) -> ContainerCgroup | None:
    """The container named by the content of ``/proc/PID/cgroup`` (v1, v2 or hybrid)."""
    unified: list[str] = []
    per_controller: list[str] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, _controllers, path = parts
        (unified if hierarchy == "0" else per_controller).append(path)
    for path in unified + per_controller:
        found = container_from_path(path)
        if found is not None:
            return found
    return None


def _match_component(component: str) -> tuple[str, str] | None:
    for runtime, pattern in _CONTAINER_COMPONENT:
        match = pattern.match(component)
        if match:
            return runtime, (match.group(1) if match.groups() else "")
    return None


def _pod_uid(ancestors: list[str]) -> str:
    for component in reversed(ancestors):
        match = _POD_UID.search(component)
        if match:
            return match.group(1).replace("_", "-")
    return ""
