"""Agent overhead while profiling, and time from a task's start to its first upload.

Runs the real `rover agent` against the in-repo test backend (tests/fake_oap.py)
with the shipped defaults (111 Hz on-CPU sampling, flush every 5 s, task
query every 10 s). Two busy processes are profiled on-CPU for 60 s. Printed:
the agent's CPU use as a share of one core while idle (reference, same run)
and while profiling, its resident memory, and the delay between a task's
start time and the first profiling data the backend received for it.
Run as root: .venv/bin/python bench/bench_agent.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
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

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_share(pid: int, seconds: float) -> float:
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rover-bench-agent-"))
    oap = FakeOAP().start()
    busy = []
    agent = None
    try:
        binary = tmp / "bench-busy"
        shutil.copy(build("hot_c_fp"), binary)
        busy = [subprocess.Popen([binary], stdout=subprocess.DEVNULL) for _ in range(2)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROVER_")}
        env.update(
            ROVER_BACKEND_ADDR=oap.addr,
            ROVER_PROCESS_DISCOVERY_SCAN_MODE="REGEX",
            ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_MATCH_CMD="bench-busy",
            ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_SERVICE_NAME="bench",
            ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_PROCESS_NAME="{{.Process.ExeName}}-{{.Process.Pid}}",
            ROVER_PROCESS_DISCOVERY_HEARTBEAT_PERIOD="2s",
        )
        log = open(tmp / "agent.log", "wb")  # noqa: SIM115
        agent = subprocess.Popen(
            [sys.executable, "-m", "rover.cli", "agent"], env=env, stdout=log, stderr=log
        )
        oap.wait_for(lambda o: len(reported(o, "bench")) == 2, timeout=30, what="2 processes")
        idle = cpu_share(agent.pid, 10)

        start_ms = int(time.time() * 1000) + 12_000  # after the next task query (10 s)
        tasks = [
            oap.add_task(p.process_id, duration_s=int(args.seconds) + 10, start_time_ms=start_ms)
            for p in reported(oap, "bench")
        ]
        oap.wait_for(lambda o: of_task(o, tasks[0].task_id), timeout=40, what="first upload")
        first = min(c.time for c in oap.calls_of("collectProfilingData", ok_only=True))
        first_upload_s = first - start_ms / 1000

        profiling = cpu_share(agent.pid, args.seconds)
        rss = rss_mib(agent.pid)
        samples = sum(s.dump_count for t in tasks for s in of_task(oap, t.task_id))
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)
        for p in busy:
            p.kill()
        oap.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"agent CPU, idle (reference):          {idle * 100:6.2f} % of one core")
    print(
        f"agent CPU, profiling 2 busy processes: {profiling * 100:6.2f} % of one core "
        f"(target < 1 %: {'OK' if profiling < 0.01 else 'OVER TARGET'})"
    )
    print(f"  extra for profiling:                 {(profiling - idle) * 100:6.2f} % of one core")
    print(f"agent resident memory:                {rss:6.1f} MiB")
    print(f"samples uploaded for the two tasks:   {samples}")
    print(f"task start time -> first upload:      {first_upload_s:6.2f} s (flush_interval 5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
