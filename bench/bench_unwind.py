"""Benchmarks of user stack unwinding: frame pointers, and .eh_frame CFI walked in the kernel.

    .venv/bin/python bench/bench_unwind.py [--parts P,...] [--skip P,...] [--rounds N] ...

Every figure is compared with a reference measured in the same run, in alternated rounds
(the order of the variants rotates from round to round). Parts (all by default):

tables      decoding CFI into rows (user space) for libc and libLLVM-14, against
            ``readelf --debug-dump=frames`` on the same file.
throughput  the user-space reference unwinder (``rover.unwind.unwinder``, which the kernel
            walk is tested against) on a real 15-frame stack through libc.
load        loading a process's unwind rows into the kernel: from ``add_pid`` until
            ``settle()`` returns, a fresh engine each round (nothing cached): nginx with its
            libraries, and a Python that maps libLLVM-14 and libclang-cpp; kernel memory per
            file and where the time goes; ``readelf`` over the same files as the reference.
offcpu      nginx under ``wrk`` with its access log written to a FIFO that ``cat`` drains;
            ``rover profile --type off-cpu`` of its one process for --seconds, eh_frame
            against frame_pointer: switches counted against the kernel's own count, losses,
            the command's time past its duration, request rates, access-log write share.
oncpu       nginx (access log off) under ``wrk``: request rate unprofiled, and under
            ``rover profile`` at 99 Hz in each mode and bcc's ``profile-bpfcc -F 99``.
cost        kernel run time per event (``kernel.bpf_stats_enabled``, restored after) of the
            on-CPU and off-CPU programs with nginx under load, each mode; frames per stack;
            and on-CPU over a spinning leaf N calls deep (fixed cost + cost per frame).
pingpong    off-CPU at a high switch rate: ``pingpong_c SECONDS`` (two threads on one CPU
            passing a byte) under ``taskset -c 1``: round trips/s unprofiled, eh_frame,
            frame_pointer, and losses.

All parts but tables and throughput load BPF (root). Prints a markdown table per part.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from nginx_server import load, nginx  # noqa: E402

from rover.profile import ProfileType  # noqa: E402

PARTS = ("tables", "throughput", "load", "offcpu", "oncpu", "cost", "pingpong")
LIBRARIES = {
    "libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
    "libLLVM-14.so.1": "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
}
EH_FRAME, FRAME_POINTER = "eh_frame", "frame_pointer"
MODES = (EH_FRAME, FRAME_POINTER)
# nginx's access log goes out by write() (ngx_write_fd is an inline write); responses by
# writev. So a stack through libc's write is the access-log write, in either mode.
LOG_WRITE_FRAMES = frozenset({"__GI___write", "__libc_write", "__write", "write"})


# -- helpers -------------------------------------------------------------------------


def rotations(variants: Sequence[Any], rounds: int) -> Iterator[tuple[int, Any]]:
    """(round, variant) for ``rounds`` rounds of every variant, the order rotating each
    round: every variant takes each place in the order in turn, so none always runs first
    (on a machine warming up) or last."""
    n = len(variants)
    for r in range(rounds):
        for i in range(n):
            yield r, variants[(r + i) % n]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """min-max of ``values``, for the reader to judge the noise."""
    if not values:
        return ""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def kernel_switches(pid: int) -> int:
    """The kernel's count of ``pid``'s context switches (every thread, both kinds)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with (
            contextlib.suppress(FileNotFoundError),  # a thread that just exited
            open(f"/proc/{pid}/task/{tid}/status") as status,
        ):
            for line in status:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
    return total


def machine_state() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def headers():  # noqa: ANN201 - rover.bpf.headers.KernelHeaders
    from rover.bpf.headers import HeaderSearch

    return HeaderSearch().find()


def loss_counter_names() -> tuple[str, ...]:
    """Every loss counter an eh_frame engine declares (the program's and the tables')."""
    from rover.bpf.engine import LOSS_COUNTERS
    from rover.unwind.kernel_tables import LOSS_COUNTERS as TABLE_LOSSES

    return (*LOSS_COUNTERS, *TABLE_LOSSES)


def format_losses(losses: dict[str, int]) -> str:
    lost = {name: n for name, n in losses.items() if n}
    if not lost:
        return "0"
    return ", ".join(f"{name}={n:,}" for name, n in sorted(lost.items()))


def bpf_prog_ids(pid: int | str = "self") -> set[int]:
    """Ids of the BPF programs process ``pid`` holds open."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                for line in info:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
    return ids


@dataclass(frozen=True)
class ProgStats:
    run_time_ns: int
    run_cnt: int
    recursion_misses: int

    def __sub__(self, other: ProgStats) -> ProgStats:
        return ProgStats(
            self.run_time_ns - other.run_time_ns,
            self.run_cnt - other.run_cnt,
            self.recursion_misses - other.recursion_misses,
        )


def prog_stats(pid: int | str = "self") -> dict[str, ProgStats]:
    """run_time_ns, run_cnt, recursion_misses of process ``pid``'s BPF programs, by name
    (``bpftool prog show -j``; it leaves out figures that are 0)."""
    ids = bpf_prog_ids(pid)
    shown = json.loads(
        subprocess.run(
            ["bpftool", "prog", "show", "-j"], capture_output=True, text=True, check=True
        ).stdout
    )
    return {
        prog["name"]: ProgStats(
            prog.get("run_time_ns", 0), prog.get("run_cnt", 0), prog.get("recursion_misses", 0)
        )
        for prog in shown
        if prog["id"] in ids
    }


@contextlib.contextmanager
def bpf_stats_enabled() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 for the while (it costs every BPF program a clock read),
    then its old value again."""
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = path.read_text().strip()
    path.write_text("1")
    try:
        yield
    finally:
        path.write_text(old)


