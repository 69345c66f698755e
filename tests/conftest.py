"""Shared fixtures: workload binaries, process spawning with guaranteed cleanup, root check.

Markers (`bpf`, `browser`) are registered in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

TESTS_DIR = str(Path(__file__).resolve().parent)
if TESTS_DIR not in sys.path:  # make `processes` and `workloads` importable in any import mode
    sys.path.insert(0, TESTS_DIR)

import processes  # noqa: E402
from browser import browser  # noqa: E402, F401 - the headless Chromium fixture
from containers import cgroups, run_container  # noqa: E402, F401 - simulated containers
from fake_k8s import fake_k8s  # noqa: E402, F401 - a fake Kubernetes API server
from fake_oap import fake_oap  # noqa: E402, F401 - the in-repo test backend
from workloads import build as workload_build  # noqa: E402


class Workloads:
    """Builds workload binaries (cached) and names their hot functions."""

    names: tuple[str, ...] = tuple(workload_build.WORKLOADS)
    on_cpu_names: tuple[str, ...] = tuple(workload_build.HOT_FUNCTION)

    def build(self, name: str) -> Path:
        return workload_build.build(name)

    def hot_function(self, name: str) -> str:
        """Symbolized (demangled, hash-free) name of the on-CPU workload's hot leaf."""
        return workload_build.HOT_FUNCTION[name]

    def call_chain(self, name: str) -> list[str]:
        """User-code frames of the workload's hot stack, outermost first."""
        return list(workload_build.CALL_CHAIN[name])

    @staticmethod
    def fewest_switches(sleeps: int) -> int:
        """The fewest context switches ``sleeps`` short sleeps may make: a sleep whose timer
        fires before the thread reaches the scheduler (its vCPU held up by the host, say)
        returns without leaving the CPU, and has no switch and no blocked time. Allows 5 %."""
        return sleeps - sleeps // 20


@pytest.fixture(scope="session")
def workloads() -> Workloads:
    return Workloads()


SpawnFactory = Callable[..., processes.RunningProcess]
NamespaceSpawnFactory = Callable[..., processes.NamespacedProcess]


@pytest.fixture
def spawn() -> Iterator[SpawnFactory]:
    """`spawn(argv, *, stdin=PIPE, env=None, cwd=None, wait_ready=True, ready_timeout=15.0)`;
    every process is killed at teardown, pass or fail."""
    started: list[processes.RunningProcess] = []

    def start(argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> processes.RunningProcess:
        process = processes.spawn(argv, **kwargs)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture
def spawn_in_mount_namespace() -> Iterator[NamespaceSpawnFactory]:
    """`spawn_in_mount_namespace(binary, args=(), *, stdin=PIPE, env=None, ready_timeout=15.0)`;
    every process is killed (and its host dir removed) at teardown."""
    started: list[processes.NamespacedProcess] = []

    def start(
        binary: str | os.PathLike[str], args: Sequence[str] = (), **kwargs: Any
    ) -> processes.NamespacedProcess:
        process = processes.spawn_in_mount_namespace(binary, args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.stop()


@pytest.fixture(autouse=True)
def _bpf_tests_need_root(request: pytest.FixtureRequest) -> None:
    """BPF tests never skip: without root they fail loudly."""
    if request.node.get_closest_marker("bpf") and os.geteuid() != 0:
        pytest.fail(
            f"test marked 'bpf' needs root (running as uid {os.geteuid()}); "
            "run pytest as root, e.g. `sudo .venv/bin/pytest`",
            pytrace=False,
        )


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """`start_agent(env, *args)` runs `rover agent`; every agent is stopped at teardown."""
    from agent_process import AgentProcess

    started: list[AgentProcess] = []

    def start(env: dict[str, str], *args: str) -> AgentProcess:
        agent = AgentProcess(env, tmp_path / f"agent-{len(started)}.log", args)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(timeout=5)


@pytest.fixture
def walk_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's verifier refuses the CFI walk programs (simulated): bcc's load_func
    raises for them, and programs compile in this process (as when the compile helper
    cannot run) so that the patched bcc is the one compiling."""
    import bcc

    import rover.bpf.program

    def no_helper(*_args: object) -> None:
        raise rover.bpf.program.HelperUnavailable("is off in this test (bcc is patched)")

    load_func = bcc.BPF.load_func

    def refuse_walks(self: Any, name: bytes, *args: Any, **kwargs: Any) -> Any:
        if name.endswith(b"_walk"):
            raise Exception("Failed to load BPF program: Permission denied (simulated)")
        return load_func(self, name, *args, **kwargs)

    monkeypatch.setattr(rover.bpf.program, "compile_in_helper", no_helper)
    monkeypatch.setattr(bcc.BPF, "load_func", refuse_walks)
