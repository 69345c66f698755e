"""Network profiling overhead: nginx under load with a NETWORK task, and unwatched processes.

Two parts, both by default (``--nginx`` or ``--unwatched`` for one):

1. nginx (Debian's, one process, the static 4 KiB page of tests/nginx_server.py) on
   loopback under ``wrk -t1 -c16``. One real ``rover agent`` runs against the in-repo test
   backend (tests/fake_oap.py) for the whole part, discovering nginx with the regex
   scanner; its health endpoint is on, so the network counters are read from /metrics.
   Rounds alternate (the order flips every round) between:

   - unprofiled: no task; the agent runs and idles (discovery, heartbeats, task queries);
   - profiled: a NETWORK task over nginx was added to the backend; once the agent logs
     "network profiling started" (program compiled, loaded, attached, nginx watched) wrk
     runs; the task's duration ends it a few seconds after wrk, and the round is over
     when the agent logs "network monitor stopped" (the last report sent, the program
     detached).

   Why one agent with tasks that start and end rather than an agent started per round:
   both conditions then have the same processes running (the agent idling costs the same
   in both), and the only difference is what a NETWORK task adds: the program attached to
   the syscall tracepoints (which every process on the host pays for, wrk included), the
   events of the watched nginx, and the agent's analyzer and reports. Starting the agent
   per round would put its start (imports, first discovery) next to the measurement, and
   the program is loaded and freed per task anyway (the monitor frees it when the last
   task ends), so nothing of a profiled round is left attached in an unprofiled one.

   Printed per round: wrk's request rate; for profiled rounds the agent's CPU seconds
   (utime + stime from /proc/PID/stat) while wrk ran and from the end of wrk to the end of
   the task (the backlog of events), the requests the backend's
   ``rover_net_p_http1_request_counter`` meters counted for nginx (side=server) against
   the requests wrk completed (coverage), and the agent's network counters (from
   ``rover_network_events``), losses marked. Summary: median rates and the median of
   the per-round ratios profiled / unprofiled (target >= 0.95x).

2. Syscall-heavy processes that are not watched, in rounds that alternate with the network
   program attached (a NetworkObserver in this process, watching one idle process; loaded
   once per attached round) and not attached. Three C loops (compiled with gcc in a
   temporary directory), each run ``--seconds`` per round, 64-byte calls:
   ``devnull``: write() to /dev/null, the cheapest call the program traces (the worst
   case); ``socketpair``: write() and read() on an AF_UNIX socketpair (traced calls on a
   socket the program does not follow); ``getppid``: a call the program does not trace (what
   the syscall tracepoints being enabled at all cost: the kernel then takes the slow
   syscall path for every task). Printed: each loop's calls per second of wall time (the
   target's measure: >= 0.98x) and per second of its own CPU time (steadier on a busy
   machine), and the ratios attached / not attached (medians of the rounds).

Run as root (loads BPF):
    PYTHONPATH=. .venv/bin/python bench/bench_network.py [--rounds 5] [--seconds 8]
        [--nginx | --unwatched] [--connections 16] [--loops devnull,socketpair,getppid]
        [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's rover, whatever the venv's install maps to
sys.path.insert(1, str(ROOT / "tests"))

from backend_data import reported  # noqa: E402
from bench_memory import Agent, Revision  # noqa: E402
from fake_oap import FakeOAP  # noqa: E402
from nginx_server import WrkResult, nginx, run_wrk  # noqa: E402

from rover.bpf.contract import header  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
SERVICE = "bench-net"
REQUEST_COUNTER = "rover_net_p_http1_request_counter"
TASK_TAIL_S = 3  # a task lasts this much longer than its wrk run
RATE_TARGET = 0.95
UNWATCHED_TARGET = 0.98
STARTED = "network profiling started"
STOPPED = "network monitor stopped"

SYSCALL_LOOP = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double since(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) + (t.tv_nsec - t0->tv_nsec) / 1e9;
}

/* argv: seconds, devnull | socketpair | getppid. Prints: syscalls, wall s, CPU s. */
int main(int argc, char **argv) {
    double seconds = atof(argv[1]), elapsed;
    const char *mode = argv[2];
    char buf[64] = {0};
    unsigned long calls = 0;
    int fd = -1, pair[2];
    struct timespec t0;
    struct rusage ru;
    if (!strcmp(mode, "devnull")) {
        fd = open("/dev/null", O_WRONLY);
    } else if (!strcmp(mode, "socketpair")) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair)) return 1;
    } else if (strcmp(mode, "getppid")) {
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        if (fd >= 0) {
            for (int i = 0; i < 4096; i++)
                if (write(fd, buf, sizeof buf) != sizeof buf) return 1;
            calls += 4096;
        } else if (mode[0] == 's') {
            for (int i = 0; i < 1024; i++)
                if (write(pair[0], buf, sizeof buf) != sizeof buf ||
                    read(pair[1], buf, sizeof buf) != sizeof buf) return 1;
            calls += 2048;
        } else {
            for (int i = 0; i < 4096; i++) getppid();
            calls += 4096;
        }
    } while ((elapsed = since(&t0)) < seconds);
    getrusage(RUSAGE_SELF, &ru);
    printf("%lu %.6f %.6f\n", calls, elapsed,
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    return 0;
}
"""
# The unwatched process's loops: what each does (all 64-byte calls).
LOOPS = {
    "devnull": "write() to /dev/null (a traced call at its cheapest: the worst case)",
    "socketpair": "write() and read() on an AF_UNIX socketpair (traced calls, not inet)",
    "getppid": "getppid() (not traced: the cost of syscall tracepoints being on at all)",
}


