"""Agent-side CPU cost of continuous profiling with 500 watched processes.

Spawns 500 idle ``sleep`` processes, registers them under a few services whose
policies watch PROCESS_CPU and PROCESS_THREAD_COUNT (one also SYSTEM_LOAD),
then runs real fetch rounds (every 1 s) and check rounds (every 5 s) for
about 30 s with psutil. The backend side is in-process: policies come from a
stub, and meters and trigger reports are built into protobuf messages and
serialized (the wire cost without the network). Reports the CPU time this
process spent per round, per process, and in total as % of one core.
Run (no root needed):
    .venv/bin/python bench/bench_continuous.py [--processes 500] [--seconds 30]
"""

from __future__ import annotations

import argparse
import ctypes
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from rover.backend.continuous import meters_to_proto, report_to_proto
from rover.config import ContinuousConfig
from rover.continuous import (
    CheckItem,
    ContinuousProfiler,
    MeterSample,
    MonitorType,
    ServicePolicy,
    TargetType,
    Trigger,
)
from rover.process.model import DiscoveredProcess, Entity, ProcessKind

SERVICES = ("orders", "payments", "search", "catalog", "gateway")
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the benchmark dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn_sleepers(count: int) -> list[subprocess.Popen[bytes]]:
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            sleepers.append(
                subprocess.Popen(
                    ["sleep", "600"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,  # safe: no threads exist yet
                )
            )
    except BaseException:
        stop_all(sleepers)
        raise
    return sleepers


def stop_all(sleepers: list[subprocess.Popen[bytes]]) -> None:
    for proc in sleepers:
        if proc.poll() is None:
            proc.kill()
    for proc in sleepers:
        proc.wait()


def policies() -> list[ServicePolicy]:
    cpu = CheckItem(TargetType.ON_CPU, MonitorType.PROCESS_CPU, 80.0, period=30, count=20)
    threads = CheckItem(TargetType.OFF_CPU, MonitorType.PROCESS_THREAD_COUNT, 500, 10, 5)
    load = CheckItem(TargetType.ON_CPU, MonitorType.SYSTEM_LOAD, 64.0, period=60, count=40)
    result = [ServicePolicy(s, f"uuid-{s}", (cpu, threads)) for s in SERVICES[1:]]
    result.append(ServicePolicy(SERVICES[0], f"uuid-{SERVICES[0]}", (cpu, threads, load)))
    return result


class InProcessBackend:
    """Policy source, trigger and meter sinks, task starter: protos built, nothing sent."""

    def __init__(self) -> None:
        self.pending = policies()
        self.meters = 0
        self.meter_bytes = 0
        self.triggers = 0

    def fetch(self, known: dict[str, str]) -> list[ServicePolicy]:
        reply, self.pending = self.pending, []
        return reply

    def report(self, trigger: Trigger) -> str:
        report_to_proto(trigger).SerializeToString()
        self.triggers += 1
        return f"task-{self.triggers}"

    def start(self, task_id, target_type, processes, duration_s, rules=None) -> None:
        pass

    def send(self, samples: list[MeterSample]) -> None:
        self.meters += len(samples)
        self.meter_bytes += sum(c.ByteSize() for c in meters_to_proto(samples))


def timed(action: Callable[[], None], into: list[float]) -> None:
    started = time.process_time()
    action()
    into.append(time.process_time() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup

    sleepers = spawn_sleepers(args.processes)
    try:
        registered = {
            f"id-{proc.pid}": DiscoveredProcess(
                pid=proc.pid,
                entity=Entity("GENERAL", SERVICES[i % len(SERVICES)], "host-1", f"sleep-{i}"),
                kind=ProcessKind.HOST,
            )
            for i, proc in enumerate(sleepers)
        }

        class Processes:
            def registered(self) -> dict[str, DiscoveredProcess]:
                return registered

        backend = InProcessBackend()
        config = ContinuousConfig()
        profiler = ContinuousProfiler(
            config,
            policies=backend,
            triggers=backend,
            tasks=backend,
            meters=backend,
            processes=Processes(),
        )
        fetch_cpu: list[float] = []
        check_cpu: list[float] = []
        cpu_at_start = time.process_time()
        wall_start = time.monotonic()
        next_fetch = next_check = wall_start
        while time.monotonic() - wall_start < args.seconds:
            now = time.monotonic()
            if now >= next_check:
                timed(profiler.check_once, check_cpu)
                next_check += config.check_interval
            if now >= next_fetch:
                timed(profiler.fetch_once, fetch_cpu)
                next_fetch += config.fetch_interval
            time.sleep(max(0.0, min(next_fetch, next_check) - time.monotonic()))
        wall = time.monotonic() - wall_start
        total_cpu = time.process_time() - cpu_at_start
    finally:
        stop_all(sleepers)

    n = args.processes
    plan_note = "CPU + threads for every process, load for one service"
    fetch_ms = statistics.median(fetch_cpu[1:]) * 1000  # the first one creates psutil objects
    check_ms = statistics.median(check_cpu[1:]) * 1000
    print(f"## Continuous profiling, {n} watched processes ({plan_note})\n")
    print("| what | result |")
    print("|---|---|")
    print(f"| run | {wall:.1f} s wall, {len(fetch_cpu)} fetch rounds, {len(check_cpu)} checks |")
    print(
        f"| fetch round (median CPU) | {fetch_ms:.1f} ms = {fetch_ms * 1000 / n:.0f} us/process |"
    )
    print(f"| first fetch round (creates psutil.Process objects) | {fetch_cpu[0] * 1000:.1f} ms |")
    print(
        f"| check round incl. policy sync and meters (median CPU) | {check_ms:.1f} ms"
        f" = {check_ms * 1000 / n:.0f} us/process |"
    )
    print(f"| first check round (learns policies) | {check_cpu[0] * 1000:.1f} ms |")
    fetch_share = 100 * sum(fetch_cpu) / wall
    check_share = 100 * sum(check_cpu) / wall
    print(
        f"| CPU in rounds, % of one core | {fetch_share + check_share:.1f} % "
        f"(fetch {fetch_share:.1f} %, check {check_share:.1f} %) |"
    )
    print(f"| whole process CPU over the run, % of one core | {100 * total_cpu / wall:.1f} % |")
    print(f"| meters built | {backend.meters} ({backend.meter_bytes / 1024:.0f} KiB of protobuf) |")
    print(f"| triggers (idle processes: expect 0) | {backend.triggers} |")
    print(f"| vanished processes / read errors | {profiler.stats.vanished_processes} / "
          f"{profiler.stats.read_errors} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
