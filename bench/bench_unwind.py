"""Benchmarks of .eh_frame unwinding (rover.unwind), measured in one run.

    .venv/bin/python bench/bench_unwind.py [--repeat N] [--seconds S] [--skip-service]

1. CFI table build time for libc and libLLVM-14 against
   ``readelf --debug-dump=frames`` on the same file (readelf decodes the same
   entries, and prints them).
2. Unwinding throughput in user space with warm tables: a real stack copied by
   the ``unwind_snapshot`` workload from inside qsort's comparator (15 frames,
   through libc without frame pointers), unwound repeatedly on one core.
3. A Debian nginx under ``wrk`` load (needs root and BPF): requests per second
   unprofiled, profiled by ``rover profile`` in frame_pointer mode and in
   eh_frame mode at the default frequency, and the CPU ``rover profile`` used;
   and the share of its samples that name one of nginx's own functions.
4. Off-CPU in eh_frame mode at a high context-switch rate (needs root and
   BPF): two threads of ``bench/workloads/pingpong.c``, on one CPU, pass a byte through
   pipes; round trips per second unprofiled, and profiled with switch-out
   repeats (memos, the default), with a stack copy on every switch, and in
   frame_pointer mode (the reference); the profiler's CPU, ring buffer drops,
   and stack copies sent.

Prints a markdown table per part.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from rover.symbols.elf_file import ElfImage  # noqa: E402
from rover.unwind.process_space import ProcessSpaces  # noqa: E402
from rover.unwind.tables import load_unwind_info  # noqa: E402
from rover.unwind.unwinder import Unwinder  # noqa: E402

LIBRARIES = {
    "libc.so.6": "/lib/x86_64-linux-gnu/libc.so.6",
    "libLLVM-14.so.1": "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1",
}


def median_time(function, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def build_table(path: str):
    with open(path, "rb") as stream:
        return load_unwind_info(stream).table


def readelf(path: str) -> None:
    subprocess.run(
        ["readelf", "--debug-dump=frames", path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def bench_tables(repeat: int) -> None:
    print("| file | .eh_frame | rows | table | rover build | readelf --debug-dump=frames |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, path in LIBRARIES.items():
        readelf(path)  # warm the page cache for both
        ours, table = median_time(lambda p=path: build_table(p), repeat)
        theirs, _ = median_time(lambda p=path: readelf(p), repeat)
        with open(path, "rb") as stream:
            size = ElfImage(stream).section(".eh_frame").size
        print(
            f"| {name} | {size / 1e6:.2f} MB | {len(table):,} | {table.nbytes / 1e6:.1f} MB "
            f"| {ours * 1000:.0f} ms | {theirs * 1000:.0f} ms |"
        )


def bench_throughput(seconds: float) -> None:
    from workloads.build import build

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "snap.bin"
        process = subprocess.Popen(
            [build("unwind_snapshot"), out, "qsort"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert process.stdout.readline().strip() == b"ready"
            head, _, stack = out.read_bytes().partition(b"\n")
            ip, sp, bp = (int(x, 16) for x in head.split())
            unwinder = Unwinder(ProcessSpaces())
            frames = len(unwinder.unwind(process.pid, ip, sp, bp, stack).addresses)  # warm
            count, start = 0, time.process_time()
            while time.process_time() - start < seconds:
                for _ in range(1000):
                    unwinder.unwind(process.pid, ip, sp, bp, stack)
                count += 1000
            elapsed = time.process_time() - start
        finally:
            process.kill()
            process.wait()
    print("| stack | frames | samples/s per core (warm tables) | µs per sample |")
    print("|---|---:|---:|---:|")
    print(
        f"| qsort comparator in libc (16 KiB window) | {frames} | {count / elapsed:,.0f} "
        f"| {elapsed / count * 1e6:.1f} |"
    )


def rover_profile(pid: int, unwind: str, seconds: int) -> tuple[subprocess.Popen, Path]:
    out = Path(tempfile.mkdtemp()) / "profile.folded"
    command = [sys.executable, "-m", "rover.cli", "profile", "--pid", str(pid), "--quiet"]
    command += ["--duration", f"{seconds + 4}s", "--unwind", unwind, "--output", str(out)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE), out


def bench_service(seconds: int) -> None:
    from nginx_server import load, nginx

    rows = []
    with tempfile.TemporaryDirectory() as tmp, nginx(Path(tmp)) as (server, port):
        load(port, 2)  # warm up
        rows.append(("not profiled", load(port, seconds), None, None))
        for unwind in ("frame_pointer", "eh_frame"):
            profiler, out = rover_profile(server.pid, unwind, seconds)
            time.sleep(3)  # compile and start before the load
            rps = load(port, seconds)
            _, status, usage = os.wait4(profiler.pid, 0)
            stderr = profiler.stderr.read().decode() if profiler.stderr else ""
            if status != 0:
                raise RuntimeError(f"rover profile failed: {stderr}")
            samples = sum(int(line.rsplit(" ", 1)[1]) for line in out.read_text().splitlines())
            cpu = usage.ru_utime + usage.ru_stime
            rows.append((unwind, rps, cpu / (seconds + 4), samples))
    print(
        f"| nginx under wrk (1 thread, 8 connections, {seconds}s) | requests/s "
        "| rover profile CPU (cores, whole run incl. compile) | samples |"
    )
    print("|---|---:|---:|---:|")
    for name, rps, cpu, samples in rows:
        cpu_text = "" if cpu is None else f"{cpu:.3f}"
        print(f"| {name} | {rps:,.0f} | {cpu_text} | {samples or ''} |")


def bench_named_share(seconds: float) -> None:
    """Share of nginx's on-CPU samples that name one of its own functions, per mode."""
    from nginx_server import nginx, profile_under_load

    from rover.bpf.engine import EngineConfig, ProfilerEngine
    from rover.bpf.headers import HeaderSearch
    from rover.profile import ProfileType
    from rover.unwind.engine import DwarfProfilerEngine

    headers = HeaderSearch().find()
    config = EngineConfig(frequency=499)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, nginx(Path(tmp)) as (server, port):
        for name in ("frame_pointer", "eh_frame"):
            if name == "frame_pointer":
                engine = ProfilerEngine(ProfileType.ON_CPU, headers, config)
            else:
                engine = DwarfProfilerEngine(ProfileType.ON_CPU, headers, config)
            try:
                total, named, _ = profile_under_load(engine, server.pid, port, seconds)
            finally:
                engine.close()
            rows.append((name, total, named))
    print(f"| nginx under wrk, 499 Hz, {seconds:.0f}s | samples | naming an nginx function |")
    print("|---|---:|---:|")
    for name, total, named in rows:
        print(f"| {name} | {total:,} | {named / max(1, total):.1%} |")


