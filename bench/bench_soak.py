"""Soak: the agent's resident memory over time, with processes coming and going and tasks.

Runs the real `rover agent` (this tree; --revision REV for another, from a temporary git
worktree) against the in-repo test backend, shipped periods (scan 3 s, heartbeat 20 s,
task query 10 s, flush 5 s), health endpoint on, for --hours (default 1/12: 5 minutes;
`--hours 1` for the real hour). Meanwhile:

* --population (500) idle processes (a copy of `sleep` named bench-soak-idle, which the
  regex scanner matches, one process name per pid) are alive at any time: every
  --wave-every (30 s) the oldest --wave-size (100) are killed and as many new ones
  started, so every process is discovered, reported and then gone within minutes;
* every --task-every seconds (180, or a third of the run when that is shorter) an
  ON_CPU and an OFF_CPU task profile a busy process built without frame pointers (its
  eh_frame tables load) for --task-duration (60) seconds, uploads every flush.

Every --sample-every (30) seconds: VmRSS and VmHWM of the agent, its threads and open
file descriptors, the usage and working set of its memory cgroup (one of its own, as in
bench_memory.py; --no-cgroup to skip) and what its /metrics says about processes and
tasks. Printed: the samples as a table, and the least-squares slope of RSS (and cgroup
usage) over time after the first 10 minutes (after the first third of the run when it
is shorter than 30 minutes), in MiB/hour and as a share of the mean; target: flat within
5 % (per hour). Then the /metrics lines naming a cache, if any.

Run as root: .venv/bin/python bench/bench_soak.py [--hours 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench_memory import (
    MIB,
    ROOT,
    Agent,
    Cgroup,
    Revision,
    agent_env,
    fmt,
    free_address,
    metrics_text,
    reference_tree,
    smaps_by_file,
    smaps_rollup,
    snapshot,
)
from fake_oap import FakeOAP, RecordedCall
from workloads.build import build

FLAT_TARGET_PERCENT = 5.0


@dataclass
class Sample:
    t: float  # seconds since the soak began
    rss: float  # MiB
    hwm: float
    usage: float | None
    working: float | None
    threads: int
    fds: int
    bpf_maps: float  # MiB of BPF maps it holds
    discovered: float | None  # rover_processes_discovered
    registered: float | None  # rover_processes_registered
    running: float | None  # rover_tasks_running
    alive: int  # our idle processes alive
    reported: int  # distinct processes the backend has been told of, so far


def metric(text: str, name: str) -> float | None:
    """The sum of every series of ``name`` in a Prometheus text page; None when absent."""
    values = []
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            with contextlib.suppress(ValueError, IndexError):
                values.append(float(line.rsplit(maxsplit=1)[1]))
    return sum(values) if values else None


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx if sxx else 0.0


@contextlib.contextmanager
def revision_tree(revision: str | None) -> Iterator[Revision]:
    if revision is None:
        yield Revision("new", ROOT)
    else:
        with reference_tree(revision) as tree:
            yield tree


class Population:
    """Idle processes the scanner matches, started and killed in waves."""

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.alive: deque[subprocess.Popen[bytes]] = deque()
        self.started = 0

    def start(self, count: int) -> None:
        for _ in range(count):
            self.alive.append(subprocess.Popen([self.binary, "86400"], stdout=subprocess.DEVNULL))
        self.started += count

    def kill_oldest(self, count: int) -> None:
        gone = [self.alive.popleft() for _ in range(min(count, len(self.alive)))]
        for proc in gone:
            proc.kill()
        for proc in gone:
            proc.wait()

    def kill_all(self) -> None:
        self.kill_oldest(len(self.alive))


def drain_calls(oap: FakeOAP) -> list[RecordedCall]:
    """Take the backend's recorded calls and forget them (a long soak records a lot)."""
    with oap._lock:
        calls = list(oap._calls)
        oap._calls.clear()
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=1 / 12)
    parser.add_argument("--sample-every", type=float, default=30.0)
    parser.add_argument("--population", type=int, default=500)
    parser.add_argument("--wave-size", type=int, default=100)
    parser.add_argument("--wave-every", type=float, default=30.0)
    parser.add_argument("--task-every", type=float, default=None)
    parser.add_argument("--task-duration", type=int, default=60)
    parser.add_argument("--revision", default=None, help="soak this git revision instead")
    parser.add_argument("--no-cgroup", action="store_true")
    args = parser.parse_args()
    run_s = args.hours * 3600
    task_every = args.task_every or min(180.0, run_s / 3)
    warmup_s = 600.0 if run_s >= 1800 else run_s / 3

    tmp = Path(tempfile.mkdtemp(prefix="rover-soak-"))
    idle_binary = tmp / "bench-soak-idle"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", idle_binary)
    busy_binary = tmp / "bench-soak-busy"
    shutil.copy(build("hot_c_nofp"), busy_binary)
    population = Population(idle_binary)
    busy = subprocess.Popen([busy_binary], stdout=subprocess.DEVNULL)
    oap = FakeOAP().start()
    cgroup = None if args.no_cgroup else Cgroup.create(f"rover-soak-{os.getpid()}")
    agent = None
    samples: list[Sample] = []
    tasks_added: list[str] = []
    with_data: set[str] = set()
    upload_messages = 0
    health = free_address()
    try:
        population.start(args.population)
        with revision_tree(args.revision) as revision:
            env = agent_env(
                oap.addr,
                health,
                "bench-soak-(idle|busy)",
                "bench-soak",
                ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_PROCESS_NAME=(
                    "{{.Process.ExeName}}-{{.Process.Pid}}"
                ),
            )
            agent = Agent(revision, env, tmp / "agent.log", cgroup)
            busy_id = oap.wait_for(
                lambda o: next(
                    (p.process_id for p in o.processes.values() if p.pid == busy.pid), None
                ),
                timeout=120,
                what="the busy process reported",
            )
            agent.wait_log("readiness:", timeout=180)
            print(
                f"soak: {revision.label} agent, {run_s / 60:.0f} min, {args.population} idle "
                f"processes ({args.wave_size} replaced every {args.wave_every:.0f} s), ON_CPU + "
                f"OFF_CPU tasks of {args.task_duration} s every {task_every:.0f} s; cgroup: "
                f"{cgroup.kind if cgroup else 'none'}",
                flush=True,
            )
            began = time.monotonic()
            next_sample, next_wave, next_task = 0.0, args.wave_every, min(30.0, task_every / 2)
            while True:
                now = time.monotonic() - began
                if now >= next_task:
                    if now < run_s - 20:  # not in the last seconds: a task that never started
                        for target in ("ON_CPU", "OFF_CPU"):
                            task = oap.add_task(
                                busy_id, target_type=target, duration_s=args.task_duration
                            )
                            tasks_added.append(task.task_id)
                    next_task += task_every
                if now >= next_wave:
                    population.kill_oldest(args.wave_size)
                    population.start(args.wave_size)
                    next_wave += args.wave_every
                if now >= next_sample:
                    for call in drain_calls(oap):
                        if call.method == "collectProfilingData" and call.status == "OK":
                            upload_messages += len(call.request)
                            with_data.update(
                                m.task.taskId for m in call.request if m.HasField("task")
                            )
                    page = metrics_text(health)
                    shot = snapshot(agent.pid, cgroup)
                    samples.append(
                        Sample(
                            now,
                            shot.rss,
                            shot.hwm,
                            shot.usage,
                            shot.working,
                            shot.threads,
                            shot.fds,
                            shot.bpf_maps,
                            metric(page, "rover_processes_discovered"),
                            metric(page, "rover_processes_registered"),
                            metric(page, "rover_tasks_running"),
                            len(population.alive),
                            len(oap.processes),
                        )
                    )
                    s = samples[-1]
                    print(
                        f"  {s.t / 60:5.1f} min: RSS {s.rss:6.1f} MiB, cgroup {fmt(s.usage, 1)} "
                        f"MiB, {s.threads} threads, {s.fds} fds, {fmt(s.discovered)} discovered",
                        flush=True,
                    )
                    if now >= run_s:
                        break
                    next_sample += args.sample_every
                time.sleep(
                    max(0.0, min(next_sample, next_wave, next_task) - (time.monotonic() - began))
                )
            cache_lines = [
                line
                for line in metrics_text(health).splitlines()
                if "cache" in line.lower() and not line.startswith("#")
            ]
            by_file = smaps_by_file(agent.pid)
            rollup = smaps_rollup(agent.pid)
            log = agent.log_text()
    finally:
        if agent is not None:
            agent.stop()
        busy.kill()
        busy.wait()
        population.kill_all()
        oap.stop()
        if cgroup is not None:
            cgroup.remove()
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        "\n| t (min) | VmRSS MiB | VmHWM MiB | cgroup usage MiB | cgroup working set MiB "
        "| threads | fds | BPF maps MiB | discovered (agent) | idle processes alive "
        "| reported so far | tasks running |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in samples:
        print(
            f"| {s.t / 60:.1f} | {s.rss:.1f} | {s.hwm:.1f} | {fmt(s.usage, 1)} | "
            f"{fmt(s.working, 1)} | {s.threads} | {s.fds} | {s.bpf_maps:.1f} | "
            f"{fmt(s.discovered)} | {s.alive} | {s.reported:,} | {fmt(s.running)} |"
        )

    late = [s for s in samples if s.t >= warmup_s]
    print(
        f"\nAfter the first {warmup_s / 60:.1f} min ({len(late)} samples, "
        f"{(late[-1].t - late[0].t) / 60 if late else 0:.1f} min):"
    )
    print(
        "\n| series | mean MiB | min - max MiB | slope MiB/hour | slope % of mean per hour "
        "| fitted change over the window |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    verdicts = []
    series = [("VmRSS", [(s.t, s.rss) for s in late])]
    if all(s.usage is not None for s in late):
        series.append(("cgroup usage", [(s.t, s.usage or 0.0) for s in late]))
        series.append(("cgroup working set", [(s.t, s.working or 0.0) for s in late]))
    for name, points in series:
        if len(points) < 2:
            continue
        values = [y for _, y in points]
        mean = sum(values) / len(values)
        per_hour = slope([(t / 3600, y) for t, y in points])
        percent = per_hour / mean * 100
        change = per_hour * (points[-1][0] - points[0][0]) / 3600 / mean * 100
        print(
            f"| {name} | {mean:.1f} | {min(values):.1f} - {max(values):.1f} | {per_hour:+.1f} "
            f"| {percent:+.1f} % | {change:+.2f} % |"
        )
        verdicts.append((name, abs(percent) <= FLAT_TARGET_PERCENT))
    for name, ok in verdicts:
        print(
            f"Target: {name} flat within {FLAT_TARGET_PERCENT:.0f} % per hour after the warm-up "
            f"-> {'met' if ok else 'NOT met'}"
        )
    if late and late[-1].t - late[0].t < 1800:
        print(
            "(a window under 30 min: the per-hour slope projects a few samples, in which a "
            "task starting or ending moves RSS by a MiB or two; --hours 1 judges the target)"
        )

    started = sum(log.count(f"task {t}: profiling started") for t in tasks_added)
    finished = sum(log.count(f"task {t}: finished") for t in tasks_added)
    errors = [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]
    print(
        f"\nIdle processes started: {population.started:,} (plus the busy one); processes the "
        f"backend was told of: {samples[-1].reported if samples else 0:,}. Tasks: "
        f"{len(tasks_added)} added, {started} started, {finished} finished, "
        f"{len(with_data & set(tasks_added))} with data at the backend "
        f"({upload_messages:,} profiling messages). Agent log: {len(errors)} ERROR lines"
    )
    for line in errors[:5]:
        print(f"    {line}")
    print("\nLargest mappings at the end (smaps Rss, MiB):")
    for name, size in sorted(by_file.items(), key=lambda kv: -kv[1])[:8]:
        print(f"    {name}: {size / MIB:.1f}")
    print(
        "    smaps_rollup: "
        + ", ".join(f"{k} {rollup.get(k, 0) / MIB:.1f}" for k in ("Rss", "Anonymous", "Pss"))
    )
    print("\n/metrics lines naming a cache (at the end):")
    print("\n".join(f"    {line}" for line in cache_lines) if cache_lines else "    none exposed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