@contextlib.contextmanager
def child(command: Sequence[str], **kwargs: Any) -> Iterator[subprocess.Popen]:
    """A child process, killed at exit if it still runs."""
    process = subprocess.Popen(command, **kwargs)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


@contextlib.contextmanager
def logged_nginx(tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """nginx writing its access log, one write() a request, to a FIFO ``cat`` drains."""
    fifo = tmp / "access.fifo"
    os.mkfifo(fifo)
    with (
        child(["cat", str(fifo)], stdout=subprocess.DEVNULL),  # first: nginx blocks opening
        nginx(tmp / "nginx-logged", access_log=fifo) as server,
    ):
        yield server


class RoverProfile:
    """``rover profile`` in a child process; sampling starts at its first progress line
    (printed once the program is compiled, the tables loaded and the window opened)."""

    def __init__(
        self,
        pid: int,
        profile_type: str,
        unwind: str,
        duration: float,
        output: Path,
        frequency: int | None = None,
    ) -> None:
        command = [sys.executable, "-m", "rover.cli", "profile", "--pid", str(pid)]
        command += ["--type", profile_type, "--unwind", unwind, "--duration", f"{duration}s"]
        command += ["--output", str(output)]
        if frequency is not None:
            command += ["--frequency", str(frequency)]
        self.duration = duration
        self.spawned = time.monotonic()
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.compiling_at = 0.0
        self.sampling_at: float | None = None
        self.ended_at = 0.0
        self.stderr: list[str] = []
        self.stdout = ""
        self._sampling = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if line.startswith("compiling") and not self.compiling_at:
                self.compiling_at = time.monotonic()
            if line.startswith("profiling:") and self.sampling_at is None:
                self.sampling_at = time.monotonic()
                self._sampling.set()
            self.stderr.append(line.rstrip("\n"))
        self._sampling.set()  # ended without sampling: nobody waits forever

    def wait_sampling(self, timeout: float = 180.0) -> float:
        """When sampling started (time.monotonic())."""
        self._sampling.wait(timeout)
        if self.sampling_at is None:
            self.kill()
            raise RuntimeError("rover profile did not start:\n" + "\n".join(self.stderr))
        return self.sampling_at

    def stop(self) -> None:
        """Ctrl-C: the run ends now, and the output is written."""
        self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 180.0) -> None:
        assert self.process.stdout is not None
        self.stdout = self.process.stdout.read()
        self.process.wait(timeout)
        self.ended_at = time.monotonic()
        self._reader.join()
        if self.process.returncode != 0:
            raise RuntimeError(
                f"rover profile failed ({self.process.returncode}):\n" + "\n".join(self.stderr)
            )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def losses(self) -> dict[str, int]:
        """What its end-of-run warning says was lost (it lists every non-zero loss)."""
        lost: dict[str, int] = {}
        for line in self.stderr:
            if line.startswith("warning: some data could not be collected:"):
                for name, n in re.findall(r"(\w+)=(\d+)", line):
                    lost[name] = int(n)
        return lost

    @property
    def wall_past_duration(self) -> float:
        return self.ended_at - self.spawned - self.duration

    @property
    def sampling_past_duration(self) -> float:
        assert self.sampling_at is not None
        return self.ended_at - self.sampling_at - self.duration

    @property
    def until_compile(self) -> float:
        """Python starting, imports, kernel headers found."""
        return self.compiling_at - self.spawned

    @property
    def compile_and_tables(self) -> float:
        """The compile (and the walk program verified), the target's tables loaded."""
        assert self.sampling_at is not None
        return self.sampling_at - self.compiling_at


def eh_frame_engine(profile_type: ProfileType, config):  # noqa: ANN001, ANN201
    """What ``make_engine(..., "eh_frame")`` builds, keeping its KernelTables to look into."""
    from rover.bpf.engine import ProfilerEngine, UnwindChoice
    from rover.hostfs import HostFS
    from rover.unwind.kernel_tables import DEFAULT_TABLE_BYTES, KernelTables
    from rover.unwind.process_space import ProcessSpaces

    kept: list[KernelTables] = []

    def tables(bpf) -> KernelTables:  # noqa: ANN001 - the loaded program
        spaces = ProcessSpaces(HostFS())
        kept.append(KernelTables(bpf, spaces, DEFAULT_TABLE_BYTES, config.max_files))
        return kept[-1]

    def choose(pid: int) -> UnwindChoice:
        return UnwindChoice(EH_FRAME, "benchmark")

    engine = ProfilerEngine(profile_type, headers(), config, choose, tables)
    if not kept:
        engine.close()
        raise RuntimeError("the kernel refused the CFI walk program")
    return engine, kept[0]


# -- 1. CFI decode time against readelf -----------------------------------------------


def build_table(path: str):  # noqa: ANN201 - rover.unwind.cfi_table.CfiTable
    from rover.unwind.tables import load_unwind_info

    with open(path, "rb") as stream:
        return load_unwind_info(stream).table


