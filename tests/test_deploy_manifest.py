"""daemonset.yaml: valid for Kubernetes (offline schemas) and as tight as documented."""

from __future__ import annotations

import re
import resource
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from rover.capabilities import capability_needs
from rover.config import load_config

MANIFEST = Path(__file__).resolve().parents[1] / "daemonset.yaml"
# The capabilities docs/deploy.md documents for kernels 5.11 and newer.
DOCUMENTED_CAPABILITIES = [
    "BPF",
    "PERFMON",
    "SYS_PTRACE",
    "SYSLOG",
    "DAC_READ_SEARCH",
    "CHECKPOINT_RESTORE",
]
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def one(kind: str) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return one("DaemonSet")["spec"]["template"]["spec"]


def containers() -> list[dict[str, Any]]:
    spec = pod_spec()
    return [*spec["initContainers"], *spec["containers"]]


def agent_container() -> dict[str, Any]:
    (agent,) = pod_spec()["containers"]
    return agent


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def quantity_mib(text: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi)", text)
    assert m, f"unexpected memory quantity {text!r}"
    return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_is_valid_kubernetes(version):
    docs = documents()
    assert [d["kind"] for d in docs] == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
    ]
    for doc in docs:
        # strict: unknown or misspelt fields are errors too
        kubernetes_validate.validate(doc, version, strict=True)


def test_validation_would_catch_a_mistake():
    daemonset = one("DaemonSet")
    daemonset["spec"]["template"]["spec"]["hostPid"] = True  # wrong case
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, "1.30", strict=True)


