"""Container (and pod) ids from real-world /proc/PID/cgroup contents."""

from __future__ import annotations

import pytest

from rover.process.kubernetes.cgroup import (
    ContainerCgroup,
    container_from_cgroup_file,
    container_from_path,
)

CID = "7dae778c37bd1204677518f1032bbecf01f5c41878ea7bd370021263417cc626"
CID2 = "4e6f9a1f0c6d2b7a8e3c5d9f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"
UID = "8a5f2d3e-1b4c-4d6e-9f0a-1b2c3d4e5f60"
UID_ = UID.replace("-", "_")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # cgroup v2, systemd driver, containerd (burstable / besteffort / guaranteed QoS)
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"cri-containerd-{CID}.scope\n",
            ContainerCgroup(CID, UID, "containerd"),
        ),
        (
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
            f"cri-containerd-{CID}.scope\n",
            ContainerCgroup(CID, UID, "containerd"),
        ),
        (
            f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
            ContainerCgroup(CID, UID, "containerd"),
        ),
        # CRI-O (OpenShift) and its monitor process
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"crio-{CID}.scope\n",
            ContainerCgroup(CID, UID, "cri-o"),
        ),
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"crio-conmon-{CID}.scope\n",
            None,
        ),
        # dockershim / cri-dockerd with the systemd driver
        (
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
            f"docker-{CID}.scope\n",
            ContainerCgroup(CID, UID, "docker"),
        ),
        # cgroupfs driver: the bare id under pod<uid>
        (f"0::/kubepods/burstable/pod{UID}/{CID}\n", ContainerCgroup(CID, UID, "")),
        (f"0::/kubepods/pod{UID}/{CID}\n", ContainerCgroup(CID, UID, "")),
        (f"0::/kubepods/besteffort/pod{UID}/crio-{CID}\n", ContainerCgroup(CID, UID, "cri-o")),
        # a sub-group inside the container (systemd running in the container, runc's init)
        (
            f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope/init.scope\n",
            ContainerCgroup(CID, UID, "containerd"),
        ),
        # kind / docker-in-docker: the node is itself a docker container; the deepest id wins
        (
            f"0::/system.slice/docker-{CID2}.scope/kubelet.slice/kubelet-kubepods.slice/"
            f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/"
            f"cri-containerd-{CID}.scope\n",
            ContainerCgroup(CID, UID, "containerd"),
        ),
        # cgroup v1, cgroupfs driver: one line per controller
        (
            f"12:memory:/kubepods/burstable/pod{UID}/{CID}\n"
            f"11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n"
            f"1:name=systemd:/kubepods/burstable/pod{UID}/{CID}\n",
            ContainerCgroup(CID, UID, ""),
        ),
        # cgroup v1, systemd driver
        (
            f"11:devices:/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
            f"1:name=systemd:/kubepods.slice/kubepods-burstable.slice/"
            f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
            ContainerCgroup(CID, UID, "containerd"),
        ),
        # hybrid: the unified line stays at "/", the v1 controllers carry the container
        (
            "9:name=systemd:/\n8:pids:/\n"
            f"4:memory:/kubepods/besteffort/pod{UID}/{CID}\n"
            "1:cpu:/\n0::/\n",
            ContainerCgroup(CID, UID, ""),
        ),
        # plain Docker and Podman, no Kubernetes
        (f"0::/system.slice/docker-{CID}.scope\n", ContainerCgroup(CID, "", "docker")),
        (f"12:pids:/docker/{CID}\n0::/\n", ContainerCgroup(CID, "", "")),
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope\n",
            ContainerCgroup(CID, "", "podman"),
        ),
        (f"0::/machine.slice/libpod-conmon-{CID}.scope\n", None),
        # host processes
        ("0::/init.scope\n", None),
        ("0::/system.slice/containerd.service\n", None),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
        ("0::/\n", None),
        # a hex-named group that is not 64 digits long is not a container
        ("4:memory:/process_api/188ad60eb5914f8cacc203d573a50db1\n0::/\n", None),
        # a pod's own slice without a container (the pause process of some runtimes)
        (f"0::/kubepods.slice/kubepods-pod{UID_}.slice\n", None),
        # unreadable inside another cgroup namespace, or garbage
        ("0::/../../\n", None),
        ("", None),
        ("not a cgroup file\n", None),
    ],
)
def test_container_from_cgroup_file(text: str, expected: ContainerCgroup | None) -> None:
    assert container_from_cgroup_file(text) == expected


def test_the_unified_line_wins_over_v1_lines() -> None:
    text = f"4:memory:/kubepods/pod{UID}/{CID2}\n0::/kubepods/pod{UID}/{CID}\n"
    assert container_from_cgroup_file(text) == ContainerCgroup(CID, UID, "")


def test_short_prefixed_ids_are_accepted_but_short_bare_ones_are_not() -> None:
    assert container_from_path("/system.slice/docker-0123456789ab.scope") == ContainerCgroup(
        "0123456789ab", "", "docker"
    )
    assert container_from_path("/kubepods/pod1/0123456789ab") is None


def test_pod_uid_is_only_taken_from_ancestors() -> None:
    assert container_from_path(f"/kubepods/{CID}") == ContainerCgroup(CID, "", "")
