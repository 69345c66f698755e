"""Simulated containers: real processes moved into cgroup v2 directories named the way
kubelet names a pod's containers (containerd, CRI-O, Docker; systemd and cgroupfs drivers)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SLEEP = shutil.which("sleep") or "/bin/sleep"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail(
            f"moving processes between cgroups needs root (running as uid {os.geteuid()}); "
            "run pytest as root, e.g. `sudo .venv/bin/pytest`",
            pytrace=False,
        )


def mounted_cgroup(fs_type: str, controller: str | None = None) -> Path | None:
    """Where a cgroup hierarchy of this type (and v1 controller) is mounted, if anywhere."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != fs_type:
            continue
        if controller is None or controller in fields[3].split(","):
            return Path(fields[1])
    return None


def cgroup2_root() -> Path:
    root = mounted_cgroup("cgroup2")
    if root is None:
        pytest.fail(
            "no cgroup v2 hierarchy is mounted; these tests need one "
            "(e.g. `mount -t cgroup2 none /sys/fs/cgroup`)",
            pytrace=False,
        )
    return root


def new_container_id() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def cgroup_path(runtime: str, driver: str, pod_uid: str, container_id: str) -> str:
    """Where a kubelet with this driver and runtime puts a burstable pod's container."""
    if driver == "systemd":
        scope = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}[runtime]
        return (
            "kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{pod_uid.replace('-', '_')}.slice/{scope}-{container_id}.scope"
        )
    leaf = f"crio-{container_id}" if runtime == "cri-o" else container_id
    return f"kubepods/burstable/pod{pod_uid}/{leaf}"


class ContainerCgroups:
    """Creates cgroup directories and moves processes in; :meth:`cleanup` undoes it all.

    Parents such as ``kubepods.slice`` may be shared with a concurrent test run, so they are
    removed only when empty and a vanished parent is simply created again."""

    def __init__(self) -> None:
        self.entered: list[tuple[Path, Path]] = []  # (root, leaf directory)

    def enter(self, pid: int, relative: str, root: Path | None = None) -> Path:
        require_root()
        root = root or cgroup2_root()
        directory = root / relative
        self.entered.append((root, directory))
        for _ in range(10):
            try:
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "cgroup.procs").write_text(str(pid))
                return directory
            except FileNotFoundError:  # another run removed a shared parent meanwhile
                continue
        raise AssertionError(f"could not move {pid} into {directory}")

    def cleanup(self) -> None:
        for root, leaf in reversed(self.entered):
            with contextlib.suppress(OSError):
                for pid in (leaf / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        (root / "cgroup.procs").write_text(pid)
            for _ in range(50):  # a just-killed process may take a moment to leave
                try:
                    leaf.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
            for parent in leaf.relative_to(root).parents:
                if parent != Path("."):
                    with contextlib.suppress(OSError):  # still used by someone else
                        (root / parent).rmdir()
        self.entered.clear()


@pytest.fixture
def cgroups() -> Iterator[ContainerCgroups]:
    groups = ContainerCgroups()
    try:
        yield groups
    finally:
        groups.cleanup()


@dataclass
class Container:
    name: str
    status_id: str  # e.g. "containerd://<id>"
    pid: int


@pytest.fixture
def run_container(spawn, cgroups: ContainerCgroups) -> Callable[..., Container]:
    """``run_container(name, pod_uid, runtime="containerd", driver="systemd", binary=SLEEP)``:
    a real process inside a cgroup named like that container's."""

    def run(
        name: str,
        pod_uid: str,
        runtime: str = "containerd",
        driver: str = "systemd",
        binary: str | Path = SLEEP,
    ) -> Container:
        container_id = new_container_id()
        child = spawn([binary, "1000"], wait_ready=False)
        cgroups.enter(child.pid, cgroup_path(runtime, driver, pod_uid, container_id))
        return Container(name, f"{runtime}://{container_id}", child.pid)

    return run