def build_pingpong(directory: Path) -> Path:
    exe = directory / "pingpong"
    source = ROOT / "bench" / "workloads" / "pingpong.c"
    command = ["gcc", "-O2", "-fomit-frame-pointer", "-pthread", "-o", str(exe), str(source)]
    subprocess.run(command, check=True)
    return exe


def run_pingpong(exe: Path, seconds: float, engine=None) -> tuple[int, dict[str, int]]:
    """Round trips, and the engine's counters over the run (drained every second)."""
    # Both threads on one CPU: every pass is a context switch, and the rate is steady.
    # (Set before the exec, so the profiled pid is pingpong from the start.)
    process = subprocess.Popen(
        [str(exe), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {0}),
    )
    counters: dict[str, int] = {}
    if engine is not None:
        engine.add_pid(process.pid)
        while process.poll() is None:
            time.sleep(1.0)
            for name, n in engine.drain().counters.items():
                counters[name] = counters.get(name, 0) + n
        engine.remove_pid(process.pid)
        for name, n in engine.drain().counters.items():
            counters[name] = counters.get(name, 0) + n
    output, _ = process.communicate()
    return int(output.split()[1]), counters


def bench_offcpu_switches(seconds: float) -> None:
    from rover.bpf.engine import ProfilerEngine
    from rover.bpf.headers import HeaderSearch
    from rover.profile import ProfileType
    from rover.unwind.engine import DwarfProfilerEngine, UnwindSettings

    headers = HeaderSearch().find()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_pingpong(Path(tmp))
        trips, _ = run_pingpong(exe, seconds)
        rows.append(("not profiled", trips / seconds, None, None, None, None))
        for name in ("eh_frame, repeats (default)", "eh_frame, a copy per switch", "frame_pointer"):
            if name == "frame_pointer":
                engine = ProfilerEngine(ProfileType.OFF_CPU, headers)
            else:
                settings = UnwindSettings(offcpu_repeats="repeats" in name)
                engine = DwarfProfilerEngine(ProfileType.OFF_CPU, headers, settings=settings)
            try:
                cpu = time.process_time()
                trips, counters = run_pingpong(exe, seconds, engine)
                cpu = time.process_time() - cpu
                copies = getattr(engine, "samples_unwound", None)
            finally:
                engine.close()
            switches = counters.get("events", 0)
            drops = counters.get("ringbuf_drops", 0)
            rows.append((name, trips / seconds, cpu / seconds, switches, drops, copies))
    print(
        f"| pingpong, off-CPU ({seconds:.0f}s) | round trips/s | profiler CPU (cores) "
        "| switches counted | ring buffer drops | stacks copied and unwound |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, rate, cpu, switches, drops, copies in rows:
        cells = [
            "" if v is None else f"{v:,.3f}" if isinstance(v, float) else f"{v:,}"
            for v in (cpu, switches, drops, copies)
        ]
        print(f"| {name} | {rate:,.0f} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="load per measurement")
    parser.add_argument("--skip-service", action="store_true")
    args = parser.parse_args()
    bench_tables(args.repeat)
    print()
    bench_throughput(3.0)
    print()
    if not args.skip_service:
        bench_service(args.seconds)
        print()
        bench_named_share(args.seconds)
        print()
        bench_offcpu_switches(args.seconds)


if __name__ == "__main__":
    main()