# -- small helpers ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found.get("VmRSS", 0.0), found.get("VmHWM", 0.0)


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def syscall_tracers(exclude: set[int]) -> set[int]:
    """Pids (other than ``exclude``) with a BPF program on a syscall tracepoint
    (``bpftool perf list``): those slow every process's syscalls, the "not attached" and
    "unprofiled" rounds of this benchmark included. Empty when bpftool is missing."""
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        return set()
    try:
        out = subprocess.run(
            [bpftool, "-j", "perf", "list"], capture_output=True, text=True, timeout=10
        ).stdout
        entries = json.loads(out or "[]")
    except (OSError, subprocess.SubprocessError, ValueError):
        return set()
    return {
        int(e["pid"])
        for e in entries
        if str(e.get("tracepoint", "")).startswith(("sys_enter", "sys_exit"))
        and int(e["pid"]) not in exclude
    }


def warn_tracers(exclude: set[int], when: str) -> None:
    others = syscall_tracers(exclude)
    if others:
        print(
            f"    WARNING ({when}): other processes hold BPF programs on syscall tracepoints "
            f"(pids {', '.join(map(str, sorted(others)))}): every syscall pays for them, "
            "in both conditions"
        )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def loss_counter_names() -> set[str]:
    """Counters of the network program that count something lost (bpf/network.h)."""
    from rover.network.observer import USER_COUNTERS

    kernel = header("network.h").counters("net_stat")
    return {f"kernel_{c.name}" for c in (*kernel, *USER_COUNTERS) if c.loss}


# Analyzer and reporter counters that mean data went missing (rover/network/monitor.py,
# rover/network/http1.py skips are "http_*": printed, not all of them losses).
MONITOR_LOSSES = {
    "events_failed",
    "event_read_errors",
    "analyzer_crashes",
    "http_connections_untracked",
    "reports_dropped_backend_slow",
    "report_errors",
    "connection_read_errors",
}


# -- part 1: nginx under wrk -----------------------------------------------------------


