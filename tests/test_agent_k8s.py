"""`rover agent` with Kubernetes discovery: a pod's container process found through the
API server and its cgroup, reported as a k8s process, profiled by a backend task."""

from __future__ import annotations

import shutil
import uuid

import pytest
from agent_process import FAST_PERIODS
from backend_data import of_task, reported
from fake_k8s import pod_manifest, service_manifest

pytestmark = pytest.mark.bpf

NODE = "node-1"


def k8s_env(fake_oap, fake_k8s, **extra):
    return {
        **FAST_PERIODS,
        "ROVER_BACKEND_ADDR": fake_oap.addr,
        "ROVER_PROCESS_DISCOVERY_KUBERNETES_ACTIVE": "true",
        "ROVER_PROCESS_DISCOVERY_KUBERNETES_NODE_NAME": NODE,
        "KUBECONFIG": str(fake_k8s.write_kubeconfig()),
        **extra,
    }


@pytest.mark.parametrize("runtime", ["containerd", "cri-o", "docker"])
def test_pod_process_reported_and_profiled(
    runtime, fake_oap, fake_k8s, run_container, start_agent, workloads, tmp_path
):
    binary = tmp_path / f"orders-{uuid.uuid4().hex[:6]}"
    shutil.copy(workloads.build("hot_c_fp"), binary)
    pod_uid = str(uuid.uuid4())
    app = run_container("app", pod_uid, runtime=runtime, binary=binary)
    fake_k8s.add_service(service_manifest("orders", namespace="shop", selector={"app": "orders"}))
    fake_k8s.add_pod(
        pod_manifest(
            "orders-7d9f", namespace="shop", node=NODE, labels={"app": "orders"},
            containers=[(app.name, app.status_id)], uid=pod_uid, pod_ip="10.244.1.7",
        )
    )  # fmt: skip
    # a pod of another node: must not be reported
    fake_k8s.add_pod(
        pod_manifest("elsewhere", namespace="shop", node="node-2", labels={"app": "orders"})
    )
    agent = start_agent(k8s_env(fake_oap, fake_k8s))

    fake_oap.wait_for(lambda _: reported(fake_oap, "orders.shop"), timeout=30, what="orders.shop")
    [proc] = reported(fake_oap, "orders.shop")
    assert proc.kind == "k8sProcess" and proc.pid == app.pid
    entity = proc.entity
    assert (entity.layer, entity.instanceName, entity.processName) == (
        "K8S_SERVICE",
        "orders-7d9f",
        binary.name,
    )
    assert list(entity.labels) == ["k8s-service"]
    assert proc.properties["pod_name"] == "orders-7d9f"
    assert proc.properties["container_name"] == "app"
    assert proc.properties["container_ip"] == "10.244.1.7"

    task = fake_oap.add_task(proc.process_id, duration_s=3)
    fake_oap.wait_for(
        lambda _: sum(s.dump_count for s in of_task(fake_oap, task.task_id)) > 100,
        timeout=30,
        what="profiling data",
    )
    data = of_task(fake_oap, task.task_id)
    hot = sum(s.dump_count for s in data if s.user[:1] == ["c_hot_spin"])
    assert hot > 0.5 * sum(s.dump_count for s in data)
    assert {s.process_id for s in data} == {proc.process_id}
    assert agent.running()


def test_broken_watch_then_new_pod_is_found(fake_oap, fake_k8s, run_container, start_agent):
    agent = start_agent(k8s_env(fake_oap, fake_k8s))
    assert fake_k8s.wait_for_watches("pods") and fake_k8s.wait_for_watches("services")
    assert fake_k8s.break_watches() > 0  # the API server drops every watch stream
    pod_uid = str(uuid.uuid4())
    app = run_container("web", pod_uid)
    fake_k8s.add_service(service_manifest("web", namespace="shop", selector={"app": "web"}))
    fake_k8s.add_pod(
        pod_manifest(
            "web-1", namespace="shop", node=NODE, labels={"app": "web"},
            containers=[(app.name, app.status_id)], uid=pod_uid,
        )
    )  # fmt: skip
    fake_oap.wait_for(lambda _: reported(fake_oap, "web.shop"), timeout=30, what="web.shop")
    assert reported(fake_oap, "web.shop")[0].pid == app.pid
    assert agent.running() and "Traceback" not in agent.log_text()
