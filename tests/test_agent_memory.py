"""The agent's peak memory: the DaemonSet limits it to 512Mi, and bcc compiles are its peak.

Measured (docs/benchmarks.md, "Agent peak memory"): ~83 MiB after start and ~265 MiB
after one task's compile; it was 261 and 350 MiB when the readiness check compiled both
programs inside the agent. The bounds leave room for another machine's headers and
libraries, not for a second compile's worth.
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
START_PEAK_BOUND = 150 * MIB  # nothing compiled in the agent before a task needs it
TASK_PEAK_BOUND = 300 * MIB  # one compile in the agent (~180 MiB of it is bcc/LLVM)


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
    env = scanner_env(fake_oap.addr, binary.name, "memory-svc", ROVER_HEALTH_ADDRESS=free_address())
    agent = start_agent(env)
    fake_oap.wait_for(lambda o: reported(o, "memory-svc"), timeout=30, what="the process")
    # the readiness check (a child process) has compiled and exited by now on an idle node
    fake_oap.wait_for(lambda _: "readiness: BPF programs load" in agent.log_text(), timeout=60)
    at_start = peak_rss(agent.proc.pid)

    task = fake_oap.add_task(reported(fake_oap, "memory-svc")[0].process_id, duration_s=5)
    fake_oap.wait_for(lambda o: of_task(o, task.task_id), timeout=60, what="profiling data")
    time.sleep(2)  # a few more flushes
    after_task = peak_rss(agent.proc.pid)
    assert agent.running()
    assert at_start < START_PEAK_BOUND, f"peak after start {at_start / MIB:.0f} MiB"
    assert after_task < TASK_PEAK_BOUND, f"peak after one task {after_task / MIB:.0f} MiB"
