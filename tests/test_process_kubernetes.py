"""The Kubernetes finder end to end: a fake API server, real processes in real cgroups.

Containers are simulated the way a kubelet lays them out: cgroup directories named like
containerd / CRI-O / Docker with the systemd or cgroupfs driver, with a real process moved in
(by writing its pid to ``cgroup.procs``). Directories are removed at teardown, pass or fail,
after moving anything left in them back to the root cgroup.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from containers import (
    SLEEP,
    ContainerCgroups,
    cgroup_path,
    mounted_cgroup,
    new_container_id,
    require_root,
)
from fake_k8s import FakeKubernetes, fake_k8s, pod_manifest, service_manifest  # noqa: F401
from kubernetes.client.exceptions import ApiException

from rover.config import AnalyzerConfig, KubernetesConfig
from rover.hostfs import HostFS
from rover.process.agent_host import AgentHost
from rover.process.finder import FinderConfigError, ProcessFinder
from rover.process.kubernetes.client import KubernetesConnectError
from rover.process.kubernetes.finder import KubernetesFinder, WatchSettings
from rover.process.kubernetes.model import OwnerRef, PodInfo
from rover.process.kubernetes.owner import OwnerResolver
from rover.process.model import DiscoveredProcess, ProcessKind
from rover.process.template import TemplateError

NODE = "node-1"
HOST_IP = "192.0.2.10"
FAST_RETRY = WatchSettings(retry_initial_s=0.05, retry_max_s=0.5)
T = TypeVar("T")


def analyzer(service_name: str, *filters: str, active: bool = True, **names: Any) -> AnalyzerConfig:
    """A test analyzer: layer GENERAL, Rover's usual instance and process names."""
    return AnalyzerConfig(
        active=active,
        filters=filters,
        layer="GENERAL",
        service_name=service_name,
        instance_name=names.pop("instance_name", "{{.Pod.Name}}"),
        process_name=names.pop("process_name", "{{.Process.ExeName}}"),
        **names,
    )


# --- simulated containers ------------------------------------------------------------------------
# These tests never skip: a machine that cannot run them fails them, saying what is missing.