def readelf(paths: Sequence[str]) -> None:
    for path in paths:
        subprocess.run(
            ["readelf", "--debug-dump=frames", path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )


def bench_tables(rounds: int) -> None:
    from rover.symbols.elf_file import ElfImage

    print(
        f"| file | .eh_frame | rows | table | rover build (median of {rounds}) "
        "| `readelf --debug-dump=frames` | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, path in LIBRARIES.items():
        readelf([path])  # the page cache warm for both
        times: dict[str, list[float]] = {"rover": [], "readelf": []}
        table = None
        for _, who in rotations(("rover", "readelf"), rounds):
            start = time.perf_counter()
            if who == "rover":
                table = build_table(path)
            else:
                readelf([path])
            times[who].append(time.perf_counter() - start)
        assert table is not None
        with open(path, "rb") as stream:
            section = ElfImage(stream).section(".eh_frame")
        size = section.size if section is not None else 0
        ours, theirs = median(times["rover"]), median(times["readelf"])
        print(
            f"| {name} | {size / 1e6:.2f} MB | {len(table):,} | {table.nbytes / 1e6:.1f} MB "
            f"| {ours * 1000:,.0f} ms | {theirs * 1000:,.0f} ms | {ours / theirs:.1f}x |"
        )


# -- 2. the user-space reference unwinder ----------------------------------------------


def bench_throughput(rounds: int, seconds: float) -> None:
    from workloads.build import build

    from rover.unwind.process_space import ProcessSpaces
    from rover.unwind.unwinder import Unwinder

    rates: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "snap.bin"
        command = [str(build("unwind_snapshot")), str(out), "qsort"]
        with child(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as process:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == b"ready"
            head, _, stack = out.read_bytes().partition(b"\n")
            ip, sp, bp = (int(x, 16) for x in head.split())
            unwinder = Unwinder(ProcessSpaces())
            frames = len(unwinder.unwind(process.pid, ip, sp, bp, stack).addresses)  # warm
            for _ in range(rounds):
                count, start = 0, time.process_time()
                while time.process_time() - start < seconds:
                    for _ in range(1000):
                        unwinder.unwind(process.pid, ip, sp, bp, stack)
                    count += 1000
                rates.append(count / (time.process_time() - start))
    rate = median(rates)
    print(
        f"| stack (user-space reference unwinder, median of {rounds} x {seconds:.0f} s) "
        "| frames | samples/s per core (warm tables) | µs per sample |"
    )
    print("|---|---:|---:|---:|")
    print(
        f"| qsort comparator in libc ({len(stack) / 1024:.1f} KiB of stack) | {frames} "
        f"| {rate:,.0f} ({spread(rates)}) | {1e6 / rate:.1f} |"
    )


# -- 3. loading unwind rows into the kernel --------------------------------------------


STEPS = {
    "decode_s": "decode CFI",  # .eh_frame/.debug_frame -> rows (user space)
    "convert_s": "rows -> shards",  # -> struct unwind_row shards (user space)
    "fill_s": "fill inner map",  # the file's inner map created and filled (bpf())
    "attach_s": "into unwind_files",  # its slot set: a map-in-map update waits out RCU
}


@dataclass
class FileLoad:
    path: str
    decode_s: float = 0.0
    convert_s: float = 0.0
    fill_s: float = 0.0
    attach_s: float = 0.0
    rows: int = 0
    kernel_bytes: int = 0

    @property
    def total_s(self) -> float:
        return sum(getattr(self, step) for step in STEPS)


@dataclass
class LoadResult:
    total_s: float
    publish_s: float  # the process's mapping table and pid filter entry, each write
    files: dict[str, FileLoad] = field(default_factory=dict)  # by file key

    def sum(self, step: str) -> float:
        return sum(getattr(f, step) for f in self.files.values())


@contextlib.contextmanager
def patched(patches: Sequence[tuple[Any, str, Any]]) -> Iterator[None]:
    """Set each (owner, name, value) for the while; then put back what was there."""
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, original in saved:
            if original is None:
                delattr(owner, name)  # inherited (or a method of the instance's class)
            else:
                setattr(owner, name, original)


@contextlib.contextmanager
def timed_loading(tables) -> Iterator[tuple[dict[str, FileLoad], list[float]]]:  # noqa: ANN001
    """Time what loading does, per file (STEPS) and for the process (the ``proc_maps`` and
    ``pids`` writes): around ``ProcessSpaces.load``, ``kernel_rows``, ``shard_elements``,
    rover's ``bpf()`` calls and bcc's map writes."""
    from bcc import table as bcc_table

    from rover.bpf import syscall
    from rover.unwind import kernel_tables

    by_path: dict[str, FileLoad] = {}
    current: list[FileLoad] = []  # the file the loader thread works on
    publish = [0.0]

    def timed(function: Callable, step: str | None) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                if step is None:
                    publish[0] += spent
                elif current:
                    setattr(current[-1], step, getattr(current[-1], step) + spent)

        return wrapper

    decode = timed(tables.spaces.load, "decode_s")

    def load(pid: int, module) -> None:  # noqa: ANN001 - UnwindModule
        path = module.mapping.path or module.mapping.module
        current.append(by_path.setdefault(path, FileLoad(path)))
        decode(pid, module)

    patches = [
        (tables.spaces, "load", load),
        (kernel_tables, "kernel_rows", timed(kernel_tables.kernel_rows, "convert_s")),
        (kernel_tables, "shard_elements", timed(kernel_tables.shard_elements, "convert_s")),
        (syscall, "create_array", timed(syscall.create_array, "fill_s")),
        (syscall, "update", timed(syscall.update, "fill_s")),
        (
            bcc_table.MapInMapArray,
            "__setitem__",
            timed(bcc_table.ArrayBase.__setitem__, "attach_s"),
        ),
        (bcc_table.HashTable, "__setitem__", timed(bcc_table.HashTable.__setitem__, None)),
    ]
    with patched(patches):
        yield by_path, publish


def load_tables_once(pid: int) -> LoadResult:
    """A fresh engine (so no table is cached anywhere), then add_pid -> settle()."""
    from rover.bpf.engine import EngineConfig

    engine, tables = eh_frame_engine(ProfileType.ON_CPU, EngineConfig())
    try:
        with timed_loading(tables) as (by_path, publish):
            start = time.perf_counter()
            engine.add_pid(pid)
            if not engine.settle(60.0):
                raise RuntimeError(f"the tables of {pid} did not load in 60 s")
            result = LoadResult(time.perf_counter() - start, publish[0])
        sizes = tables.file_sizes()
        space = tables.spaces.space(pid)
        assert space is not None
        for module in space.modules:
            path = module.mapping.path or module.mapping.module
            if module.table is None or path not in by_path or module.file_key in result.files:
                continue
            loaded = result.files[module.file_key] = by_path[path]
            loaded.rows = len(module.table)
            loaded.kernel_bytes = sizes.get(module.file_key, 0)
        engine.remove_pid(pid)
    finally:
        engine.close()
    return result


def bench_load(rounds: int) -> None:
    llvm = "import bcc, sys; print('ready', flush=True); sys.stdin.read()"
    with (
        tempfile.TemporaryDirectory() as tmp,
        nginx(Path(tmp)) as (server, _),
        child(
            [sys.executable, "-c", llvm], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        ) as python,
    ):
        assert python.stdout is not None
        assert python.stdout.readline().strip() == b"ready"
        targets = {"nginx + its libraries": server.pid, "python importing bcc": python.pid}
        results: dict[str, list[LoadResult]] = defaultdict(list)
        reference: dict[str, list[float]] = defaultdict(list)
        for _, name in rotations(list(targets), rounds):
            results[name].append(load_tables_once(targets[name]))
            paths = [f.path for f in results[name][-1].files.values() if f.path.startswith("/")]
            start = time.perf_counter()
            readelf(paths)
            reference[name].append(time.perf_counter() - start)

    print(
        f"| process (median of {rounds} rounds, a fresh engine each) | files | rows "
        "| kernel memory | **add_pid -> settle()** (range) | "
        + " | ".join(STEPS.values())
        + " | mapping table writes | other | readelf -wf of the same files (reference) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        last = runs[-1]
        total = median([r.total_s for r in runs])
        steps = [median([r.sum(step) for r in runs]) for step in STEPS]
        publish = median([r.publish_s for r in runs])
        print(
            f"| {name} | {len(last.files)} | {sum(f.rows for f in last.files.values()):,} "
            f"| {sum(f.kernel_bytes for f in last.files.values()) / 2**20:.1f} MiB "
            f"| **{total * 1000:,.0f} ms** ({spread([r.total_s * 1000 for r in runs])}) | "
            + " | ".join(f"{step * 1000:,.0f} ms" for step in steps)
            + f" | {publish * 1000:,.0f} ms | {(total - sum(steps) - publish) * 1000:,.0f} ms "
            f"| {median(reference[name]) * 1000:,.0f} ms |"
        )
    print()
    print(
        "| file (both processes', largest first; median) | rows | kernel memory | "
        + " | ".join(STEPS.values())
        + " | file total |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    per_file: dict[str, list[FileLoad]] = defaultdict(list)
    for runs in results.values():
        for run in runs:
            for loaded in run.files.values():
                per_file[loaded.path].append(loaded)
    for path, loads in sorted(per_file.items(), key=lambda kv: -kv[1][0].kernel_bytes):
        print(
            f"| {Path(path).name} | {loads[0].rows:,} | {loads[0].kernel_bytes / 1024:,.0f} KiB | "
            + " | ".join(
                f"{median([getattr(f, step) for f in loads]) * 1000:,.1f} ms" for step in STEPS
            )
            + f" | {median([f.total_s for f in loads]) * 1000:,.0f} ms |"
        )


# -- 4. off-CPU: nginx with its access log to a FIFO -----------------------------------


@dataclass
class OffCpuRound:
    mode: str
    requests_per_s: float
    kernel_switches: int
    counted_switches: int
    losses: dict[str, int]
    wall_past_duration: float
    until_compile: float
    compile_and_tables: float
    sampling_past_duration: float
    off_cpu_s: float
    log_write_s: float
    log_write_named_s: float  # ...of which with nginx's callers named
    recursion_misses: int

    @property
    def counted_share(self) -> float:
        return self.counted_switches / max(1, self.kernel_switches)


def offcpu_round(pid: int, port: int, mode: str, seconds: int, tmp: Path) -> OffCpuRound:
    from rover.export import read_table

    output = tmp / f"offcpu-{mode}.pb.gz"
    rover = RoverProfile(pid, "off-cpu", mode, seconds, output)
    rate: list[float] = []
    try:
        opened = rover.wait_sampling()
        before = kernel_switches(pid)  # nginx idle: no switch in flight
        wrk = threading.Thread(target=lambda: rate.append(load(port, seconds, 16)))
        wrk.start()
        # The window closes `seconds` after it opened (the kernel counts nothing later):
        # read the kernel's count then, under load (a few ms late at most).
        time.sleep(max(0.0, opened + seconds - time.monotonic()))
        after = kernel_switches(pid)
        misses = sum(s.recursion_misses for s in prog_stats(rover.process.pid).values())
        wrk.join()
        rover.finish()
    finally:
        rover.kill()
    profile = read_table(str(output)).to_profile()
    counted = off_cpu = log_write = named = 0
    for key, values in profile.samples.items():
        counted += values[0]
        off_cpu += values[1]
        names = {frame.name for frame in key.frames}
        if names & LOG_WRITE_FRAMES:
            log_write += values[1]
            if any(name.startswith("ngx_http_") for name in names):
                named += values[1]
    return OffCpuRound(
        mode,
        rate[0],
        after - before,
        counted,
        rover.losses(),
        rover.wall_past_duration,
        rover.until_compile,
        rover.compile_and_tables,
        rover.sampling_past_duration,
        off_cpu / 1e9,
        log_write / 1e9,
        named / 1e9,
        misses,
    )


def bench_offcpu(rounds: int, seconds: int) -> None:
    results: dict[str, list[OffCpuRound]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp, logged_nginx(Path(tmp)) as (server, port):
        load(port, 2, 16)  # warm up
        for n, mode in rotations(MODES, rounds):
            result = offcpu_round(server.pid, port, mode, seconds, Path(tmp))
            results[mode].append(result)
            print(
                f"  round {n + 1} {mode}: {result.requests_per_s:,.0f} req/s, "
                f"{result.counted_switches:,} of {result.kernel_switches:,} switches "
                f"({result.counted_share:.2%}), losses {format_losses(result.losses)}, "
                f"+{result.wall_past_duration:.2f} s, log writes "
                f"{result.log_write_s / max(1e-9, result.off_cpu_s):.1%}",
                file=sys.stderr,
            )

    def med(mode: str, value: Callable[[OffCpuRound], float]) -> float:
        return median([value(r) for r in results[mode]])

    fp_rate = med(FRAME_POINTER, lambda r: r.requests_per_s)
    print(
        f"| nginx, access log to a FIFO, `wrk -t1 -c16`, off-CPU {seconds} s "
        f"(median of {rounds} rounds; range) | eh_frame | frame_pointer | target |"
    )
    print("|---|---:|---:|---|")

    def row(label: str, value: Callable[[OffCpuRound], float], fmt: str, target: str) -> None:
        cells = [
            f"{fmt.format(med(m, value))} ({spread([value(r) for r in results[m]], fmt)})"
            for m in MODES
        ]
        print(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    row("requests/s", lambda r: r.requests_per_s, "{:,.0f}", "")
    row(
        "requests/s relative to frame_pointer's median",
        lambda r: r.requests_per_s / fp_rate,
        "{:.3f}x",
        "",
    )
    # Each round's pair: the machine drifts between rounds more than the modes differ.
    paired = [
        eh.requests_per_s / fp.requests_per_s
        for eh, fp in zip(results[EH_FRAME], results[FRAME_POINTER], strict=True)
    ]
    print(
        "| requests/s, eh_frame / frame_pointer of the same round "
        f"| {median(paired):.3f}x ({spread(paired, '{:.3f}x')}) | | >= 0.97x |"
    )
    row("kernel's count of the worker's switches", lambda r: r.kernel_switches, "{:,.0f}", "")
    row("...a second", lambda r: r.kernel_switches / seconds, "{:,.0f}", "")
    row("switches in the profile", lambda r: r.counted_switches, "{:,.0f}", "")
    row("counted / kernel's count", lambda r: r.counted_share, "{:.2%}", ">= 97 %")
    row(
        "`rover profile` wall time past --duration",
        lambda r: r.wall_past_duration,
        "{:.2f} s",
        "<= 2 s",
    )
    row("...start: Python, imports, headers", lambda r: r.until_compile, "{:.2f} s", "")
    row(
        "...start: compile, walk verified, tables loaded",
        lambda r: r.compile_and_tables,
        "{:.2f} s",
        "",
    )
    row(
        "...end: from the window's end to the exit",
        lambda r: r.sampling_past_duration,
        "{:.2f} s",
        "",
    )
    row("off-CPU time in the profile", lambda r: r.off_cpu_s, "{:.2f} s", "")
    row(
        "share of it in access-log writes (libc `write`)",
        lambda r: r.log_write_s / max(1e-9, r.off_cpu_s),
        "{:.1%}",
        "eh_frame as large",
    )
    row(
        "...with nginx's callers named (`ngx_http_*`)",
        lambda r: r.log_write_named_s / max(1e-9, r.log_write_s),
        "{:.1%}",
        "",
    )
    row(
        "BPF runs the kernel skipped (recursion_misses)",
        lambda r: r.recursion_misses,
        "{:,.0f}",
        "",
    )
    for mode in MODES:
        total: dict[str, int] = defaultdict(int)
        for r in results[mode]:
            for name, n in r.losses.items():
                total[name] += n
        print(
            f"| losses, {mode}, all rounds (of {len(loss_counter_names())} loss counters) "
            f"| {format_losses(total)} | | 0 |"
        )


# -- 5. on-CPU request rates -----------------------------------------------------------

UNPROFILED, BCC = "not profiled", "profile-bpfcc -F 99"
ONCPU_VARIANTS = (UNPROFILED, EH_FRAME, FRAME_POINTER, BCC)


@contextlib.contextmanager
def profiler(variant: str, pid: int, tmp: Path) -> Iterator[None]:
    """``variant`` sampling (it has started when this enters); stopped at exit."""
    if variant == UNPROFILED:
        yield
        return
    if variant == BCC:
        # Its header comes before its compile: sampling starts once a perf event per CPU
        # is open.
        bcc = subprocess.Popen(
            ["profile-bpfcc", "-F", "99", "-f", "600"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 180
            while perf_events(bcc.pid) < (os.cpu_count() or 1) and time.monotonic() < deadline:
                if bcc.poll() is not None:
                    raise RuntimeError("profile-bpfcc exited")
                time.sleep(0.05)
            yield
            bcc.send_signal(signal.SIGINT)
            bcc.wait(180)
        finally:
            if bcc.poll() is None:
                bcc.kill()
                bcc.wait()
        return
    rover = RoverProfile(pid, "on-cpu", variant, 600, tmp / "oncpu.folded", frequency=99)
    try:
        rover.wait_sampling()
        yield
        rover.stop()
        rover.finish()
    finally:
        rover.kill()


def perf_events(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[perf_event]"
    return count


def bench_oncpu(rounds: int, seconds: int) -> None:
    variants: tuple[str, ...] = ONCPU_VARIANTS
    if shutil.which("profile-bpfcc") is None:
        print(
            "(profile-bpfcc is not installed: `apt-get install bpfcc-tools`; its row is left out)"
        )
        variants = tuple(v for v in variants if v != BCC)
    rates: dict[str, list[float]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp, nginx(Path(tmp)) as (server, port):
        load(port, 2)  # warm up
        for r, variant in rotations(variants, rounds):
            with profiler(variant, server.pid, Path(tmp)):
                rates[variant].append(load(port, seconds))
            print(f"  round {r + 1} {variant}: {rates[variant][-1]:,.0f} req/s", file=sys.stderr)
    base = median(rates[UNPROFILED])
    print(
        f"| nginx, access log off, `wrk -t1 -c8` {seconds} s, on-CPU 99 Hz ({rounds} rounds) "
        "| requests/s (median) | range | ratio of medians to not profiled "
        "| ratio to not profiled in the same round: median (range) | target |"
    )
    print("|---|---:|---:|---:|---:|---|")
    targets = {EH_FRAME: ">= 0.99x"}
    for variant in variants:
        values = rates[variant]
        # Each round's own reference: the machine drifts between rounds.
        paired = [v / b for v, b in zip(values, rates[UNPROFILED], strict=True)]
        print(
            f"| {variant} | {median(values):,.0f} | {spread(values)} "
            f"| {median(values) / base:.3f}x | {median(paired):.3f}x "
            f"({spread(paired, '{:.3f}x')}) | {targets.get(variant, '')} |"
        )


# -- 6. kernel cost per event ----------------------------------------------------------

ENTRY = {
    ProfileType.ON_CPU: "on_cpu_sample",
    ProfileType.OFF_CPU: "tracepoint__sched__sched_switch",
}
WALK = {ProfileType.ON_CPU: "on_cpu_walk", ProfileType.OFF_CPU: "off_cpu_walk"}


@dataclass
class CostRound:
    entry: ProgStats
    walk: ProgStats
    idle_ns_per_run: float  # the entry program with no process profiled
    events: int
    frames: float  # user frames per stack, weighted by events
    kernel_frames: float
    walk_info: dict[str, int]

    @property
    def per_run_ns(self) -> float:
        """(entry + walk run time) / entry runs, every run counted (a tail-called program's
        time is its caller's: the walk's own figures stay 0)."""
        return (self.entry.run_time_ns + self.walk.run_time_ns) / max(1, self.entry.run_cnt)

    @property
    def per_event_ns(self) -> float:
        """What a counted event costs on top of a run that profiles nothing (the program
        also runs for every other task: samples of other processes, their switches)."""
        spent = self.entry.run_time_ns + self.walk.run_time_ns
        return (spent - self.entry.run_cnt * self.idle_ns_per_run) / max(1, self.events)


def cost_round(
    profile_type: ProfileType,
    mode: str,
    pid: int,
    busy: Callable[[float], object],
    seconds: float,
    frequency: int = 99,
) -> CostRound:
    """Run time of the programs while ``busy(seconds)`` keeps ``pid`` busy, and before
    that, with nothing profiled, what a run costs that only filters."""
    from rover.bpf.engine import EngineConfig
    from rover.unwind.markers import LOADING, TRUNCATED
    from rover.unwind.modes import make_engine

    entry_name, walk_name = ENTRY[profile_type], WALK[profile_type]
    none = ProgStats(0, 0, 0)
    engine = make_engine(profile_type, headers(), EngineConfig(frequency=frequency), mode)
    try:
        stats = prog_stats()
        busy(max(2.0, seconds / 2))
        idle = prog_stats()[entry_name] - stats[entry_name]
        engine.add_pid(pid)
        engine.settle(30.0)
        engine.drain()
        stats = prog_stats()
        busy(seconds)
        after = prog_stats()
        engine.remove_pid(pid)
        result = engine.drain()
    finally:
        engine.close()
    events = sum(s.values[0] for s in result.stacks)

    def per_event(frames: Callable[[Any], int]) -> float:
        return sum(s.values[0] * frames(s) for s in result.stacks) / max(1, events)

    return CostRound(
        after[entry_name] - stats[entry_name],
        after.get(walk_name, none) - stats.get(walk_name, none),
        idle.run_time_ns / max(1, idle.run_cnt),
        events,
        per_event(lambda s: len([a for a in s.user if a not in (LOADING, TRUNCATED)])),
        per_event(lambda s: len(s.kernel)),
        {name: n for name, n in result.info.items() if n and name.startswith("walk_")},
    )


def print_cost_rows(results: dict[tuple[str, str], list[CostRound]], title: str) -> None:
    print(
        f"| {title} | user frames a stack | kernel frames | events counted | entry runs "
        "| (entry + walk run time) / entry runs | a run that only filters "
        "| **cost per counted event** (range) | eh_frame - frame_pointer | target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for (what, mode), runs in results.items():
        cost = median([r.per_event_ns for r in runs])
        other = results.get((what, FRAME_POINTER))
        extra = (
            f"{(cost - median([r.per_event_ns for r in other])) / 1000:+.2f} µs"
            if mode == EH_FRAME and other
            else ""
        )
        target = "<= 2 µs" if mode == EH_FRAME and "nginx" in title else ""
        info: dict[str, int] = {}
        for r in runs:
            for name, n in r.walk_info.items():
                info[name] = info.get(name, 0) + n
        note = f" ({', '.join(f'{k}={v:,}' for k, v in sorted(info.items()))})" if info else ""
        print(
            f"| {what}, {mode}{note} | {median([r.frames for r in runs]):.1f} "
            f"| {median([r.kernel_frames for r in runs]):.1f} "
            f"| {median([r.events for r in runs]):,.0f} "
            f"| {median([r.entry.run_cnt for r in runs]):,.0f} "
            f"| {median([r.per_run_ns for r in runs]) / 1000:.2f} µs "
            f"| {median([r.idle_ns_per_run for r in runs]) / 1000:.2f} µs "
            f"| **{cost / 1000:.2f} µs** "
            f"({spread([r.per_event_ns / 1000 for r in runs], '{:.2f}')}) "
            f"| {extra} | {target} |"
        )


# A stack of exactly N frames below main, built without frame pointers: the walk's cost
# per frame where every frame has the same (warm) row.
DEPTH_C = r"""
#include <stdlib.h>
static volatile unsigned long sink;
__attribute__((noinline)) static void spin(void) {
    for (;;)
        sink = sink * 6364136223846793005UL + 1;
}
__attribute__((noinline)) static int down(int n) {
    if (n <= 0) spin();
    int r = down(n - 1);
    sink += r;
    return r + 1;
}
int main(int argc, char **argv) { return down(atoi(argv[1])); }
"""
DEPTHS = (1, 25, 60, 120)


def bench_cost(rounds: int, seconds: int) -> None:
    nginx_results: dict[tuple[str, str], list[CostRound]] = defaultdict(list)
    depth_results: dict[tuple[str, str], list[CostRound]] = defaultdict(list)
    on, off = ProfileType.ON_CPU, ProfileType.OFF_CPU
    with tempfile.TemporaryDirectory() as tmp, bpf_stats_enabled():
        with nginx(Path(tmp) / "plain") as (server, port):
            load(port, 2)
            for frequency in (99, 999):
                for _, mode in rotations(MODES, rounds):
                    nginx_results[(f"on-CPU {frequency} Hz, a sample", mode)].append(
                        cost_round(
                            on, mode, server.pid, lambda s: load(port, s), seconds, frequency
                        )
                    )
        with logged_nginx(Path(tmp)) as (server, port):
            load(port, 2, 16)
            for _, mode in rotations(MODES, rounds):
                nginx_results[("off-CPU, a switch", mode)].append(
                    cost_round(off, mode, server.pid, lambda s: load(port, s, 16), seconds)
                )
        source = Path(tmp) / "depth.c"
        source.write_text(DEPTH_C)
        exe = Path(tmp) / "depth"
        command = ["gcc", "-O2", "-fomit-frame-pointer", "-o", str(exe), str(source)]
        subprocess.run(command, check=True)
        for depth in DEPTHS:
            with child(["taskset", "-c", "1", str(exe), str(depth)]) as spinner:
                for _, mode in rotations(MODES, rounds):
                    depth_results[(f"down() x {depth}", mode)].append(
                        cost_round(on, mode, spinner.pid, time.sleep, seconds / 2, 999)
                    )
    print_cost_rows(
        nginx_results,
        f"nginx under wrk, {seconds} s a round, {rounds} rounds a row (median)",
    )
    print()
    print_cost_rows(
        depth_results,
        f"a spinning leaf under N calls, on-CPU 999 Hz, {seconds / 2:.0f} s a round",
    )
    walked = [
        (median([r.frames for r in runs]), median([r.per_event_ns for r in runs]))
        for (_, mode), runs in depth_results.items()
        if mode == EH_FRAME
    ]
    if len(walked) >= 2:
        slope, intercept = statistics.linear_regression(*zip(*walked, strict=True))
        print(
            f"\neh_frame on-CPU, least squares over the depths: {intercept / 1000:.2f} µs "
            f"+ {slope:.0f} ns per user frame (warm rows: every frame the same function)"
        )


# -- 7. off-CPU at a high switch rate --------------------------------------------------


@dataclass
class PingpongRound:
    trips_per_s: float
    counted: int = 0
    kernel_switches: int = 0
    losses: dict[str, int] = field(default_factory=dict)


def run_pingpong(exe: Path, seconds: float, engine=None) -> PingpongRound:  # noqa: ANN001
    """``taskset -c 1 pingpong_c SECONDS``; when profiled, drained every second."""
    process = subprocess.Popen(
        ["taskset", "-c", "1", str(exe), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    counted, losses = 0, defaultdict[str, int](int)

    def take(result) -> None:  # noqa: ANN001 - DrainResult
        nonlocal counted
        counted += sum(s.values[0] for s in result.stacks if s.tgid == process.pid)
        for name, n in result.counters.items():
            losses[name] += n

    try:
        if engine is not None:
            # Added once taskset has become pingpong_c: the maps read then are its own.
            deadline = time.monotonic() + 5
            while os.readlink(f"/proc/{process.pid}/exe") != str(exe):
                if time.monotonic() > deadline:
                    raise RuntimeError("pingpong_c did not start")
                time.sleep(0.001)
            engine.add_pid(process.pid)
        drained = time.monotonic()
        while True:  # wait4, not poll(): its rusage is the kernel's count of the switches
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == process.pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            if engine is not None and time.monotonic() - drained >= 1.0:
                take(engine.drain())
                drained = time.monotonic()
            time.sleep(0.05)
        if engine is not None:
            engine.remove_pid(process.pid)
            take(engine.drain())
        assert process.stdout is not None
        output = process.stdout.read()
    finally:
        if process.returncode is None:
            process.kill()
            process.wait()
    return PingpongRound(
        int(output.split()[1]) / seconds, counted, usage.ru_nvcsw + usage.ru_nivcsw, dict(losses)
    )


def bench_pingpong(rounds: int, seconds: int) -> None:
    from workloads.build import build

    from rover.bpf.engine import EngineConfig
    from rover.unwind.modes import make_engine

    exe = build("pingpong_c")
    results: dict[str, list[PingpongRound]] = defaultdict(list)
    for r, variant in rotations((UNPROFILED, EH_FRAME, FRAME_POINTER), rounds):
        if variant == UNPROFILED:
            results[variant].append(run_pingpong(exe, seconds))
        else:
            engine = make_engine(ProfileType.OFF_CPU, headers(), EngineConfig(), variant)
            try:
                # Its files' rows in the kernel first, so the measured process is profiled
                # from its first milliseconds (adding it waits for nothing).
                run_pingpong(exe, 1.0, engine)
                results[variant].append(run_pingpong(exe, seconds, engine))
            finally:
                engine.close()
        last = results[variant][-1]
        print(
            f"  round {r + 1} {variant}: {last.trips_per_s:,.0f} round trips/s, "
            f"losses {format_losses(last.losses)}",
            file=sys.stderr,
        )
    base = median([r.trips_per_s for r in results[UNPROFILED]])
    print(
        f"| pingpong_c, 2 threads on CPU 1, {seconds} s ({rounds} rounds, median) "
        "| round trips/s | range | ratio | switches counted / kernel's count (whole life) "
        "| losses |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for variant in (UNPROFILED, EH_FRAME, FRAME_POINTER):
        runs = results[variant]
        rate = median([r.trips_per_s for r in runs])
        total: dict[str, int] = defaultdict(int)
        for run in runs:
            for name, n in run.losses.items():
                total[name] += n
        share = (
            ""
            if variant == UNPROFILED
            else f"{median([r.counted / max(1, r.kernel_switches) for r in runs]):.2%}"
        )
        print(
            f"| {variant} | {rate:,.0f} | {spread([r.trips_per_s for r in runs])} "
            f"| {rate / base:.3f}x | {share} "
            f"| {'' if variant == UNPROFILED else format_losses(total)} |"
        )


# -- main -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}"
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out")
    parser.add_argument("--rounds", type=int, help="rounds per variant (default: per part)")
    parser.add_argument("--seconds", type=int, default=10, help="load per measurement")
    args = parser.parse_args()
    chosen = [p for p in args.parts.split(",") if p]
    skipped = {p for p in args.skip.split(",") if p}
    unknown = (set(chosen) | skipped) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    runs: dict[str, Callable[[], None]] = {
        "tables": lambda: bench_tables(args.rounds or 5),
        "throughput": lambda: bench_throughput(args.rounds or 3, 3.0),
        "load": lambda: bench_load(args.rounds or 5),
        "offcpu": lambda: bench_offcpu(args.rounds or 5, args.seconds),
        "oncpu": lambda: bench_oncpu(args.rounds or 6, args.seconds),
        "cost": lambda: bench_cost(args.rounds or 2, args.seconds),
        "pingpong": lambda: bench_pingpong(args.rounds or 3, args.seconds),
    }
    started = time.monotonic()
    for part in PARTS:
        if part not in chosen or part in skipped:
            continue
        print(f"## {part} ({machine_state()})", flush=True)
        part_started = time.monotonic()
        runs[part]()
        print(
            f"\n({part}: {time.monotonic() - part_started:.0f} s; {machine_state()})\n",
            flush=True,
        )
    print(f"(all: {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
