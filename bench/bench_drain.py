"""Drain and symbolize 10,000+ distinct stacks: time of each half.

Builds bench/workloads/call_tree.c (16384 distinct hot stacks), samples it
on-CPU at a high rate until the kernel map holds at least 10,000 distinct
stacks, then times one drain (kernel maps -> raw stacks) and the
symbolization of every stack into a profile. Run as root:
    .venv/bin/python bench/bench_drain.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rover.bpf.engine import EngineConfig, ProfilerEngine
from rover.bpf.headers import HeaderSearch
from rover.profile import Profile, ProfileType
from rover.symbols import Symbolizer
from rover.tasks.stacks import add_raw_stacks

HERE = Path(__file__).resolve().parent
TARGET_STACKS = 10_000


def build_workload(out_dir: Path) -> Path:
    binary = out_dir / "call_tree"
    subprocess.run(
        ["gcc", "-O1", "-fno-omit-frame-pointer", "-fno-optimize-sibling-calls", "-fno-inline",
         "-o", str(binary), str(HERE / "workloads" / "call_tree.c")],
        check=True,
    )  # fmt: skip
    return binary


def count_keys(engine: ProfilerEngine) -> int:
    return engine._counts.active_len()


def main() -> int:
    headers = HeaderSearch().find()
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_workload(Path(tmp))
        proc = subprocess.Popen([str(binary)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        config = EngineConfig(frequency=10_000, max_stacks=32768, stack_map_size=65536)
        engine = ProfilerEngine(ProfileType.ON_CPU, headers, config)
        try:
            symbolizer = Symbolizer()
            symbolizer.prepare(proc.pid)
            engine.add_pid(proc.pid)
            deadline = time.monotonic() + 60
            while count_keys(engine) < TARGET_STACKS and time.monotonic() < deadline:
                time.sleep(0.5)
            engine.remove_pid(proc.pid)

            started = time.perf_counter()
            drained = engine.drain()
            drain_s = time.perf_counter() - started

            profile = Profile.new(ProfileType.ON_CPU, period_ns=1_000_000_000 // 10_000)
            started = time.perf_counter()
            add_raw_stacks(profile, drained.stacks, symbolizer, {proc.pid})
            symbolize_s = time.perf_counter() - started
        finally:
            engine.close()
            proc.kill()
            proc.wait()
    n = len(drained.stacks)
    frames = sum(len(s.user) + len(s.kernel) for s in drained.stacks)
    print(f"distinct stacks drained:   {n} ({frames} frames, {drained.counters['events']} samples)")
    print(
        f"drain (kernel -> raw):      {drain_s * 1000:8.1f} ms  ({drain_s / n * 1e6:.1f} us/stack)"
    )
    per_stack = symbolize_s / n * 1e6
    print(f"symbolize (raw -> profile): {symbolize_s * 1000:8.1f} ms  ({per_stack:.1f} us/stack)")
    print(f"total:                      {(drain_s + symbolize_s) * 1000:8.1f} ms for {n} stacks")
    if n < TARGET_STACKS:
        print(f"warning: only {n} distinct stacks were collected (< {TARGET_STACKS})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
