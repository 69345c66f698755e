"""The agent's resident memory, and the time from a task's start to its first data.

Runs the real `rover agent` against the in-repo test backend (tests/fake_oap.py), with
the health endpoint on (the readiness check runs, as in the DaemonSet) and the shipped
flush interval (5 s), in rounds that alternate the agent of this tree ("new") with the
agent at a reference revision ("reference", default 884c1c7: compiles in the agent),
the order rotating. The reference runs from a temporary `git worktree` (removed at the
end) with the same Python. Each round starts a fresh test backend and agent and
measures:

a. after start: processes reported, readiness check done;
b. while profiling two busy processes (one without frame pointers: auto unwinding
   loads the eh_frame tables), two tasks at once (ON_CPU and OFF_CPU, each on both
   processes), uploads every flush: the largest figure of one-second samples over two
   flushes or more, taken once every task run has started and the tasks sent data;
c. after the tasks end (every task run finished, one more flush);
d. time to first data: single ON_CPU tasks one after another (engine loaded), and the
   first task of a fresh agent (a second agent run per round: the compile counts), each
   starting after the agent received it, at a random point of the flush period; printed:
   task start time -> "task ...: profiling started" in the agent's log (the compile and
   attach) -> first profiling data at the backend (the end of the upload stream that
   carried it); and the same for the two tasks of b, which start together.

Memory figures: VmRSS and VmHWM of the agent process (/proc/PID/status) and, when the
agent runs in a memory cgroup of its own (default; --no-cgroup to skip), the cgroup's
usage (v2 memory.current, v1 memory.usage_in_bytes: anonymous memory, page cache and
kernel memory, BPF maps included; the compile helpers are the agent's children, so
counted too), its working set (usage less inactive file pages, what the kubelet
compares with the limit) and its peak; and the BPF maps the agent holds (memlock in
/proc/PID/fdinfo: kernel memory, not in RSS). Whether libLLVM/libclang are mapped comes from
/proc/PID/smaps; the largest mappings of the last round of each agent are printed.

Run as root: .venv/bin/python bench/bench_memory.py [--rounds 3] [--no-cgroup]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from backend_data import reported  # noqa: E402
from fake_oap import FakeOAP  # noqa: E402
from workloads.build import build  # noqa: E402

MIB = 1024 * 1024
REFERENCE = "884c1c7"
TARGET_MIB = 120.0  # issue 14: at most 120 MiB resident, steady
FIRST_DATA_TARGET_S = 2.0  # issue 14: a task's first flush within 2 s of its start
COMPILER_LIBS = ("libLLVM", "libclang")
CHECK_INTERVAL_S = 2  # task query period here (shipped: 10 s); the flush stays at 5 s
FLUSH_S = 5.0  # the shipped flush interval, which the agents run with


# -- agents of two revisions ------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    label: str
    root: Path  # the tree `rover` is imported from


@contextlib.contextmanager
def reference_tree(revision: str) -> Iterator[Revision]:
    """A temporary detached worktree of ``revision`` (removed on exit)."""
    tmp = Path(tempfile.mkdtemp(prefix="rover-bench-ref-"))
    tree = tmp / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        short = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        yield Revision(f"reference {short}", tree)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(tmp, ignore_errors=True)


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class Cgroup:
    """A memory cgroup of the agent's own, removed by :meth:`remove`.

    cgroup v2 (memory enabled at the root): /sys/fs/cgroup/rover-bench-PID. cgroup v1 (a
    hybrid host): a child of the benchmark's own memory cgroup, so that nothing leaves
    the accounting it is under. ``usage`` is memory.current (v2) or
    memory.usage_in_bytes (v1).
    """

    def __init__(self, path: Path, version: int) -> None:
        self.path = path
        self.version = version

    @classmethod
    def create(cls, name: str) -> Cgroup | None:
        v2 = Path("/sys/fs/cgroup")
        control = v2 / "cgroup.subtree_control"
        if control.exists() and "memory" in control.read_text().split():
            path = v2 / name
            path.mkdir()
            return cls(path, 2)
        v1 = Path("/sys/fs/cgroup/memory")
        if (v1 / "memory.usage_in_bytes").exists():
            own = "/"
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                _, controllers, where = line.split(":", 2)
                if "memory" in controllers.split(","):
                    own = where
            path = v1 / own.lstrip("/") / name
            path.mkdir()
            return cls(path, 1)
        return None

    @property
    def kind(self) -> str:
        return f"cgroup v{self.version} {self.path}"

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def _int(self, name: str) -> int | None:
        try:
            return int((self.path / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stat(self) -> dict[str, int]:
        result = {}
        for line in (self.path / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            with contextlib.suppress(ValueError):
                result[key] = int(value)
        return result

    def usage(self) -> int:
        value = self._int("memory.current" if self.version == 2 else "memory.usage_in_bytes")
        return value or 0

    def working_set(self) -> int:
        inactive = self.stat().get("inactive_file" if self.version == 2 else "total_inactive_file")
        return self.usage() - (inactive or 0)

    def peak(self) -> int | None:
        return self._int("memory.peak" if self.version == 2 else "memory.max_usage_in_bytes")

    def parts(self) -> dict[str, int]:
        """Anonymous, file (page cache) and kernel memory of the cgroup, in bytes."""
        stat = self.stat()
        if self.version == 2:
            return {k: stat.get(k, 0) for k in ("anon", "file", "kernel")}
        kernel = self._int("memory.kmem.usage_in_bytes") or 0
        return {"anon": stat.get("rss", 0), "file": stat.get("cache", 0), "kernel": kernel}

    def remove(self) -> None:
        """Kill what is left in it (the agent's own children, if any) and remove it."""
        for _ in range(50):
            pids = [int(p) for p in self.procs.read_text().split()]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        print(f"warning: could not remove {self.path}", file=sys.stderr)


class Agent:
    """`rover agent` of one revision, optionally in a cgroup of its own from its first
    instruction (a shell writes its pid into cgroup.procs, then execs the agent)."""

    def __init__(
        self, revision: Revision, env: dict[str, str], log_path: Path, cgroup: Cgroup | None
    ) -> None:
        self.revision = revision
        self.log_path = log_path
        self.cgroup = cgroup
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith("ROVER_") and k != "PYTHONPATH"
        }
        full_env.update(env)
        full_env["PYTHONPATH"] = str(revision.root)
        command = [sys.executable, "-m", "rover.cli", "agent"]
        if cgroup is not None:
            command = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup.procs), *command]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            command, cwd=revision.root, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log_text().count(text) < count:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited ({self.proc.returncode}); log: {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent: no {text!r} x{count} in {timeout} s ({self.log_path})")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def agent_env(backend: str, health: str, match: str, service: str, **extra: str) -> dict[str, str]:
    """Shipped defaults, the regex scanner finding ``match``, health endpoint on."""
    return {
        "ROVER_BACKEND_ADDR": backend,
        "ROVER_HEALTH_ADDRESS": health,
        "ROVER_PROCESS_DISCOVERY_SCAN_MODE": "REGEX",
        "ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_MATCH_CMD": match,
        "ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_SERVICE_NAME": service,
        **extra,
    }


def metrics_text(health: str) -> str:
    with urllib.request.urlopen(f"http://{health}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


# -- reading a process's memory -------------------------------------------------------


def status(pid: int) -> dict[str, int]:
    """/proc/PID/status figures in kB (VmRSS, VmHWM, RssAnon, ...) and Threads."""
    result = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            result[key] = int(parts[0])
    return result


def smaps_by_file(pid: int) -> dict[str, int]:
    """Resident bytes per mapped file ("[anonymous]", "[heap]", ... for the others);
    Python packages are grouped by their top directory under site-packages."""
    totals: dict[str, int] = defaultdict(int)
    key = "[anonymous]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=5)
        if re.match(r"^[0-9a-f]+-[0-9a-f]+$", first[0]):
            path = first[5].strip() if len(first) > 5 else ""
            key = mapping_name(path)
        elif first[0] == "Rss:":
            totals[key] += int(first[1]) * 1024
    return dict(totals)


def mapping_name(path: str) -> str:
    if not path:
        return "[anonymous]"
    if path.startswith("["):
        return path
    if "site-packages/" in path:
        top = path.split("site-packages/", 1)[1].split("/", 1)[0]
        return f"site-packages/{top}"
    return Path(path).name.replace(" (deleted)", "")


def smaps_rollup(pid: int) -> dict[str, int]:
    result = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            result[key] = int(parts[0]) * 1024
    return result


def compiler_resident(by_file: dict[str, int]) -> int | None:
    """Resident bytes of libLLVM/libclang mappings; None when neither is mapped."""
    found = [v for k, v in by_file.items() if any(lib in k for lib in COMPILER_LIBS)]
    return sum(found) if found else None


def bpf_map_bytes(pid: int) -> int:
    """Kernel memory of the BPF maps ``pid`` holds file descriptors of ("memlock" in
    /proc/PID/fdinfo, each map once; inner maps reached only through an outer map are
    not counted)."""
    seen: dict[int, int] = {}
    fd_dir = Path(f"/proc/{pid}/fdinfo")
    for name in os.listdir(fd_dir):
        try:
            info = dict(
                line.split(":", 1)
                for line in (fd_dir / name).read_text().splitlines()
                if ":" in line
            )
        except OSError:  # closed meanwhile
            continue
        if "map_id" in info and "memlock" in info:
            seen[int(info["map_id"])] = int(info["memlock"])
    return sum(seen.values())


@dataclass
class Snapshot:
    rss: float  # MiB
    hwm: float
    usage: float | None = None  # cgroup, MiB
    working: float | None = None
    compiler: int | None = None  # bytes of libLLVM/libclang resident, None: not mapped
    threads: int = 0
    fds: int = 0
    bpf_maps: float = 0.0  # MiB, see bpf_map_bytes

    def merge(self, other: Snapshot) -> Snapshot:
        """The larger of each figure (a window's worst)."""

        def high(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else max(a, b)

        compiler = high(self.compiler, other.compiler)
        return Snapshot(
            max(self.rss, other.rss),
            max(self.hwm, other.hwm),
            high(self.usage, other.usage),
            high(self.working, other.working),
            None if compiler is None else int(compiler),
            max(self.threads, other.threads),
            max(self.fds, other.fds),
            max(self.bpf_maps, other.bpf_maps),
        )


def snapshot(pid: int, cgroup: Cgroup | None) -> Snapshot:
    st = status(pid)
    shot = Snapshot(
        st.get("VmRSS", 0) / 1024,
        st.get("VmHWM", 0) / 1024,
        compiler=compiler_resident(smaps_by_file(pid)),
        threads=st.get("Threads", 0),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        bpf_maps=bpf_map_bytes(pid) / MIB,
    )
    if cgroup is not None:
        shot.usage = cgroup.usage() / MIB
        shot.working = cgroup.working_set() / MIB
    return shot


def window(pid: int, cgroup: Cgroup | None, seconds: float) -> Snapshot:
    """The largest figures of one-second samples over ``seconds``."""
    worst = snapshot(pid, cgroup)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1)
        worst = worst.merge(snapshot(pid, cgroup))
    return worst


# -- the log and the backend -------------------------------------------------------------

LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def log_time(agent: Agent, text: str) -> float:
    """Wall-clock time (epoch seconds) of the first log line containing ``text``."""
    for line in agent.log_text().splitlines():
        if text not in line:
            continue
        match = LOG_TIME.match(line)
        if match:  # the text formatter: local time, milliseconds
            stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
        with contextlib.suppress(ValueError, KeyError):  # the JSON formatter: UTC
            when = json.loads(line)["time"].rstrip("Z")
            return datetime.datetime.fromisoformat(when + "+00:00").timestamp()
    raise RuntimeError(f"no {text!r} in {agent.log_path}")


def first_data_time(oap: FakeOAP, task_id: str) -> float | None:
    """When the backend had the first upload stream carrying data of ``task_id``."""
    for call in oap.calls_of("collectProfilingData", ok_only=True):
        if any(m.HasField("task") and m.task.taskId == task_id for m in call.request):
            return call.time
    return None


def wait_first_data(oap: FakeOAP, task_id: str, timeout: float) -> float:
    """:func:`first_data_time`, once there is one."""
    deadline = time.monotonic() + timeout
    while (when := first_data_time(oap, task_id)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no data of task {task_id} after {timeout} s")
        time.sleep(0.1)
    return when


# -- one round ------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Seconds from a task's start time to `profiling started` in the agent's log
    (compile and attach), from there to the first data at the backend, and in all."""

    to_started: float
    to_data: float
    start_to_data: float


def timed_task(oap: FakeOAP, agent: Agent, process_id: str, rng: random.Random) -> Timing:
    """One ON_CPU task starting after the agent's next task query, at a random point of
    the flush period (else the start would be in step with the flush loop)."""
    delay = CHECK_INTERVAL_S + 1.5 + rng.uniform(0, FLUSH_S)
    start_ms = int((time.time() + delay) * 1000)
    task = oap.add_task(process_id, target_type="ON_CPU", duration_s=6, start_time_ms=start_ms)
    agent.wait_log(f"task {task.task_id}: profiling started", timeout=120)
    data = wait_first_data(oap, task.task_id, 60)
    started = log_time(agent, f"task {task.task_id}: profiling started")
    agent.wait_log(f"task {task.task_id}: finished", timeout=60)
    return Timing(started - start_ms / 1000, data - started, data - start_ms / 1000)


def cold_timing(revision: Revision, fp_pid: int, tmp: Path, rng: random.Random) -> Timing:
    """:func:`timed_task` on a fresh agent (ready, no engine loaded: the compile counts)."""
    oap = FakeOAP().start()
    agent = None
    try:
        env = agent_env(
            oap.addr,
            free_address(),
            "bench-mem-",
            "bench-mem",
            ROVER_PROCESS_DISCOVERY_HEARTBEAT_PERIOD="2s",
            ROVER_PROFILING_CHECK_INTERVAL=f"{CHECK_INTERVAL_S}s",
        )
        agent = Agent(revision, env, tmp / f"agent-{len(list(tmp.glob('agent-*')))}.log", None)
        oap.wait_for(lambda o: len(reported(o, "bench-mem")) == 2, timeout=60, what="processes")
        agent.wait_log("readiness:", timeout=180)
        process_id = next(p.process_id for p in reported(oap, "bench-mem") if p.pid == fp_pid)
        return timed_task(oap, agent, process_id, rng)
    finally:
        if agent is not None:
            agent.stop()
        oap.stop()


@dataclass
class Round:
    revision: str
    phases: dict[str, Snapshot] = field(default_factory=dict)
    peak: float | None = None  # cgroup peak over the whole run, MiB
    parts: dict[str, int] = field(default_factory=dict)  # cgroup anon/file/kernel, phase b
    by_file: dict[str, int] = field(default_factory=dict)  # smaps, phase b
    rollup: dict[str, int] = field(default_factory=dict)
    cold: list[Timing] = field(default_factory=list)  # a fresh agent's first task
    warm: list[Timing] = field(default_factory=list)  # tasks after phase c (engine loaded)
    concurrent: list[float] = field(default_factory=list)  # phase b: started -> first data
    cache_lines: list[str] = field(default_factory=list)


def run_round(
    revision: Revision,
    busy: dict[str, int],
    use_cgroup: bool,
    first_data_tasks: int,
    tmp: Path,
    rng: random.Random,
) -> Round:
    result = Round(revision.label)
    oap = FakeOAP().start()
    cgroup = Cgroup.create(f"rover-bench-{os.getpid()}") if use_cgroup else None
    agent = None
    health = free_address()
    try:
        env = agent_env(
            oap.addr,
            health,
            "bench-mem-",
            "bench-mem",
            ROVER_PROCESS_DISCOVERY_HEARTBEAT_PERIOD="2s",
            ROVER_PROFILING_CHECK_INTERVAL=f"{CHECK_INTERVAL_S}s",
        )
        log_path = tmp / f"agent-{len(list(tmp.glob('agent-*')))}.log"
        agent = Agent(revision, env, log_path, cgroup)
        oap.wait_for(lambda o: len(reported(o, "bench-mem")) == 2, timeout=60, what="processes")
        agent.wait_log("readiness:", timeout=180)
        time.sleep(2)
        result.phases["a"] = snapshot(agent.pid, cgroup)

        ids = {p.pid: p.process_id for p in reported(oap, "bench-mem")}
        both = [ids[busy["nofp"]], ids[busy["fp"]]]
        tasks = [
            oap.add_task(both, target_type="ON_CPU", duration_s=40),
            oap.add_task(both, target_type="OFF_CPU", duration_s=40),
        ]
        for task in tasks:  # each on 2 processes: 2 runs
            agent.wait_log(f"task {task.task_id}: profiling started", timeout=180, count=2)
        wait_first_data(oap, tasks[0].task_id, 60)  # ON_CPU: every flush has some
        for task in tasks:  # a busy loop is rarely switched out: OFF_CPU data may be late
            with contextlib.suppress(RuntimeError):
                data = wait_first_data(oap, task.task_id, 20)
                started = log_time(agent, f"task {task.task_id}: profiling started")
                result.concurrent.append(data - started)
        result.phases["b"] = window(agent.pid, cgroup, 11)  # two flushes or more
        result.by_file = smaps_by_file(agent.pid)
        result.rollup = smaps_rollup(agent.pid)
        if cgroup is not None:
            result.parts = cgroup.parts()

        for task in tasks:
            agent.wait_log(f"task {task.task_id}: finished", timeout=120, count=2)
        time.sleep(6)  # one more flush
        result.phases["c"] = snapshot(agent.pid, cgroup)
        result.cache_lines = [
            line
            for line in metrics_text(health).splitlines()
            if "cache" in line.lower() and not line.startswith("#")
        ]

        for _ in range(first_data_tasks):
            result.warm.append(timed_task(oap, agent, ids[busy["fp"]], rng))
        if cgroup is not None:
            peak = cgroup.peak()
            result.peak = None if peak is None else peak / MIB
    finally:
        if agent is not None:
            agent.stop()
        oap.stop()
        if cgroup is not None:
            cgroup.remove()
    if first_data_tasks:
        result.cold.append(cold_timing(revision, busy["fp"], tmp, rng))
    return result


def imports_only(revision: Revision) -> float:
    """VmRSS (MiB) of a fresh interpreter that imported the agent's modules."""
    code = (
        "import rover.cli, rover.agent, pathlib\n"
        "for line in pathlib.Path('/proc/self/status').read_text().splitlines():\n"
        "    if line.startswith('VmRSS:'): print(int(line.split()[1]) / 1024)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(revision.root)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=revision.root, env=env, capture_output=True, text=True
    )
    return float(out.stdout.strip() or 0)


# -- printing -------------------------------------------------------------------------


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(new: float | None, ref: float | None) -> str:
    return "n/a" if new is None or not ref else f"{new / ref:.2f}x"


PHASES = {
    "a": "after start (readiness done)",
    "b": "profiling 2 tasks x 2 processes (max of 1 s samples)",
    "c": "after the tasks end",
}


def print_memory(rounds: list[Round], labels: list[str]) -> None:
    ref, new = labels
    of = {label: [r for r in rounds if r.revision == label] for label in labels}
    print(
        f"\n| phase | figure (MiB) | {ref} (each round) | new (each round) | {ref} median "
        "| new median | new / ref |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    figures: list[tuple[str, Callable[[Snapshot], float | None]]] = [
        ("VmRSS", lambda s: s.rss),
        ("VmHWM", lambda s: s.hwm),
        ("cgroup usage", lambda s: s.usage),
        ("cgroup working set", lambda s: s.working),
        ("BPF maps held (fdinfo memlock)", lambda s: s.bpf_maps),
    ]
    for phase, title in PHASES.items():
        for name, get in figures:
            values = {lb: [get(r.phases[phase]) for r in of[lb]] for lb in labels}
            if all(v is None for lb in labels for v in values[lb]):
                continue
            cells = [" / ".join(fmt(v) for v in values[lb]) for lb in labels]
            m_ref, m_new = median(values[ref]), median(values[new])
            print(
                f"| {title} | {name} | {cells[0]} | {cells[1]} | {fmt(m_ref)} | "
                f"**{fmt(m_new)}** | {ratio(m_new, m_ref)} |"
            )
        mapped = []
        for lb in labels:
            seen = {r.phases[phase].compiler for r in of[lb]}
            mapped.append(
                "no"
                if seen == {None}
                else "yes, "
                + " / ".join(fmt(None if c is None else c / MIB) for c in seen)
                + " MiB resident"
            )
        print(f"| {title} | libLLVM/libclang mapped | {mapped[0]} | {mapped[1]} | | | |")
    peaks = {lb: [r.peak for r in of[lb]] for lb in labels}
    if any(v is not None for lb in labels for v in peaks[lb]):
        m_ref, m_new = median(peaks[ref]), median(peaks[new])
        print(
            f"| whole run | cgroup peak (compile helpers included) | "
            f"{' / '.join(fmt(v) for v in peaks[ref])} | {' / '.join(fmt(v) for v in peaks[new])} "
            f"| {fmt(m_ref)} | **{fmt(m_new)}** | {ratio(m_new, m_ref)} |"
        )
    steady = [
        v
        for r in of[new]
        for phase in ("b", "c")
        for v in (r.phases[phase].rss, r.phases[phase].usage)
        if v is not None
    ]
    verdict = "met" if steady and max(steady) <= TARGET_MIB else "NOT met"
    print(
        f"\nTarget: at most {TARGET_MIB:.0f} MiB steady (VmRSS and cgroup usage while "
        f"profiling and after, new agent): largest {fmt(max(steady) if steady else None)} MiB "
        f"-> {verdict}"
    )


def print_breakdown(rounds: list[Round], labels: list[str]) -> None:
    last = {lb: [r for r in rounds if r.revision == lb][-1] for lb in labels}
    print("\nWhere the memory goes while profiling (phase b, last round of each; smaps Rss):")
    print(f"\n| mapping | {labels[0]} MiB | new MiB |")
    print("|---|---:|---:|")
    names = set().union(*(last[lb].by_file for lb in labels))
    ordered = sorted(names, key=lambda n: -max(last[lb].by_file.get(n, 0) for lb in labels))
    top, rest = ordered[:14], ordered[14:]
    for name in top:
        cells = [fmt(last[lb].by_file.get(name, 0) / MIB, 1) for lb in labels]
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    others = [sum(last[lb].by_file.get(n, 0) for n in rest) / MIB for lb in labels]
    print(f"| {len(rest)} other mappings | {fmt(others[0], 1)} | {fmt(others[1], 1)} |")
    for key in ("Rss", "Pss", "Anonymous", "Private_Dirty", "Shared_Clean", "Private_Clean"):
        cells = [fmt(last[lb].rollup.get(key, 0) / MIB, 1) for lb in labels]
        print(f"| smaps_rollup {key} | {cells[0]} | {cells[1]} |")
    if all(last[lb].parts for lb in labels):
        for key in ("anon", "file", "kernel"):
            cells = [fmt(last[lb].parts.get(key, 0) / MIB, 1) for lb in labels]
            print(f"| cgroup {key} | {cells[0]} | {cells[1]} |")


def print_first_data(rounds: list[Round], labels: list[str]) -> None:
    of = {label: [r for r in rounds if r.revision == label] for label in labels}
    print(
        "\nTime to first data, seconds (flush interval 5 s; single ON_CPU tasks start after "
        "the agent received them, at a random point of the flush period):"
    )
    print(
        f"\n| interval | {labels[0]} (each task) | new (each task) | {labels[0]} median "
        "| new median | new max |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    rows: list[tuple[str, Callable[[Round], list[float]]]] = [
        (
            "fresh agent's first task: start time -> `profiling started` (compile, attach)",
            lambda r: [t.to_started for t in r.cold],
        ),
        (
            "fresh agent's first task: `profiling started` -> first data at the backend",
            lambda r: [t.to_data for t in r.cold],
        ),
        (
            "fresh agent's first task: start time -> first data at the backend",
            lambda r: [t.start_to_data for t in r.cold],
        ),
        (
            "engine loaded (after phase c): start time -> `profiling started`",
            lambda r: [t.to_started for t in r.warm],
        ),
        (
            "engine loaded (after phase c): `profiling started` -> first data",
            lambda r: [t.to_data for t in r.warm],
        ),
        (
            "phase b (ON_CPU and OFF_CPU tasks at once): a task's first `profiling started` "
            "-> its first data",
            lambda r: r.concurrent,
        ),
    ]
    for title, get in rows:
        values = {lb: [v for r in of[lb] for v in get(r)] for lb in labels}
        cells = [" / ".join(f"{v:.2f}" for v in values[lb]) for lb in labels]
        new = values[labels[1]]
        print(
            f"| {title} | {cells[0]} | {cells[1]} | {fmt(median(list(values[labels[0]])), 2)} "
            f"| **{fmt(median(list(new)), 2)}** | {fmt(max(new) if new else None, 2)} |"
        )
    new = [t.to_data for r in of[labels[1]] for t in r.cold + r.warm]
    if new:
        verdict = "met" if max(new) <= FIRST_DATA_TARGET_S else "NOT met"
        print(
            f"\nTarget: first data within {FIRST_DATA_TARGET_S:.0f} s of `profiling started` "
            f"(new agent, every single task): largest {max(new):.2f} s -> {verdict}"
        )
    both = [v for r in of[labels[1]] for v in r.concurrent]
    if both:
        verdict = "met" if max(both) <= FIRST_DATA_TARGET_S else "NOT met"
        print(f"Two tasks at once (phase b): largest {max(both):.2f} s -> {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per agent (default 3)")
    parser.add_argument("--reference", default=REFERENCE, help="git revision to compare with")
    parser.add_argument("--no-cgroup", action="store_true", help="no cgroup of the agent's own")
    parser.add_argument(
        "--first-data-tasks", type=int, default=2, help="single tasks per round timed (default 2)"
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rover-bench-memory-"))
    busy_procs = []
    rounds: list[Round] = []
    rng = random.Random(14)
    try:
        busy = {}
        for key, name in (("nofp", "hot_c_nofp"), ("fp", "hot_c_fp")):
            binary = tmp / f"bench-mem-{name}"
            shutil.copy(build(name), binary)
            proc = subprocess.Popen([binary], stdout=subprocess.DEVNULL)
            busy_procs.append(proc)
            busy[key] = proc.pid
        with reference_tree(args.reference) as reference:
            new = Revision("new", ROOT)
            labels = [reference.label, new.label]
            imports = {lb: imports_only(rev) for lb, rev in ((labels[0], reference), ("new", new))}
            cgroup_kind = "none (--no-cgroup)"
            if not args.no_cgroup:
                probe = Cgroup.create(f"rover-bench-{os.getpid()}")
                cgroup_kind = probe.kind if probe else "none (no memory cgroup here)"
                if probe is not None:
                    probe.remove()
            print(f"agents: {reference.label} vs new ({ROOT}); cgroup: {cgroup_kind}")
            for i in range(args.rounds):
                order = [reference, new] if i % 2 == 0 else [new, reference]
                for revision in order:
                    started = time.monotonic()
                    r = run_round(
                        revision, busy, not args.no_cgroup, args.first_data_tasks, tmp, rng
                    )
                    rounds.append(r)
                    b = r.phases["b"]
                    print(
                        f"  round {i + 1} {revision.label}: start {r.phases['a'].rss:.0f}, "
                        f"profiling {b.rss:.0f} (cgroup {fmt(b.usage)}), after "
                        f"{r.phases['c'].rss:.0f} MiB RSS; {b.threads} threads, {b.fds} fds; "
                        f"first data {', '.join(f'{t.to_data:.2f}' for t in r.cold + r.warm)} s "
                        "after `profiling started`; two tasks at once "
                        f"{', '.join(f'{t:.2f}' for t in r.concurrent)} s; "
                        f"{time.monotonic() - started:.0f} s",
                        flush=True,
                    )
        print_memory(rounds, labels)
        print(
            f"\nA fresh interpreter that imported the agent's modules (no agent running): "
            f"{labels[0]} {imports[labels[0]]:.0f} MiB, new {imports['new']:.0f} MiB VmRSS"
        )
        print_breakdown(rounds, labels)
        if args.first_data_tasks:
            print_first_data(rounds, labels)
        cache = [r for r in rounds if r.revision == "new"][-1].cache_lines
        print("\n/metrics lines naming a cache (new agent, last round, after the tasks):")
        print("\n".join(f"    {line}" for line in cache) if cache else "    none exposed")
    finally:
        for proc in busy_procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
