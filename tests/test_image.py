"""The built image, run as daemonset.yaml runs it (tests/daemonset_pod.py reads every flag
from the manifest): its init container's `rover check`, `rover profile` of a host process,
`rover agent` from the manifest's ConfigMap and env against the test backends, SIGTERM
within the grace period, and what the image carries.

Marked `image`: `make image-test` runs them after scripts/build-image.sh (CI does both);
`make test` leaves them out. Without the image they fail, saying how to build it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import daemonset_pod as pod
import pytest
from backend_data import of_task, reported
from fake_k8s import pod_manifest, service_manifest

from rover.capabilities import capability_needs

pytestmark = [pytest.mark.image, pytest.mark.bpf]

CHECK = "check"  # the init container
NOBODY = 65534
NODE = "node-1"
# Image size budget, uncompressed (docs/deploy.md has the breakdown).
MAX_IMAGE_BYTES = 600_000_000
HOST_NETWORK = "--network=host"  # the test backends listen on the host's loopback
# Shorter periods, through the ConfigMap's own placeholders (20 s and 10 s there).
FAST = {"ROVER_PROCESS_DISCOVERY_HEARTBEAT_PERIOD": "2s", "ROVER_PROFILING_CHECK_INTERVAL": "2s"}


@pytest.fixture(scope="module", autouse=True)
def built_image() -> str:
    tag = pod.image()
    if shutil.which("podman") is None:
        pytest.fail(
            "podman is not installed: run scripts/build-image.sh (make image)", pytrace=False
        )
    if pod.podman("image", "exists", tag).returncode != 0:
        pytest.fail(
            f"the image {tag} (daemonset.yaml's) is not built: run scripts/build-image.sh "
            "(make image) first",
            pytrace=False,
        )
    return tag


def run(name: str, tmp_path: Path, *args: str, timeout: float = 180, **kwargs):
    result = pod.podman(*pod.run_args(name, tmp_path, **kwargs), *args, timeout=timeout)
    return result


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


# -- what the image carries --------------------------------------------------------------------


def test_image_size_and_entry_point(built_image):
    (info,) = json.loads(pod.podman("image", "inspect", built_image).stdout)
    assert info["Size"] <= MAX_IMAGE_BYTES, f"{info['Size'] / 1e6:.0f} MB: see docs/deploy.md"
    assert info["Config"]["Entrypoint"] == ["/opt/rover/bin/rover"]
    assert info["Config"]["Cmd"] == ["agent"]


def in_image(image: str, script: str) -> list[str]:
    result = pod.podman("run", "--rm", "--entrypoint=/bin/sh", image, "-c", script)
    assert result.returncode == 0, output(result)
    return result.stdout.split()


def test_image_carries_no_installers_caches_or_tests(built_image):
    site = "/opt/rover/venv/lib/python3.11/site-packages"
    packages = set(in_image(built_image, f"ls {site}"))
    assert {"kubernetes", "numpy", "grpc", "rover"} <= packages
    assert not packages & {"pip", "setuptools", "aiohttp", "yarl"}, packages
    assert not in_image(built_image, f"find {site} -name tests -o -path '*/kubernetes/aio'")
    leftovers = in_image(built_image, "find /var/lib/apt/lists /var/cache/apt /tmp /root -type f")
    assert leftovers == ["/var/cache/apt/archives/lock", "/root/.bashrc", "/root/.profile"]
    assert "rover-install" not in in_image(built_image, "ls /var/cache")  # install.sh's .debs
    headers = "/usr/share/rover/kernel-headers"
    assert {p.rsplit("/", 1)[1] for p in in_image(built_image, f"ls -d {headers}/*/arch/*")} == {
        "x86"
    }
    drivers = "-path '*/include/dt-bindings' -o -path '*/include/drm' -o -path '*/linux/mfd'"
    assert not in_image(built_image, f"find {headers} {drivers}")  # pruned by install.sh


# -- rover check: the init container -----------------------------------------------------------


def test_init_container_check_passes(tmp_path):
    result = run(CHECK, tmp_path)
    assert result.returncode == 0, output(result)
    assert "[FAIL]" not in result.stdout, output(result)
    # the manifest leaves SYS_ADMIN out on purpose: only uprobes (HTTPS plaintext) may warn,
    # saying what to add (docs/deploy.md)
    warnings = [line for line in result.stdout.splitlines() if "[warn]" in line]
    assert all("uprobes" in w and "SYS_ADMIN" in w for w in warnings), output(result)
    assert re.search(r"^\[  ok\] off-cpu profiling ", result.stdout, re.M)  # tracefs too


def shipped_trees() -> list[str]:
    listing = pod.podman(
        "run", "--rm", "--entrypoint=/bin/ls", pod.image(), "/usr/share/rover/kernel-headers"
    )
    return [t for t in listing.stdout.split() if not t.endswith("-common")]


def test_shipped_headers_compile_every_program_on_a_node_without_headers(tmp_path):
    """A node without kernel headers (an empty /lib/modules): each pruned tree the image
    ships builds every program."""
    empty = tmp_path / "no-modules"
    empty.mkdir()
    trees = shipped_trees()
    assert len(trees) == 2, trees  # Debian 12's 6.1 kernel and its 6.12 backport
    for tree in trees:
        result = run(
            CHECK, tmp_path, *pod.container(CHECK)["args"],
            "--kernel-headers", f"/usr/share/rover/kernel-headers/{tree}",
            args=[], extra=[f"--volume={empty}:/host/lib/modules:ro"],
        )  # fmt: skip
        assert result.returncode == 0, output(result)
        (line,) = [ln for ln in result.stdout.splitlines() if "kernel headers" in ln]
        assert line.startswith("[  ok] kernel headers   configured headers "), line
        assert f" at /usr/share/rover/kernel-headers/{tree} + " in line
        programs = re.findall(r"^\[(.{4})\] (?:on|off)-cpu profiling", result.stdout, re.M)
        assert len(programs) >= 2 and set(programs) == {"  ok"}, output(result)


def required_capabilities() -> list[str]:
    """The manifest's capabilities `rover check` requires on this kernel."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    kptr_restrict, paranoid = (
        int(Path(f"/proc/sys/kernel/{name}").read_text())
        for name in ("kptr_restrict", "perf_event_paranoid")
    )
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    needs = capability_needs((major, minor), memlock, (kptr_restrict, paranoid))
    required = {n.name.removeprefix("CAP_") for n in needs if n.required}
    return [c for c in pod.capabilities(CHECK) if c in required]


