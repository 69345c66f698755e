"""The test workloads and process helpers behave as the profiler tests assume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from processes import RunningProcess
from workloads.build import CALL_CHAIN, HOT_FUNCTION, WORKLOADS

ON_CPU = sorted(HOT_FUNCTION)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def symbols(binary: Path) -> set[str]:
    """Demangled names of the binary's symbols (`nm -C`)."""
    out = subprocess.run(["nm", "-C", binary], capture_output=True, text=True, check=True).stdout
    return {parts[2] for line in out.splitlines() if len(parts := line.split(maxsplit=2)) == 3}


def instructions(binary: Path, function: str) -> list[str]:
    """Disassembly of one function, one whitespace-normalized instruction per entry."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", f"--disassemble={function}", binary],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = [m.group(1) for m in re.finditer(r"^\s+[0-9a-f]+:\s+(.+)$", out, re.MULTILINE)]
    assert found, f"no disassembly for {function} in {binary}:\n{out}"
    return [" ".join(insn.split("#")[0].split()) for insn in found]


def is_gone(pid: int) -> bool:
    """True when `pid` no longer runs (absent, or a zombie awaiting its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_builds_with_call_chain_symbols(workloads, name: str) -> None:
    binary = workloads.build(name)
    assert binary.is_file() and os.access(binary, os.X_OK)
    assert workloads.build(name) == binary  # cached second time
    missing = set(CALL_CHAIN[name]) - symbols(binary)
    assert not missing, f"{name} lacks symbols {missing}"


def burns(pid: int, seconds: float, timeout: float = 30.0) -> bool:
    """Whether ``pid`` uses ``seconds`` of CPU time within ``timeout`` (however loaded the
    machine is, a spinning process gets there)."""
    deadline = time.monotonic() + timeout
    while cpu_seconds(pid) <= seconds:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("name", ON_CPU)
def test_on_cpu_workload_spins_then_exits(workloads, spawn, name: str) -> None:
    assert workloads.hot_function(name) in symbols(workloads.build(name))
    process = spawn([workloads.build(name), "1"])  # waits for "ready"
    assert burns(process.pid, 0.3), f"{name} is not burning CPU"
    assert process.proc.wait(timeout=10) == 0


def test_hot_c_frame_pointer_builds(workloads) -> None:
    prologue = ["push %rbp", "mov %rsp,%rbp"]
    assert instructions(workloads.build("hot_c_fp"), "c_hot_spin")[:2] == prologue
    assert instructions(workloads.build("hot_c_fp"), "c_outer")[:2] == prologue
    assert "push %rbp" not in instructions(workloads.build("hot_c_nofp"), "c_hot_spin")
    assert "push %rbp" not in instructions(workloads.build("hot_c_nofp"), "c_outer")


def test_block_c_sleeps_after_go_line(workloads, spawn) -> None:
    process = spawn([workloads.build("block_c"), "5", "10"])
    time.sleep(0.2)
    assert cpu_seconds(process.pid) < 0.1 and process.running  # idle, waiting for "go"
    started = time.monotonic()
    process.send_line("go")
    assert process.read_line(timeout=5) == "done 5"
    elapsed = time.monotonic() - started
    assert 0.045 <= elapsed < 1.0, f"5 x 10 ms sleeps took {elapsed:.3f}s"
    assert process.proc.wait(timeout=5) == 0


def test_mount_namespace_hides_binary_from_host(workloads, spawn_in_mount_namespace) -> None:
    binary = workloads.build("hot_c_fp")
    process = spawn_in_mount_namespace(binary)
    host_dir = Path(process.exe_path).parent
    assert process.exe_path == f"{host_dir}/{binary.name}"
    assert not os.path.exists(process.exe_path)
    assert os.path.exists(f"/proc/{process.pid}/root{process.exe_path}")
    assert os.readlink(f"/proc/{process.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    assert Path(f"/proc/{process.pid}/comm").read_text().strip() == binary.name
    assert process.exe_path in Path(f"/proc/{process.pid}/maps").read_text()
    assert burns(process.pid, 0.1)
    process.stop()
    assert is_gone(process.pid)
    assert not host_dir.exists()


def test_stop_is_idempotent(workloads, spawn) -> None:
    process: RunningProcess = spawn([workloads.build("hot_c_fp")])
    assert process.stop() == -signal.SIGKILL
    assert process.stop() == -signal.SIGKILL
    assert is_gone(process.pid)


INNER_CONFTEST = """
import importlib.util, os, sys

spec = importlib.util.spec_from_file_location("rover_tests_conftest", {conftest!r})
shared = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shared)
workloads, spawn, spawn_in_mount_namespace = (
    shared.workloads, shared.spawn, shared.spawn_in_mount_namespace
)
_bpf_tests_need_root = shared._bpf_tests_need_root
real_geteuid = os.geteuid


def pytest_configure(config):
    config.addinivalue_line("markers", "bpf: test marker")


def pytest_runtest_setup(item):  # runs before fixture setup: pretend to be a normal user
    os.geteuid = (lambda: 1000) if item.name == "test_bpf_as_non_root" else real_geteuid
"""

INNER_TESTS = """
import pytest


def record(process):
    with open({pid_file!r}, "a") as f:
        f.write(f"{{process.pid}}\\n")


def test_passes(workloads, spawn, spawn_in_mount_namespace):
    record(spawn([workloads.build("hot_c_fp"), "60"]))
    record(spawn_in_mount_namespace(workloads.build("hot_c_fp"), ["60"]))


def test_fails(workloads, spawn, spawn_in_mount_namespace):
    record(spawn([workloads.build("hot_c_fp"), "60"]))
    record(spawn_in_mount_namespace(workloads.build("hot_c_fp"), ["60"]))
    assert False, "deliberate failure"


@pytest.mark.bpf
def test_bpf_as_non_root():
    pass  # the autouse root check fails it before this body
"""


def test_fixtures_kill_processes_and_bpf_needs_root(tmp_path: Path) -> None:
    """Run an inner pytest session that spawns via the fixtures, then check the aftermath."""
    pid_file = tmp_path / "pids"
    conftest = Path(__file__).with_name("conftest.py")
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST.format(conftest=str(conftest)))
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(INNER_TESTS.format(pid_file=str(pid_file)))
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-q", tmp_path],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    pids = [int(line) for line in pid_file.read_text().split()]
    try:
        assert len(pids) == 4, result.stdout + result.stderr
        assert all(is_gone(pid) for pid in pids), "fixture left processes running"
        assert "PASSED test_inner.py::test_passes" in result.stdout, result.stdout
        assert "FAILED test_inner.py::test_fails" in result.stdout, result.stdout
        # pytest.fail in the autouse fixture: a setup error, never a skip or a pass
        assert "ERROR test_inner.py::test_bpf_as_non_root" in result.stdout, result.stdout
        assert "needs root" in result.stdout, result.stdout
        assert "1 failed, 1 passed, 1 error" in result.stdout, result.stdout
        assert result.returncode == 1
    finally:
        for pid in pids:
            if not is_gone(pid):
                os.kill(pid, signal.SIGKILL)
