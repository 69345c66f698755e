"""The agent's memory: programs are compiled by a helper process, so the agent never
maps the compiler, and a task's first data reaches the backend soon after it starts.

Measured (docs/benchmarks.md, "Agent memory"): the peak stays near the start-up figure
through tasks since compiles moved to the helper (it was ~265 MiB after one task's
compile in the agent). The bounds leave room for another machine's libraries, not for a
compiler's worth.
"""

from __future__ import annotations

import shutil
import socket
import time
import uuid
from pathlib import Path

import pytest
from agent_process import scanner_env
from backend_data import of_task, reported

pytestmark = pytest.mark.bpf

MIB = 1024 * 1024
START_PEAK_BOUND = 150 * MIB
TASK_PEAK_BOUND = 150 * MIB  # a compile in the agent alone would add ~180 MiB
FLUSH_INTERVAL_S = 60  # the task's first data must come long before the first period


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_peak_memory_after_start_and_one_task(fake_oap, start_agent, spawn, workloads, tmp_path):
    # no frame pointers: auto unwinding loads the eh_frame engine, the bigger one
    binary = tmp_path / f"hot_c_nofp-{uuid.uuid4().hex[:8]}"
    shutil.copy(workloads.build("hot_c_nofp"), binary)
    spawn([binary])
    env = scanner_env(
        fake_oap.addr,
        binary.name,
        "memory-svc",
        ROVER_HEALTH_ADDRESS=free_address(),
        ROVER_PROFILING_FLUSH_INTERVAL=f"{FLUSH_INTERVAL_S}s",
    )
    agent = start_agent(env)
    fake_oap.wait_for(lambda o: reported(o, "memory-svc"), timeout=30, what="the process")
    # the readiness check (a child process) has compiled and exited by now on an idle node
    fake_oap.wait_for(lambda _: "readiness: BPF programs load" in agent.log_text(), timeout=60)
    at_start = peak_rss(agent.proc.pid)

    task = fake_oap.add_task(reported(fake_oap, "memory-svc")[0].process_id, duration_s=60)
    fake_oap.wait_for(lambda _: "profiling started" in agent.log_text(), timeout=60)
    started = time.monotonic()
    fake_oap.wait_for(lambda o: of_task(o, task.task_id), timeout=30, what="profiling data")
    first_data_s = time.monotonic() - started
    after_task = peak_rss(agent.proc.pid)
    compiler = compiler_mappings(agent.proc.pid)
    assert agent.running()
    assert at_start < START_PEAK_BOUND, f"peak after start {at_start / MIB:.0f} MiB"
    assert after_task < TASK_PEAK_BOUND, f"peak after one task {after_task / MIB:.0f} MiB"
    assert compiler == set(), "the agent mapped the compiler"
    assert first_data_s < FLUSH_INTERVAL_S / 2, f"first data after {first_data_s:.1f}s"


def compiler_mappings(pid: int) -> set[str]:
    """Files of bcc's compiler (libLLVM, libclang-cpp) mapped by ``pid``, from its smaps."""
    found = set()
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        path = line.split()[-1] if line and not line[0].isupper() else ""
        if "libLLVM" in path or "libclang" in path:
            found.add(path)
    return found