@pytest.mark.parametrize("missing", required_capabilities())
def test_without_a_required_capability_check_names_it_and_exits_1(missing, tmp_path):
    result = run(CHECK, tmp_path, drop=[missing])
    assert result.returncode == 1, output(result)
    assert re.search(rf"^\[FAIL\] privileges +missing CAP_{missing}: ", result.stdout, re.M), (
        output(result)
    )
    assert "profiling cannot work" in result.stderr


# -- rover profile -----------------------------------------------------------------------------


def test_profile_names_the_functions_of_a_host_process(spawn, workloads, tmp_path):
    """Another user's process on the host, profiled from inside the container."""
    binary = workloads.build("hot_c_fp")
    process = spawn(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", binary])
    out = tmp_path / "out"
    out.mkdir()
    result = run(
        pod.agent_name(), tmp_path,
        "profile", "--pid", str(process.pid), "--duration", "2s", "-q", "--host-root", "/host",
        "-o", "/out/cpu.folded",
        args=[], extra=[f"--volume={out}:/out:rw"],
    )  # fmt: skip
    assert result.returncode == 0, output(result)
    stacks = []  # user frames, root first, and the sample count
    for line in (out / "cpu.folded").read_text().splitlines():
        frames, _, value = line.rpartition(" ")
        stacks.append(([f for f in frames.split(";") if not f.endswith("_[k]")], int(value)))
    total = sum(v for _, v in stacks)
    hot = sum(v for frames, v in stacks if frames[-1:] == [workloads.hot_function("hot_c_fp")])
    assert total >= 20 and hot / total > 0.9, stacks
    assert workloads.call_chain("hot_c_fp") in [frames[-3:] for frames, _ in stacks], stacks


# -- rover agent -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Agent:
    """`rover agent` in the image, as the DaemonSet's container; its log in a file."""

    def __init__(self, tmp_path: Path, fake_oap, fake_k8s, **env: str) -> None:
        self.name = f"rover-test-agent-{uuid.uuid4().hex[:8]}"
        self.health = f"127.0.0.1:{free_port()}"
        kubeconfig = fake_k8s.write_kubeconfig(tmp_path / "kubeconfig")
        env = {
            "ROVER_BACKEND_ADDR": fake_oap.addr,
            # the manifest's $(POD_IP):9100, on a free port: this pod shares the host's network
            "ROVER_HEALTH_ADDRESS": self.health,
            # in place of the in-cluster service account
            "KUBECONFIG": "/etc/kubeconfig",
            **env,
        }
        argv = pod.run_args(
            pod.agent_name(), tmp_path, env=env, container_name=self.name,
            fields=pod.PodFields(node_name=NODE),
            extra=[HOST_NETWORK, f"--volume={kubeconfig}:/etc/kubeconfig:ro"],
        )  # fmt: skip
        self.log_path = tmp_path / "agent.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*pod.PODMAN, *argv], stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.health}{path}", timeout=5) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    def wait_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.proc.poll() is None, f"the agent exited: {self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} in the log: {self.log()[-3000:]}"
            time.sleep(0.2)

    def stop(self, timeout: int) -> tuple[int, float]:
        """SIGTERM as the kubelet sends it, SIGKILL after ``timeout`` s; (exit code, seconds)."""
        started = time.monotonic()
        pod.podman("stop", f"--time={timeout}", self.name, timeout=timeout + 30)
        code = self.proc.wait(timeout=30)
        return code, time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            pod.podman("rm", "--force", self.name)
            self.proc.wait(timeout=30)
        self._log.close()


