"""The agent's peak resident memory (VmHWM): after start, after one task, after four engines.

Runs the real `rover agent` against the in-repo test backend with the health endpoint
on (so the readiness BPF check runs, as in the DaemonSet), one busy process built with
frame pointers and one without. Printed: VmHWM after start-up, after one ON_CPU task
on the process without frame pointers (auto unwinding loads the eh_frame engine),
and after ON_CPU and OFF_CPU tasks on both (four engines loaded).
Run as root: .venv/bin/python bench/bench_memory.py
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from backend_data import of_task, reported  # noqa: E402
from fake_oap import FakeOAP  # noqa: E402
from workloads.build import build  # noqa: E402


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def wait_data(oap: FakeOAP, task_ids: list[str]) -> None:
    oap.wait_for(lambda o: all(of_task(o, t) for t in task_ids), timeout=120, what="data")
    time.sleep(3)  # a few more flushes


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="rover-bench-memory-"))
    oap = FakeOAP().start()
    busy, agent = [], None
    try:
        for name in ("hot_c_nofp", "hot_c_fp"):
            binary = tmp / f"bench-mem-{name}"
            shutil.copy(build(name), binary)
            busy.append(subprocess.Popen([binary], stdout=subprocess.DEVNULL))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROVER_")}
        env.update(
            ROVER_BACKEND_ADDR=oap.addr,
            ROVER_HEALTH_ADDRESS=free_address(),
            ROVER_PROCESS_DISCOVERY_SCAN_MODE="REGEX",
            ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_MATCH_CMD="bench-mem-",
            ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_SERVICE_NAME="bench-mem",
            ROVER_PROCESS_DISCOVERY_HEARTBEAT_PERIOD="1s",
            ROVER_PROFILING_CHECK_INTERVAL="1s",
            ROVER_PROFILING_FLUSH_INTERVAL="1s",
        )
        log_path = tmp / "agent.log"
        with open(log_path, "wb") as log:
            agent = subprocess.Popen(
                [sys.executable, "-m", "rover.cli", "agent"], env=env, stdout=log, stderr=log
            )
        oap.wait_for(lambda o: len(reported(o, "bench-mem")) == 2, timeout=30, what="processes")
        oap.wait_for(lambda _: "readiness:" in log_path.read_text(), timeout=120, what="ready")
        print(f"VmHWM after start (readiness check done): {peak_mib(agent.pid):.0f} MiB")

        ids = {p.properties["command_line"]: p.process_id for p in reported(oap, "bench-mem")}
        nofp = next(i for cmd, i in ids.items() if "nofp" in cmd)
        fp = next(i for cmd, i in ids.items() if "nofp" not in cmd)
        first = oap.add_task(nofp, target_type="ON_CPU", duration_s=30)
        wait_data(oap, [first.task_id])
        print(f"VmHWM after one ON_CPU task (eh_frame engine): {peak_mib(agent.pid):.0f} MiB")

        more = [
            oap.add_task(fp, target_type="ON_CPU", duration_s=30),
            oap.add_task(fp, target_type="OFF_CPU", duration_s=30),
            oap.add_task(nofp, target_type="OFF_CPU", duration_s=30),
        ]
        wait_data(oap, [more[0].task_id])
        time.sleep(3)  # off-CPU data of a busy loop is sparse; its engines are loaded by now
        print(f"VmHWM with four engines loaded: {peak_mib(agent.pid):.0f} MiB")
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(20)
        for process in busy:
            process.kill()
        oap.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