def network_metrics(health: str) -> dict[str, float]:
    """``rover_network_events{counter=...}`` from the agent's /metrics."""
    with urllib.request.urlopen(f"http://{health}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    found = {}
    for match in re.finditer(
        r'^rover_network_events(?:_total)?\{counter="([^"]+)"\} (\S+)$', text, re.M
    ):
        found[match.group(1)] = float(match.group(2))
    return found


def requests_metered(oap: FakeOAP, server_process_id: str) -> float:
    """Requests the backend's HTTP/1 request counters hold for nginx's server side."""
    total = 0.0
    for stream in oap.requests("collectBatch"):
        for collection in stream:
            for data in collection.meterData:
                if not data.HasField("singleValue"):
                    continue
                value = data.singleValue
                labels = {lb.name: lb.value for lb in value.labels}
                if (
                    value.name == REQUEST_COUNTER
                    and labels.get("side") == "server"
                    and labels.get("server_process_id") == server_process_id
                ):
                    total += value.value
    return total


@dataclass
class NginxRound:
    profiled: bool
    wrk: WrkResult
    agent_cpu_s: float  # while wrk ran
    agent_tail_cpu_s: float = 0.0  # profiled: from the end of wrk to the end of the task
    tail_s: float = 0.0
    attach_s: float = 0.0  # profiled: task added -> "network profiling started"
    metered: float = 0.0  # profiled: requests counted by the backend's meters
    reports_during: int = 0  # profiled: meter reports the backend received while wrk ran
    rss_mib: float = 0.0  # profiled: the agent's VmRSS when wrk ended
    hwm_mib: float = 0.0  # the agent's VmHWM (peak) at the end of the round
    counters: dict[str, float] = field(default_factory=dict)  # profiled: this task's


def nginx_part(rounds: int, seconds: int, connections: int, keep: bool) -> list[NginxRound]:
    tmp = Path(tempfile.mkdtemp(prefix="rover-bench-net-"))
    oap = FakeOAP().start()
    agent: Agent | None = None
    results: list[NginxRound] = []
    losses = loss_counter_names() | MONITOR_LOSSES
    try:
        with nginx(tmp / "nginx") as (server, port):
            health = free_address()
            agent = Agent(
                Revision("this tree", ROOT),
                {
                    "ROVER_BACKEND_ADDR": oap.addr,
                    "ROVER_HEALTH_ADDRESS": health,
                    "ROVER_PROCESS_DISCOVERY_SCAN_MODE": "REGEX",
                    "ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_MATCH_CMD": tmp.name,
                    "ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_SERVICE_NAME": SERVICE,
                    "ROVER_PROCESS_DISCOVERY_HEARTBEAT_PERIOD": "2s",
                    # tasks start and end within a second (shipped: 10 s); the rest shipped
                    "ROVER_PROFILING_CHECK_INTERVAL": "1s",
                },
                tmp / "agent.log",
                None,
            )
            oap.wait_for(
                lambda o: any(p.pid == server.pid for p in reported(o, SERVICE)),
                timeout=60,
                what="nginx reported",
            )
            nginx_id = next(p.process_id for p in reported(oap, SERVICE) if p.pid == server.pid)
            run_wrk(port, 1, connections)  # warm-up
            print(
                f"nginx pid {server.pid} (process id {nginx_id[:12]}...), agent pid {agent.pid}, "
                f"wrk -t1 -c{connections} -d{seconds}s; {rounds} rounds"
            )
            for index in range(rounds):
                order = (False, True) if index % 2 == 0 else (True, False)
                for profiled in order:
                    if profiled:
                        result = _profiled_round(agent, oap, nginx_id, health, port, seconds,
                                                 connections)  # fmt: skip
                    else:
                        warn_tracers({os.getpid(), agent.pid}, f"round {index + 1} unprofiled")
                        cpu0 = cpu_seconds(agent.pid)
                        w = run_wrk(port, seconds, connections)
                        result = NginxRound(False, w, cpu_seconds(agent.pid) - cpu0)
                    results.append(result)
                    _print_round(index + 1, result, losses)
    finally:
        if agent is not None:
            agent.stop()
        oap.stop()
        if keep:
            print(f"kept: {tmp} (agent.log)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    _print_nginx_summary(results, seconds)
    return results


def _profiled_round(
    agent: Agent, oap: FakeOAP, nginx_id: str, health: str, port: int, seconds: int,
    connections: int,
) -> NginxRound:  # fmt: skip
    started, stopped = agent.log_text().count(STARTED), agent.log_text().count(STOPPED)
    before = network_metrics(health)
    metered0 = requests_metered(oap, nginx_id)
    t0 = time.monotonic()
    oap.add_task(nginx_id, target_type="NETWORK", duration_s=seconds + TASK_TAIL_S)
    agent.wait_log(STARTED, timeout=120, count=started + 1)
    attach_s = time.monotonic() - t0
    cpu0, wall0 = cpu_seconds(agent.pid), time.time()
    w = run_wrk(port, seconds, connections)
    cpu1, t1, wall1 = cpu_seconds(agent.pid), time.monotonic(), time.time()
    rss, _ = memory_mib(agent.pid)
    agent.wait_log(STOPPED, timeout=seconds + TASK_TAIL_S + 60, count=stopped + 1)
    cpu2, t2 = cpu_seconds(agent.pid), time.monotonic()
    after = network_metrics(health)
    _, hwm = memory_mib(agent.pid)
    reports = sum(1 for c in oap.calls_of("collectBatch") if wall0 <= c.time <= wall1)
    # the last report is sent before "stopped" is logged; let the backend record it
    metered = _settled(lambda: requests_metered(oap, nginx_id)) - metered0
    counters = {
        name: value if name.startswith("kernel_") else value - before.get(name, 0.0)
        for name, value in after.items()
    }  # kernel_*: the counters of this task's program (freed at its end); others cumulative
    return NginxRound(
        profiled=True,
        wrk=w,
        agent_cpu_s=cpu1 - cpu0,
        agent_tail_cpu_s=cpu2 - cpu1,
        tail_s=t2 - t1,
        attach_s=attach_s,
        metered=metered,
        reports_during=reports,
        rss_mib=rss,
        hwm_mib=hwm,
        counters=counters,
    )


def _settled(read: Callable[[], float], quiet_s: float = 0.5, timeout: float = 5.0) -> float:
    value, since, deadline = read(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.1)
        latest = read()
        if latest != value:
            value, since = latest, time.monotonic()
    return value


def _print_round(number: int, r: NginxRound, losses: set[str]) -> None:
    label = "profiled  " if r.profiled else "unprofiled"
    line = f"round {number} {label} {r.wrk.rate:10,.0f} req/s ({r.wrk.requests:,} requests)"
    line += f"  agent CPU {r.agent_cpu_s:5.2f} s"
    if r.wrk.errors:
        line += f"  wrk: {r.wrk.errors}"
    print(line)
    if not r.profiled:
        return
    coverage = r.metered / r.wrk.requests if r.wrk.requests else math.nan
    print(
        f"    task attached in {r.attach_s:4.1f} s; agent CPU after wrk until the task ended "
        f"{r.agent_tail_cpu_s:5.2f} s in {r.tail_s:4.1f} s; meters counted "
        f"{r.metered:,.0f} of {r.wrk.requests:,} requests (coverage {coverage:.3f})"
    )
    print(
        f"    meter reports received while wrk ran: {r.reports_during} (report interval 2 s); "
        f"agent memory when wrk ended {r.rss_mib:.0f} MiB, peak so far {r.hwm_mib:.0f} MiB"
    )
    shown = {k: v for k, v in r.counters.items() if v}
    lost = {k: v for k, v in shown.items() if k in losses}
    info = {k: v for k, v in shown.items() if k not in losses}
    print("    counters: " + (", ".join(f"{k}={v:,.0f}" for k, v in sorted(info.items())) or "-"))
    print(
        "    LOSSES:   " + (", ".join(f"{k}={v:,.0f}" for k, v in sorted(lost.items())) or "none")
    )


def _print_nginx_summary(results: list[NginxRound], seconds: int) -> None:
    plain = [r for r in results if not r.profiled]
    profiled = [r for r in results if r.profiled]
    ratios = [p.wrk.rate / u.wrk.rate for p, u in zip(profiled, plain, strict=False)]
    ratio = median(ratios)
    verdict = "OK" if ratio >= RATE_TARGET else "UNDER TARGET"
    print()
    print(f"nginx, unprofiled (median):      {median([r.wrk.rate for r in plain]):10,.0f} req/s")
    print(f"nginx, NETWORK task (median):    {median([r.wrk.rate for r in profiled]):10,.0f} req/s")
    print(
        f"ratio profiled / unprofiled:     {ratio:10.3f}x (median of {len(ratios)} rounds; "
        f"target >= {RATE_TARGET}x: {verdict}); rounds: " + ", ".join(f"{x:.3f}" for x in ratios)
    )
    cpu_p = median([r.agent_cpu_s / seconds for r in profiled])
    cpu_u = median([r.agent_cpu_s / seconds for r in plain])
    print(
        f"agent CPU while wrk ran:         {cpu_p * 100:6.1f} % of one core with the task, "
        f"{cpu_u * 100:.1f} % without (medians)"
    )
    metered = sum(r.metered for r in profiled)
    sent = sum(r.wrk.requests for r in profiled)
    print(
        f"coverage (meters / wrk):         {metered / sent if sent else math.nan:10.3f} "
        f"({metered:,.0f} of {sent:,} requests over the profiled rounds)"
    )


# -- part 2: a process not watched -------------------------------------------------------


def build_syscall_loop(directory: Path) -> Path:
    source = directory / "syscall_loop.c"
    source.write_text(SYSCALL_LOOP)
    binary = directory / "syscall_loop"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True)
    return binary


@dataclass
class LoopResult:
    calls: int
    wall_s: float
    cpu_s: float

    @property
    def rate(self) -> float:
        return self.calls / self.wall_s

    @property
    def cpu_rate(self) -> float:
        return self.calls / self.cpu_s if self.cpu_s else math.nan


def run_loop(binary: Path, seconds: float, kind: str) -> LoopResult:
    out = subprocess.run(
        [str(binary), str(seconds), kind], capture_output=True, text=True, check=True
    ).stdout.split()
    return LoopResult(int(out[0]), float(out[1]), float(out[2]))


@contextlib.contextmanager
def attached_observer(watched_pid: int) -> Iterator[None]:
    """The network program loaded and attached, watching one (idle) process."""
    from rover.bpf.headers import HeaderSearch
    from rover.network.observer import NetworkObserver

    with NetworkObserver(HeaderSearch().find()) as observer:
        observer.add_pid(watched_pid)
        yield
        observer.poll(0)


def unwatched_part(rounds: int, seconds: float, kinds: list[str]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="rover-bench-unwatched-"))
    idle = subprocess.Popen(["sleep", "100000"])
    attached: dict[str, list[LoopResult]] = {k: [] for k in kinds}
    plain: dict[str, list[LoopResult]] = {k: [] for k in kinds}
    try:
        binary = build_syscall_loop(tmp)
        for kind in kinds:
            run_loop(binary, 0.5, kind)  # warm-up
        print(
            f"unwatched process: {seconds:g} s per loop and round, {rounds} rounds; the program "
            f"watches pid {idle.pid} (idle); loops:"
        )
        for kind in kinds:
            print(f"  {kind:10} {LOOPS[kind]}")
        for index in range(rounds):
            order = (False, True) if index % 2 == 0 else (True, False)
            for with_program in order:
                if not with_program:
                    warn_tracers({os.getpid()}, f"round {index + 1} not attached")
                context = attached_observer(idle.pid) if with_program else contextlib.nullcontext()
                with context:
                    for kind in kinds:
                        r = run_loop(binary, seconds, kind)
                        (attached if with_program else plain)[kind].append(r)
                        label = "attached    " if with_program else "not attached"
                        print(
                            f"round {index + 1} {label} {kind:10} {r.rate / 1e6:7.3f} M calls/s "
                            f"({r.cpu_rate / 1e6:7.3f} M per CPU second; CPU "
                            f"{r.cpu_s / r.wall_s:.2f})"
                        )
    finally:
        idle.kill()
        idle.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(
        f"{'loop':10} {'not attached':>12} {'attached':>10}  ratio (median of {rounds}; "
        f"target >= {UNWATCHED_TARGET}x)   per CPU second   rounds"
    )
    for kind in kinds:
        a, p = attached[kind], plain[kind]
        ratios = [x.rate / y.rate for x, y in zip(a, p, strict=True)]
        cpu_ratios = [x.cpu_rate / y.cpu_rate for x, y in zip(a, p, strict=True)]
        ratio = median(ratios)
        verdict = "OK" if ratio >= UNWATCHED_TARGET else "UNDER TARGET"
        rate_p, rate_a = median([y.rate for y in p]) / 1e6, median([x.rate for x in a]) / 1e6
        print(
            f"{kind:10} {rate_p:10.3f} M {rate_a:8.3f} M  {ratio:6.3f}x {verdict:12}"
            f"              {median(cpu_ratios):6.3f}x         "
            + ", ".join(f"{x:.3f}" for x in ratios)
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per condition (5)")
    parser.add_argument("--seconds", type=int, default=8, help="seconds per round (8)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--nginx", action="store_true", help="only part 1 (nginx under wrk)")
    parser.add_argument("--unwatched", action="store_true", help="only part 2 (unwatched)")
    parser.add_argument("--keep", action="store_true", help="keep the agent's log directory")
    parser.add_argument(
        "--loops",
        default=",".join(LOOPS),
        help=f"the unwatched process's loops, comma-separated ({','.join(LOOPS)})",
    )
    args = parser.parse_args()
    both = not args.nginx and not args.unwatched
    kinds = [k for k in args.loops.split(",") if k]
    if not kinds or set(kinds) - set(LOOPS):
        parser.error(f"--loops: choose from {','.join(LOOPS)}")
    if args.seconds < 1 or args.rounds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    if both or args.nginx:
        nginx_part(args.rounds, args.seconds, args.connections, args.keep)
    if both:
        print()
    if both or args.unwatched:
        unwatched_part(args.rounds, args.seconds, kinds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