@pytest.fixture
def start_image_agent(tmp_path, fake_oap, fake_k8s) -> Iterator:
    agents: list[Agent] = []

    def start(**env: str) -> Agent:
        agents.append(Agent(tmp_path, fake_oap, fake_k8s, **env))
        return agents[-1]

    yield start
    for agent in agents:
        agent.close()


@pytest.fixture
def orders_pod(fake_k8s, run_container, workloads, tmp_path):
    """A pod of this node whose container runs hot_c_fp, and the service selecting it."""
    binary = tmp_path / f"orders-{uuid.uuid4().hex[:6]}"
    shutil.copy(workloads.build("hot_c_fp"), binary)
    pod_uid = str(uuid.uuid4())
    app = run_container("app", pod_uid, binary=binary)
    fake_k8s.add_service(service_manifest("orders", namespace="shop", selector={"app": "orders"}))
    fake_k8s.add_pod(
        pod_manifest(
            "orders-7d9f", namespace="shop", node=NODE, labels={"app": "orders"},
            containers=[(app.name, app.status_id)], uid=pod_uid,
        )
    )  # fmt: skip
    return app


def wait_known(fake_oap, service: str):
    """The process of ``service``, once the agent holds its id too (it keeps it alive): a
    task queried before the agent has the id of the report's reply is skipped."""
    fake_oap.wait_for(lambda _: reported(fake_oap, service), timeout=60, what=service)
    (proc,) = reported(fake_oap, service)
    fake_oap.wait_for(
        lambda o: any(
            p.entityMetadata.serviceName == service
            for call in o.calls_of("keepAlive")
            for p in call.request.processes
        ),
        timeout=30,
        what=f"keepAlive of {service}",
    )
    return proc


def hot_share(samples) -> float:
    total = sum(s.dump_count for s in samples)
    return sum(s.dump_count for s in samples if s.user[:1] == ["c_hot_spin"]) / max(total, 1)


def test_agent_reports_a_pod_process_and_runs_an_on_cpu_task(
    start_image_agent, fake_oap, orders_pod
):
    """The ConfigMap's configuration (Kubernetes discovery, JSON logs): the pod's process
    is reported, a task's samples arrive named, the probes answer."""
    agent = start_image_agent(**FAST)
    proc = wait_known(fake_oap, "orders.shop")
    assert proc.kind == "k8sProcess" and proc.pid == orders_pod.pid
    task = fake_oap.add_task(proc.process_id, target_type="ON_CPU", duration_s=4)
    fake_oap.wait_for(
        lambda _: sum(s.dump_count for s in of_task(fake_oap, task.task_id)) >= 20,
        timeout=60,
        what="the task's samples",
    )
    assert hot_share(of_task(fake_oap, task.task_id)) > 0.5
    # the probes' endpoints answer as the kubelet expects
    for probe in ("livenessProbe", "readinessProbe"):
        path = pod.container(pod.agent_name())[probe]["httpGet"]["path"]
        deadline = time.monotonic() + 60
        while agent.get(path) != 200:
            assert time.monotonic() < deadline, f"{path}: {agent.get(path)}"
            time.sleep(0.5)
    log = agent.log()
    assert "Traceback" not in log
    assert all(line.startswith("{") for line in log.splitlines() if line.strip()), log[-2000:]


def test_sigterm_uploads_the_last_interval_within_the_grace_period(
    start_image_agent, fake_oap, orders_pod
):
    # After the task's first flush (a second after it starts) nothing is uploaded before
    # SIGTERM: what arrives then is the final upload's.
    agent = start_image_agent(**{**FAST, "ROVER_PROFILING_FLUSH_INTERVAL": "1m"})
    proc = wait_known(fake_oap, "orders.shop")
    task = fake_oap.add_task(proc.process_id, duration_s=600)
    agent.wait_log("profiling started", timeout=60)
    fake_oap.wait_for(lambda o: of_task(o, task.task_id), timeout=30, what="the first flush")
    first = len(of_task(fake_oap, task.task_id))
    time.sleep(2)
    assert len(of_task(fake_oap, task.task_id)) == first
    grace = pod.grace_period()
    code, took = agent.stop(timeout=grace)
    assert code == 0 and took < grace, (code, took, agent.log()[-3000:])
    assert hot_share(of_task(fake_oap, task.task_id)[first:]) > 0.5
    assert "not delivered to the backend: 0 messages" in agent.log()
