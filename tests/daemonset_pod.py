"""Runs the built image as daemonset.yaml runs it, with podman (scripts/podman.sh).

Every flag is read from the manifest: hostPID, the container's securityContext
(capabilities, read-only root, no privilege escalation, seccomp, user), its volumes
(hostPath, emptyDir, the ConfigMap written to a directory), its env (fieldRefs and
``$(VAR)`` resolved as the kubelet does), its resource limits and args. A manifest setting
this module does not know is an error, so a change to the manifest cannot go untested.

Tests add only what a cluster provides another way: host networking (the test backends
listen on loopback), a kubeconfig in place of the in-cluster service account, a
directory for output files.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "daemonset.yaml"
PODMAN = [str(REPO / "scripts" / "podman.sh")]


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def pod_spec() -> dict[str, Any]:
    (daemonset,) = [d for d in documents() if d["kind"] == "DaemonSet"]
    spec: dict[str, Any] = daemonset["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    """An init container or container of the pod, by name."""
    spec = pod_spec()
    (found,) = [c for c in [*spec["initContainers"], *spec["containers"]] if c["name"] == name]
    return found


def agent_name() -> str:
    (agent,) = pod_spec()["containers"]
    name: str = agent["name"]
    return name


def image() -> str:
    """The image the DaemonSet runs (scripts/build-image.sh builds it under this name)."""
    name: str = container(agent_name())["image"]
    return name


def grace_period() -> int:
    return int(pod_spec()["terminationGracePeriodSeconds"])


def capabilities(name: str) -> list[str]:
    caps: list[str] = container(name)["securityContext"]["capabilities"]["add"]
    return caps


def configmap(name: str) -> dict[str, str]:
    (found,) = [
        d for d in documents() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name
    ]
    data: dict[str, str] = found["data"]
    return data


@dataclass(frozen=True)
class PodFields:
    """What the downward API gives the pod (fieldRef values)."""

    node_name: str = "node-1"
    pod_ip: str = "127.0.0.1"

    def value(self, path: str) -> str:
        values = {"spec.nodeName": self.node_name, "status.podIP": self.pod_ip}
        if path not in values:
            raise ValueError(f"fieldRef {path} is not simulated here")
        return values[path]


def bytes_of(quantity: str) -> int:
    """A Kubernetes memory quantity (``64Mi``, ``1Gi``) in bytes."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    if not m:
        raise ValueError(f"unsupported memory quantity {quantity!r}")
    return int(m.group(1)) << {"Ki": 10, "Mi": 20, "Gi": 30}[m.group(2)]


def cpus_of(quantity: str) -> str:
    """A Kubernetes CPU quantity (``1``, ``500m``) as podman's --cpus."""
    return str(int(quantity[:-1]) / 1000) if quantity.endswith("m") else quantity


def env_args(
    spec: Sequence[Mapping[str, Any]], overrides: Mapping[str, str], fields: PodFields
) -> list[str]:
    """-e flags: the manifest's env in order, ``$(NAME)`` expanded from earlier entries,
    then ``overrides`` (which replace a manifest value in place)."""
    resolved: dict[str, str] = {}
    for entry in spec:
        name = entry["name"]
        if name in overrides:
            value = overrides[name]
        elif "value" in entry:
            value = re.sub(
                r"\$\((\w+)\)", lambda m: resolved.get(m.group(1), m.group(0)), entry["value"]
            )
        elif set(entry.get("valueFrom", {})) == {"fieldRef"}:
            value = fields.value(entry["valueFrom"]["fieldRef"]["fieldPath"])
        else:
            raise ValueError(f"env {name}: {entry} is not simulated here")
        resolved[name] = value
    resolved.update({k: v for k, v in overrides.items() if k not in resolved})
    return [f"--env={k}={v}" for k, v in resolved.items()]