@pytest.fixture
def cgroup1_pids_root(tmp_path: Path) -> Iterator[Path]:
    """A cgroup v1 ``pids`` hierarchy: the mounted one, else one mounted here for the test."""
    require_root()
    root = mounted_cgroup("cgroup", "pids")
    if root is not None:
        yield root
        return
    mount_point = tmp_path / "cgroup-v1-pids"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "cgroup", "-o", "pids", "cgroup", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(
            "no cgroup v1 pids hierarchy is mounted and mounting one failed "
            f"({mounted.stderr.strip() or mounted.returncode}); this test needs the pids "
            "controller free for v1, i.e. a hybrid cgroup host (or boot with "
            "systemd.unified_cgroup_hierarchy=0)",
            pytrace=False,
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


# --- the finder ----------------------------------------------------------------------------------


@pytest.fixture
def make_finder(fake_k8s: FakeKubernetes) -> Iterator[Callable[..., KubernetesFinder]]:  # noqa: F811
    started: list[KubernetesFinder] = []

    def make(
        namespaces: tuple[str, ...] = (),
        analyzers: list[AnalyzerConfig] | None = None,
        cluster_name: str = "",
        hostfs: HostFS | None = None,
        **kwargs: Any,
    ) -> KubernetesFinder:
        config = KubernetesConfig(node_name=NODE, namespaces=namespaces)
        if analyzers is not None:
            config = dataclasses.replace(config, analyzers=tuple(analyzers))
        finder = KubernetesFinder(
            config,
            agent=AgentHost("rover-test", host_name="node-1"),
            hostfs=hostfs,
            api_client=kwargs.pop("api_client", None) or fake_k8s.api_client(),
            cluster_name=cluster_name,
            host_ip=HOST_IP,
            watch=FAST_RETRY,
            **kwargs,
        )
        started.append(finder)
        finder.start()
        assert finder.wait_synced(10), "the finder never listed pods and services"
        return finder

    yield make
    for finder in started:
        finder.stop()


def wait_for(
    produce: Callable[[], T], condition: Callable[[T], bool], timeout_s: float = 10.0
) -> T:
    """Poll until ``condition(produce())`` holds; return the last value (asserting on timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = produce()
        if condition(value):
            return value
        assert time.monotonic() < deadline, f"condition not met in {timeout_s}s; last: {value}"
        time.sleep(0.05)


def pod_with_service(fake_k8s: FakeKubernetes, run_container) -> Any:  # noqa: F811
    """A container process in pod ``p`` (label app=a) selected by service ``svc``."""
    uid = str(uuid.uuid4())
    app = run_container("app", uid)
    fake_k8s.add_service(service_manifest("svc", selector={"app": "a"}))
    fake_k8s.add_pod(
        pod_manifest("p", uid=uid, labels={"app": "a"}, containers=[("app", app.status_id)])
    )
    return app


def by_pid(found: list[DiscoveredProcess], pid: int) -> list[DiscoveredProcess]:
    return [p for p in found if p.pid == pid]


def entity_tuples(
    found: list[DiscoveredProcess],
) -> set[tuple[str, str, str, str, tuple[str, ...]]]:
    return {
        (
            p.entity.layer,
            p.entity.service_name,
            p.entity.instance_name,
            p.entity.process_name,
            p.entity.labels,
        )
        for p in found
    }


def start_time(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
@pytest.mark.parametrize("runtime", ["containerd", "cri-o", "docker"])
def test_a_pod_selected_by_a_service_is_reported_under_k8s_service(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    run_container,
    runtime: str,
    driver: str,
) -> None:
    uid = str(uuid.uuid4())
    app = run_container("web", uid, runtime, driver)
    fake_k8s.add_service(service_manifest("web", namespace="shop", selector={"app": "web"}))
    fake_k8s.add_pod(
        pod_manifest(
            "web-5d8f7-abcde",
            namespace="shop",
            node=NODE,
            uid=uid,
            labels={"app": "web"},
            containers=[(app.name, app.status_id)],
            pod_ip="10.244.3.4",
        )
    )
    finder = make_finder()
    assert isinstance(finder, ProcessFinder)
    found = wait_for(finder.scan, lambda f: bool(by_pid(f, app.pid)))
    [process] = found
    assert process.kind is ProcessKind.KUBERNETES
    assert process.start_time == start_time(app.pid)
    assert entity_tuples(found) == {
        ("K8S_SERVICE", "web.shop", "web-5d8f7-abcde", "sleep", ("k8s-service",))
    }
    assert process.properties == {
        "host_ip": HOST_IP,
        "container_ip": "10.244.3.4",
        "container_name": "web",
        "pod_name": "web-5d8f7-abcde",
        "pid": str(app.pid),
        "command_line": f"{SLEEP} 1000",
        "support_ebpf_profiling": "true",
    }


def test_istio_sidecar_and_application_processes(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    run_container,
    tmp_path: Path,
) -> None:
    envoy_binary = tmp_path / "envoy"
    shutil.copy(SLEEP, envoy_binary)
    uid = str(uuid.uuid4())
    app = run_container("reviews", uid)
    envoy = run_container("istio-proxy", uid, binary=envoy_binary)
    fake_k8s.add_service(
        service_manifest("reviews", namespace="bookinfo", selector={"app": "reviews"})
    )
    fake_k8s.add_pod(
        pod_manifest(
            "reviews-v2-0",
            namespace="bookinfo",
            uid=uid,
            labels={"app": "reviews", "service.istio.io/canonical-name": "reviews-canonical"},
            containers=[(app.name, app.status_id), (envoy.name, envoy.status_id)],
        )
    )
    finder = make_finder(cluster_name="prod")
    found = wait_for(finder.scan, lambda f: len(f) == 4)
    assert entity_tuples(by_pid(found, app.pid)) == {
        (
            "MESH",
            "prod::reviews-canonical.bookinfo",
            "reviews-v2-0",
            "sleep",
            ("mesh-application",),
        ),
        ("K8S_SERVICE", "prod::reviews.bookinfo", "reviews-v2-0", "sleep", ("k8s-service",)),
    }
    assert entity_tuples(by_pid(found, envoy.pid)) == {
        ("MESH_DP", "prod::reviews-canonical.bookinfo", "reviews-v2-0", "envoy", ("mesh-envoy",)),
        ("K8S_SERVICE", "prod::reviews.bookinfo", "reviews-v2-0", "envoy", ("k8s-service",)),
    }
    assert {p.properties["container_name"] for p in by_pid(found, envoy.pid)} == {"istio-proxy"}


def test_a_service_name_with_a_cluster_already_keeps_it(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    run_container,
) -> None:
    uid = str(uuid.uuid4())
    app = run_container("main", uid)
    fake_k8s.add_pod(pod_manifest("p", uid=uid, containers=[(app.name, app.status_id)]))
    analyzers = [
        analyzer("other::{{.Pod.Name}}", labels=("x",)),
        analyzer("{{.Pod.Name}}-plain", labels=("y",)),
        analyzer("inactive", active=False, labels=("z",)),
    ]
    finder = make_finder(analyzers=analyzers, cluster_name="prod")
    found = wait_for(finder.scan, lambda f: len(f) == 2)
    assert {p.entity.service_name for p in found} == {"other::p", "prod::p-plain"}


def test_pods_of_other_nodes_and_namespaces_are_ignored(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    run_container,
) -> None:
    selected, elsewhere, other_ns = (str(uuid.uuid4()) for _ in range(3))
    mine = run_container("app", selected)
    remote = run_container("app", elsewhere)
    foreign = run_container("app", other_ns)
    for name, uid, container, node, namespace in [
        ("mine", selected, mine, NODE, "team-a"),
        ("remote", elsewhere, remote, "node-2", "team-a"),
        ("foreign", other_ns, foreign, NODE, "team-b"),
    ]:
        fake_k8s.add_service(
            service_manifest(f"svc-{name}", namespace=namespace, selector={"app": name})
        )
        fake_k8s.add_pod(
            pod_manifest(
                name,
                namespace=namespace,
                node=node,
                uid=uid,
                labels={"app": name},
                containers=[(container.name, container.status_id)],
            )
        )
    finder = make_finder(namespaces=("team-a", " team-x"))
    found = wait_for(finder.scan, lambda f: bool(by_pid(f, mine.pid)))
    time.sleep(0.3)  # give a wrongly delivered pod time to show up
    assert {p.pid for p in finder.scan()} == {mine.pid}
    assert found[0].entity.service_name == "svc-mine.team-a"


def test_a_deleted_pod_leaves_the_scan(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    run_container,
) -> None:
    app = pod_with_service(fake_k8s, run_container)
    finder = make_finder()
    wait_for(finder.scan, lambda f: bool(by_pid(f, app.pid)))
    fake_k8s.delete_pod("default", "p")
    wait_for(finder.scan, lambda f: f == [])


def test_services_are_watched_too(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    run_container,
) -> None:
    uid = str(uuid.uuid4())
    app = run_container("app", uid)
    fake_k8s.add_pod(
        pod_manifest("p", uid=uid, labels={"app": "a"}, containers=[("app", app.status_id)])
    )
    finder = make_finder()
    assert finder.scan() == []  # no service selects the pod: no default analyzer applies
    fake_k8s.add_service(service_manifest("late", selector={"app": "a"}))
    found = wait_for(finder.scan, lambda f: len(f) == 1)
    assert found[0].entity.service_name == "late.default"
    fake_k8s.modify_service("default", "late", lambda s: s["spec"].update(selector={"app": "b"}))
    wait_for(finder.scan, lambda f: f == [])


def test_a_broken_watch_is_relisted_and_keeps_working(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    run_container,
) -> None:
    first_uid, second_uid = str(uuid.uuid4()), str(uuid.uuid4())
    first = run_container("app", first_uid)
    second = run_container("app", second_uid, "cri-o", "cgroupfs")
    fake_k8s.add_service(service_manifest("svc", selector={"app": "a"}))
    fake_k8s.add_pod(
        pod_manifest(
            "one", uid=first_uid, labels={"app": "a"}, containers=[("app", first.status_id)]
        )
    )
    finder = make_finder()
    wait_for(finder.scan, lambda f: {p.pid for p in f} == {first.pid})
    assert fake_k8s.wait_for_watches("pods")
    lists_before = fake_k8s.request_count("pods", "list")

    assert fake_k8s.break_watches() >= 1
    fake_k8s.delete_pod("default", "one")
    fake_k8s.add_pod(
        pod_manifest(
            "two", uid=second_uid, labels={"app": "a"}, containers=[("app", second.status_id)]
        )
    )
    wait_for(finder.scan, lambda f: {p.pid for p in f} == {second.pid})
    assert fake_k8s.request_count("pods", "list") > lists_before
    assert fake_k8s.wait_for_watches("pods")  # and it watches again


def test_an_expired_watch_410_is_relisted_and_keeps_working(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    run_container,
) -> None:
    uid = str(uuid.uuid4())
    app = run_container("app", uid)
    fake_k8s.add_service(service_manifest("svc", selector={"app": "a"}))
    finder = make_finder()
    assert fake_k8s.wait_for_watches("pods")
    lists_before = fake_k8s.request_count("pods", "list")

    assert fake_k8s.expire_watches() >= 1
    fake_k8s.add_pod(
        pod_manifest("p", uid=uid, labels={"app": "a"}, containers=[("app", app.status_id)])
    )
    wait_for(finder.scan, lambda f: {p.pid for p in f} == {app.pid})
    assert fake_k8s.request_count("pods", "list") > lists_before


@pytest.mark.parametrize("down", [None, "services"], ids=["everything", "services"])
def test_no_processes_until_everything_is_listed(
    fake_k8s: FakeKubernetes,  # noqa: F811
    run_container,
    down: str | None,
) -> None:
    """The finder survives an API server that is down, and answers nothing until pods and
    services are both listed: pods without their services would be named wrongly."""
    app = pod_with_service(fake_k8s, run_container)
    fake_k8s.set_unavailable(resource=down)
    finder = KubernetesFinder(
        KubernetesConfig(
            node_name=NODE, analyzers=(analyzer("{{.Pod.Name}}.{{.Pod.ServiceName}}"),)
        ),
        agent=AgentHost("rover-test"),
        api_client=fake_k8s.api_client(),
        watch=FAST_RETRY,
    )
    finder.start()
    try:
        if down == "services":
            assert fake_k8s.wait_for_watches("pods")  # pods are listed and watched
        assert not finder.wait_synced(0.5)
        assert not finder.synced
        assert finder.scan() == []
        fake_k8s.set_unavailable(False, resource=down)  # the server comes back
        assert finder.wait_synced(10)
        found = wait_for(finder.scan, lambda f: {p.pid for p in f} == {app.pid})
        assert [p.entity.service_name for p in found] == ["p.svc"]
    finally:
        finder.stop()


class VanishingHostFS(HostFS):
    """Kills ``victim`` when the scan starts reading it, as if it exited at that moment."""

    def __init__(self, victim: Any) -> None:
        super().__init__("/")
        self.victim = victim

    def read_bytes(self, pid: int, *parts: str) -> bytes:
        if pid == self.victim.pid and parts == ("cmdline",) and self.victim.running:
            self.victim.stop()
        return super().read_bytes(pid, *parts)


def test_a_process_vanishing_mid_scan(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    spawn,
    cgroups: ContainerCgroups,
) -> None:
    uid = str(uuid.uuid4())
    container_id = new_container_id()
    survivor = spawn([SLEEP, "1000"], wait_ready=False)
    victim = spawn([SLEEP, "1001"], wait_ready=False)
    for child in (survivor, victim):
        cgroups.enter(child.pid, cgroup_path("containerd", "systemd", uid, container_id))
    fake_k8s.add_service(service_manifest("svc", selector={"app": "a"}))
    fake_k8s.add_pod(
        pod_manifest(
            "p", uid=uid, labels={"app": "a"}, containers=[("app", f"containerd://{container_id}")]
        )
    )
    finder = make_finder(hostfs=VanishingHostFS(victim))
    found = wait_for(finder.scan, lambda f: bool(f))
    assert {p.pid for p in found} == {survivor.pid}
    assert finder.last_scan_vanished >= 1


def test_cgroup_v1_hierarchies_are_understood(
    cgroup1_pids_root: Path,  # before ``cgroups``: torn down after the cgroups are removed
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    spawn,
    cgroups: ContainerCgroups,
) -> None:
    """A hybrid host: the container lives in a v1 controller, the v2 line stays at "/"."""
    root = cgroup1_pids_root
    uid, container_id = str(uuid.uuid4()), new_container_id()
    child = spawn([SLEEP, "1000"], wait_ready=False)
    cgroups.enter(child.pid, cgroup_path("containerd", "cgroupfs", uid, container_id), root)
    assert (
        f"pids:/kubepods/burstable/pod{uid}/{container_id}"
        in Path(f"/proc/{child.pid}/cgroup").read_text()
    )
    fake_k8s.add_service(service_manifest("svc", selector={"app": "a"}))
    fake_k8s.add_pod(
        pod_manifest(
            "p", uid=uid, labels={"app": "a"}, containers=[("app", f"docker://{container_id}")]
        )
    )
    finder = make_finder()
    wait_for(finder.scan, lambda f: {p.pid for p in f} == {child.pid})


def test_owner_name_follows_controller_references(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    run_container,
) -> None:
    uid = str(uuid.uuid4())
    app = run_container("app", uid)
    fake_k8s.put_object(
        "/apis/apps/v1/namespaces/default/replicasets/web-5d8f7",
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "web-5d8f7",
                "namespace": "default",
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "web",
                        "uid": "d1",
                        "controller": True,
                    }
                ],
            },
        },
    )
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web-5d8f7",
        "uid": "r1",
        "controller": True,
    }
    fake_k8s.add_pod(
        pod_manifest(
            "web-5d8f7-x", uid=uid, containers=[("app", app.status_id)], owner_references=[owner]
        )
    )
    analyzers = [
        analyzer(
            '{{.Pod.OwnerName "Service,Deployment"}}/{{.Pod.OwnerName "replicaset"}}',
            '.Pod.HasOwnerName "Deployment"',
        ),
        analyzer("never", '.Pod.HasOwnerName "StatefulSet"'),
    ]
    finder = make_finder(analyzers=analyzers)
    [process] = wait_for(finder.scan, lambda f: bool(f))
    assert process.entity.service_name == "web/web-5d8f7"
    owners = finder.caches()[0]
    assert owners.name == "kubernetes_owners" and owners.entries >= 1
    # The pod goes: so does what was read about its owners.
    fake_k8s.delete_pod("default", "web-5d8f7-x")
    wait_for(finder.scan, lambda f: f == [])
    assert finder.caches()[0].entries == 0 and finder.caches()[0].bytes == 0


def test_a_failing_analyzer_does_not_hide_the_others(
    fake_k8s: FakeKubernetes,  # noqa: F811
    make_finder,
    run_container,
    caplog,
) -> None:
    uid = str(uuid.uuid4())
    app = run_container("app", uid)
    fake_k8s.add_pod(pod_manifest("p", uid=uid, containers=[("app", app.status_id)]))
    analyzers = [
        analyzer('{{.Container.EnvValue "MISSING"}}'),
        analyzer('{{.Pod.LabelValue "none" ""}}'),  # renders empty
        analyzer("ok-{{.Pod.Name}}"),
    ]
    finder = make_finder(analyzers=analyzers)
    with caplog.at_level(logging.WARNING, logger="rover.process.kubernetes.finder"):
        found = wait_for(finder.scan, lambda f: bool(f))
    assert [p.entity.service_name for p in found] == ["ok-p"]
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert (
        "MISSING" in messages and "kubernetes.analyzers[1].service_name rendered empty" in messages
    )


def test_the_client_is_configured_from_kubeconfig(
    fake_k8s: FakeKubernetes,  # noqa: F811
    run_container,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = pod_with_service(fake_k8s, run_container)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(fake_k8s.write_kubeconfig()))
    finder = KubernetesFinder(
        KubernetesConfig(node_name=NODE), agent=AgentHost("t"), watch=FAST_RETRY
    )
    finder.start()
    try:
        assert finder.wait_synced(10)
        wait_for(finder.scan, lambda f: {p.pid for p in f} == {app.pid})
    finally:
        finder.stop()


def test_client_configuration_errors_say_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(
        KubernetesConnectError, match="set KUBECONFIG or run the agent in the cluster"
    ):
        KubernetesFinder(KubernetesConfig(node_name=NODE), agent=AgentHost("t"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubernetesConnectError, match="service account"):
        KubernetesFinder(KubernetesConfig(node_name=NODE), agent=AgentHost("t"))


def test_configuration_errors_at_start_up(fake_k8s: FakeKubernetes) -> None:  # noqa: F811
    client = fake_k8s.api_client()
    with pytest.raises(FinderConfigError, match="node_name must be set"):
        KubernetesFinder(KubernetesConfig(node_name=" "), agent=AgentHost("t"), api_client=client)
    bad = KubernetesConfig(node_name=NODE, analyzers=(analyzer("s", "eq .Pod.Name"),))
    with pytest.raises(TemplateError, match=r"kubernetes\.analyzers\[0\]\.filters\[0\]"):
        KubernetesFinder(bad, agent=AgentHost("t"), api_client=client)


def test_fake_server_speaks_the_real_client(fake_k8s: FakeKubernetes) -> None:  # noqa: F811
    """The fake honours selectors, single GETs and errors the way the client expects."""
    from kubernetes import client as k8s

    api = k8s.CoreV1Api(fake_k8s.api_client())
    fake_k8s.add_pod(pod_manifest("a", node=NODE, labels={"tier": "web"}))
    fake_k8s.add_pod(pod_manifest("b", node="node-2", labels={"tier": "db"}))
    fake_k8s.add_pod(pod_manifest("c", namespace="other", node=NODE))
    names = lambda pods: sorted(p.metadata.name for p in pods.items)  # noqa: E731
    assert names(api.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE}")) == [
        "a",
        "c",
    ]
    assert names(api.list_pod_for_all_namespaces(label_selector="tier in (db)")) == ["b"]
    assert names(api.list_namespaced_pod("other")) == ["c"]
    spec = api.read_namespaced_pod("b", "default").spec
    assert spec is not None and spec.node_name == "node-2"
    with pytest.raises(ApiException) as caught:
        api.read_namespaced_pod("zzz", "default")
    assert caught.value.status == 404


# -- the owner cache, without a server -----------------------------------------------------


class FakeOwnerApi:
    """The two ApiClient calls OwnerResolver makes, answering from ``objects`` by path."""

    def __init__(self, objects: dict[str, dict[str, Any]]) -> None:
        self.objects = objects
        self.gets: list[str] = []

    def param_serialize(self, method: str, path: str, **_: Any) -> tuple[Any, ...]:
        return method, path, {}, None, None

    def call_api(self, method: str, url: str, headers: Any, **_: Any) -> Any:
        self.gets.append(url)
        body = json.dumps(self.objects.get(url, {})).encode()
        return types.SimpleNamespace(status=200 if url in self.objects else 404, read=lambda: body)


def _replica_set(name: str, deployment: str) -> dict[str, Any]:
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "controller": True}
    return {"metadata": {"name": name, "ownerReferences": [owner]}}


def _pod_of(replica_set: str) -> PodInfo:
    owner = OwnerRef("apps/v1", "ReplicaSet", replica_set, True)
    return PodInfo("uid", "default", f"{replica_set}-x", "node-1", "10.0.0.1", owners=(owner,))


def test_owners_of_gone_pods_are_forgotten_and_the_cache_keeps_its_budget() -> None:
    rollouts = [f"web-{i:05d}" for i in range(40)]
    api = FakeOwnerApi(
        {
            f"/apis/apps/v1/namespaces/default/replicasets/{rs}": _replica_set(rs, "web")
            for rs in rollouts
        }
    )
    resolver = OwnerResolver(api, budget_bytes=10 << 10)
    for rs in rollouts:  # a rollout a day: each pod's ReplicaSet is read once
        assert resolver.owner_of_kind(_pod_of(rs), "Deployment") == "web"
    entry = resolver.stats()
    assert entry.name == "kubernetes_owners"
    assert entry.bytes <= 10 << 10 and entry.evictions > 0 and entry.entries < 40
    assert entry.entries + entry.evictions == 40
    # An evicted owner is read again, with the same answer.
    gets = len(api.gets)
    assert resolver.owner_of_kind(_pod_of(rollouts[0]), "Deployment") == "web"
    assert len(api.gets) == gets + 1
    # Only the last pod is still there: everything else is forgotten.
    resolver.retain([_pod_of(rollouts[-1])])
    assert resolver.stats().entries == 1
    resolver.retain([])
    assert resolver.stats().entries == 0 and resolver.stats().bytes == 0