def test_rbac_is_read_only_on_pods_services_nodes():
    role = one("ClusterRole")
    (rule,) = role["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["pods", "services", "nodes"],
        "verbs": ["get", "list", "watch"],
    }
    binding = one("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = one("ServiceAccount")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert account["metadata"]["namespace"] == one("Namespace")["metadata"]["name"]
    assert pod_spec()["serviceAccountName"] == account["metadata"]["name"]


def test_nothing_is_privileged_and_the_fallback_is_only_a_comment():
    def privileged_values(node: Any) -> list[Any]:
        if isinstance(node, dict):
            found = [v for k, v in node.items() if k == "privileged"]
            return found + [x for v in node.values() for x in privileged_values(v)]
        if isinstance(node, list):
            return [x for v in node for x in privileged_values(v)]
        return []

    values = privileged_values(documents())
    assert values and not any(values)  # stated, and false
    assert re.search(r"^\s*# privileged: true", MANIFEST.read_text(), re.MULTILINE)


def test_capabilities_are_exactly_the_documented_ones():
    for container in containers():
        context = container["securityContext"]
        assert context["capabilities"] == {"add": DOCUMENTED_CAPABILITIES, "drop": ["ALL"]}
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
    # ... and what `rover check` asks for on a current kernel (paranoid 2: kallsyms needs
    # CAP_SYSLOG), so the manifest and the check cannot drift apart.
    needs = capability_needs((6, 18), resource.RLIM_INFINITY, (0, 2))
    assert sorted(n.name for n in needs) == sorted(f"CAP_{c}" for c in DOCUMENTED_CAPABILITIES)


def test_host_access_is_pid_namespace_and_read_only_root():
    spec = pod_spec()
    assert spec["hostPID"] is True
    assert not spec.get("hostNetwork")
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["host-root"]["hostPath"]["path"] == "/"
    assert volumes["tracefs"]["hostPath"]["path"] == "/sys/kernel/tracing"
    for container in containers():
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/host"]["name"] == "host-root"
        assert mounts["/host"]["readOnly"] is True
        assert mounts["/sys/kernel/tracing"]["readOnly"] is True
        assert mounts["/tmp"]["name"] == "tmp"  # the only writable place (read-only root)
        host_paths = [m for m in container["volumeMounts"] if "hostPath" in volumes[m["name"]]]
        assert all(m.get("readOnly") for m in host_paths), host_paths


def test_runs_on_every_node_and_rolls_one_node_at_a_time():
    daemonset = one("DaemonSet")
    assert daemonset["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert pod_spec()["tolerations"] == [{"operator": "Exists"}]


def test_init_container_runs_rover_check_on_the_host_root():
    (init,) = pod_spec()["initContainers"]
    assert init["args"] == ["check", "--host-root", "/host"]
    assert init["image"] == agent_container()["image"]


def test_probes_reach_the_health_endpoint_on_the_pod_ip():
    agent = agent_container()
    env = env_of(agent)
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["ROVER_HEALTH_ADDRESS"]["value"] == "$(POD_IP):9100"
    names = [e["name"] for e in agent["env"]]
    assert names.index("POD_IP") < names.index("ROVER_HEALTH_ADDRESS")  # needed for $(POD_IP)
    assert agent["ports"] == [{"name": "health", "containerPort": 9100, "protocol": "TCP"}]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    annotations = one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9100"


def test_discovery_settings_come_from_the_downward_api():
    env = env_of(agent_container())
    assert env["ROVER_PROCESS_DISCOVERY_KUBERNETES_NODE_NAME"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "spec.nodeName"}
    }
    assert env["ROVER_PROCESS_DISCOVERY_KUBERNETES_ACTIVE"]["value"] == "true"
    assert env["ROVER_HOST_MAPPING"]["value"] == "/host"
    assert env["ROVER_BACKEND_ADDR"]["value"]


def test_resources_cover_the_measured_usage():
    for container in containers():
        res = container["resources"]
        # measured (benchmarks.md, "Agent memory"): the agent under 120 MiB, the compile
        # helper's ~200 MiB peak on top of it in the same cgroup; ~1 s of a core a compile
        assert 120 <= quantity_mib(res["requests"]["memory"]) <= 256
        assert quantity_mib(res["limits"]["memory"]) >= 120 + 200
        assert res["limits"]["cpu"] == "1"
        assert res["requests"]["cpu"]


def test_config_map_is_a_valid_agent_configuration(tmp_path):
    """The mounted file, with the container's environment, is what the agent will run with."""
    config_map = one("ConfigMap")
    agent = agent_container()
    (mount,) = [m for m in agent["volumeMounts"] if m["name"] == "config"]
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (file_name,) = config_map["data"]
    env_spec = env_of(agent)
    assert env_spec["ROVER_CONFIG"]["value"] == f"{mount['mountPath']}/{file_name}"

    config_file = tmp_path / file_name
    config_file.write_text(config_map["data"][file_name])
    # What the kubelet would put in the environment on node "node-a" with pod IP 10.0.0.7.
    downward = {"spec.nodeName": "node-a", "status.podIP": "10.0.0.7"}
    env: dict[str, str] = {}
    for name, item in env_spec.items():
        if "valueFrom" in item:
            env[name] = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[name] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
    config = load_config(str(config_file), env)
    assert config.core.host_root == "/host"
    assert config.core.health.address == "10.0.0.7:9100"
    assert config.core.backend.addr == env["ROVER_BACKEND_ADDR"]
    assert config.process_discovery.kubernetes.active is True
    assert config.process_discovery.kubernetes.node_name == "node-a"
    assert config.profiling.active is True


# docs/deploy.md's table of capabilities per kernel version, as `rover check` applies it.
MEMLOCK_64K = 64 * 1024
NO_SYSLOG = [c for c in DOCUMENTED_CAPABILITIES if c != "SYSLOG"]
KERNEL_TABLE = [
    # kernel, RLIMIT_MEMLOCK hard limit, (kptr_restrict, perf_event_paranoid) -> needs
    ((6, 18), resource.RLIM_INFINITY, (0, 2), [*DOCUMENTED_CAPABILITIES]),
    ((5, 11), MEMLOCK_64K, (0, 2), [*DOCUMENTED_CAPABILITIES]),
    ((5, 10), MEMLOCK_64K, (0, 2), [*DOCUMENTED_CAPABILITIES, "SYS_RESOURCE"]),
    ((5, 10), resource.RLIM_INFINITY, (0, 2), [*DOCUMENTED_CAPABILITIES]),
    ((5, 8), MEMLOCK_64K, (1, 2), ["BPF", "PERFMON", "SYS_PTRACE", "SYSLOG", "DAC_READ_SEARCH",
                                   "SYS_RESOURCE"]),
    ((4, 19), MEMLOCK_64K, (0, 2), ["SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE", "SYSLOG",
                                    "DAC_READ_SEARCH"]),
    # kallsyms open to everyone (paranoid <= 1), or closed to everyone (kptr_restrict 2)
    ((6, 18), resource.RLIM_INFINITY, (0, 1), NO_SYSLOG),
    ((6, 18), resource.RLIM_INFINITY, (2, 2), NO_SYSLOG),
]  # fmt: skip
REQUIRED = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_RESOURCE"}


@pytest.mark.parametrize(("kernel", "memlock", "kallsyms", "expected"), KERNEL_TABLE)
def test_capabilities_per_kernel_version(kernel, memlock, kallsyms, expected):
    needs = capability_needs(kernel, memlock, kallsyms)
    assert sorted(n.name for n in needs) == sorted(f"CAP_{c}" for c in expected)
    assert {n.name for n in needs if n.required} == REQUIRED & {n.name for n in needs}


def test_check_lines_say_what_a_capability_is_for():
    (perfmon,) = [n for n in capability_needs((6, 18), 0, (0, 2)) if n.name == "CAP_PERFMON"]
    assert perfmon.describe({"CAP_BPF"}) == (
        False,
        "missing CAP_PERFMON: needed to attach perf events (on-CPU sampling, the "
        "sched_switch tracepoint)",
    )
    assert perfmon.describe({"CAP_SYS_ADMIN"})[0]  # CAP_SYS_ADMIN still covers it
    assert perfmon.describe({"CAP_PERFMON"}) == (
        True,
        "CAP_PERFMON: attach perf events (on-CPU sampling, the sched_switch tracepoint)",
    )


def test_effective_capabilities_are_read_from_proc_status():
    from rover.capabilities import effective_capabilities

    # CapEff of a container with the manifest's capabilities
    status = "Name:\trover\nCapInh:\t0000000000000000\nCapEff:\t000001c400080004\n"
    assert effective_capabilities(status) == {f"CAP_{c}" for c in DOCUMENTED_CAPABILITIES}
    assert effective_capabilities("Name:\trover\n") == set()