def security_args(context: Mapping[str, Any], drop: Sequence[str]) -> list[str]:
    known = {
        "privileged", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "runAsUser",
        "capabilities", "seccompProfile",
    }  # fmt: skip
    if set(context) - known:
        raise ValueError(f"securityContext {sorted(set(context) - known)} not simulated here")
    args = []
    if context.get("privileged"):
        args.append("--privileged")
    if context.get("allowPrivilegeEscalation") is False:
        args.append("--security-opt=no-new-privileges")
    if context.get("readOnlyRootFilesystem"):
        # podman would also mount tmpfs on /tmp, /run, /var/tmp: Kubernetes does not
        args += ["--read-only", "--read-only-tmpfs=false"]
    if "runAsUser" in context:
        args.append(f"--user={context['runAsUser']}")
    caps = context.get("capabilities", {})
    args += [f"--cap-drop={c}" for c in caps.get("drop", [])]
    args += [f"--cap-add={c}" for c in caps.get("add", []) if c not in drop]
    seccomp = context.get("seccompProfile", {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        args.append("--security-opt=seccomp=unconfined")
    elif seccomp != "RuntimeDefault":
        raise ValueError(f"seccompProfile {seccomp} not simulated here")
    return args


def volume_args(
    mounts: Sequence[Mapping[str, Any]], volumes: Mapping[str, Mapping[str, Any]], workdir: Path
) -> list[str]:
    args = []
    for mount in mounts:
        volume = volumes[mount["name"]]
        target, read_only = mount["mountPath"], bool(mount.get("readOnly"))
        propagation = {"HostToContainer": "rslave", "None": "rprivate"}[
            mount.get("mountPropagation", "None")
        ]
        if "hostPath" in volume:
            options = ["ro" if read_only else "rw", propagation]
            args.append(f"--volume={volume['hostPath']['path']}:{target}:{','.join(options)}")
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit")
            args.append(f"--tmpfs={target}" + (f":size={bytes_of(size)}" if size else ""))
        elif "configMap" in volume:
            directory = workdir / f"configmap-{mount['name']}"
            directory.mkdir(parents=True, exist_ok=True)
            for key, text in configmap(volume["configMap"]["name"]).items():
                (directory / key).write_text(text)
            args.append(f"--volume={directory}:{target}:ro")
        else:
            raise ValueError(f"volume {mount['name']}: {volume} not simulated here")
    return args


def run_args(
    name: str,
    workdir: Path,
    *,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    drop: Sequence[str] = (),
    extra: Sequence[str] = (),
    fields: PodFields = PodFields(),
    container_name: str | None = None,
) -> list[str]:
    """``podman run`` arguments for the manifest's container ``name``: its args unless
    ``args`` is given, its env with ``env`` overriding, its capabilities minus ``drop``,
    ``extra`` podman flags (the test's additions) before the image."""
    spec, c = pod_spec(), container(name)
    if set(c) - {
        "name", "image", "imagePullPolicy", "args", "env", "ports", "livenessProbe",
        "readinessProbe", "securityContext", "volumeMounts", "resources",
    }:  # fmt: skip
        raise ValueError(f"container {name}: a setting not simulated here: {sorted(c)}")
    flags = ["run", "--rm", f"--name={container_name or f'rover-test-{uuid.uuid4().hex[:8]}'}"]
    if spec.get("hostPID"):
        flags.append("--pid=host")
    flags += security_args(c.get("securityContext", {}), drop)
    flags += volume_args(
        c.get("volumeMounts", []), {v["name"]: v for v in spec["volumes"]}, workdir
    )
    flags += env_args(c.get("env", []), env or {}, fields)
    limits = c.get("resources", {}).get("limits", {})
    if "memory" in limits:
        flags.append(f"--memory={bytes_of(limits['memory'])}")
    if "cpu" in limits:
        flags.append(f"--cpus={cpus_of(limits['cpu'])}")
    return [*flags, *extra, c["image"], *(c.get("args", []) if args is None else args)]


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
