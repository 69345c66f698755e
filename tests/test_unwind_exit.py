"""eh_frame unwinding of a process that exits mid-run.

Stacks are walked in the kernel when a sample is taken, so a process that exits
before the next drain loses nothing: its samples are counted with their whole
stacks, and its mapping table goes when it is removed.
"""

from __future__ import annotations

import ctypes as ct
from pathlib import Path

import pytest

from rover.bpf.engine import DrainResult, EngineConfig
from rover.bpf.headers import HeaderSearch
from rover.profile import ProfileType
from rover.symbols import Symbolizer
from rover.unwind.modes import make_engine

pytestmark = pytest.mark.bpf

CHAIN = ["main", "chain_a", "chain_b"]
CPU_SECONDS = "1.5"  # chain_c cpu: runs this long after "ready", then exits
SLEEPS = 50  # chain_c sleep: this many 2 ms sleeps after "go", then exits


@pytest.fixture(scope="module")
def headers():
    return HeaderSearch().find()  # raises (the test errors) when there are no headers


def reap(process) -> None:
    """Wait for the workload's own exit (not a kill) and make sure its /proc entry is gone."""
    assert process.proc.wait(timeout=15) == 0, process.stderr_text()
    assert not Path(f"/proc/{process.pid}").exists()


def samples(results: list[DrainResult]) -> int:
    return sum(s.values[0] for r in results for s in r.stacks)


def chained(results, symbolizer: Symbolizer, pid: int) -> int:
    found = 0
    for result in results:
        for s in result.stacks:
            frames = [f.name for f in reversed(symbolizer.user_frames(pid, s.user))]
            n = len(CHAIN)
            if any(frames[i : i + n] == CHAIN for i in range(len(frames) - n + 1)):
                found += s.values[0]
    return found


def drain_after_exit(engine, pid: int) -> list[DrainResult]:
    results = [engine.drain()]
    proc_maps = engine._program.map("proc_maps")
    assert ct.c_uint32(pid) in proc_maps  # until removed: a late sample still walks
    engine.remove_pid(pid)
    assert ct.c_uint32(pid) not in proc_maps
    results.append(engine.drain())
    return results


def test_on_cpu_samples_of_a_process_that_exited_are_whole(headers, spawn, workloads):
    engine = make_engine(ProfileType.ON_CPU, headers, EngineConfig(frequency=199), "eh_frame")
    try:
        busy = spawn([workloads.build("chain_c"), "cpu", CPU_SECONDS])
        engine.add_pid(busy.pid)
        symbolizer = Symbolizer()
        symbolizer.prepare(busy.pid)
        reap(busy)
        results = drain_after_exit(engine, busy.pid)
    finally:
        engine.close()
    total = samples(results)
    assert total > 30  # ~280 on an idle machine; fewer when other work shares the CPUs
    assert total == sum(r.info["events"] for r in results)
    assert all(n == 0 for r in results for n in r.counters.values()), results[0].counters
    assert chained(results, symbolizer, busy.pid) / total > 0.9


def test_off_cpu_switches_of_a_process_that_exited_are_whole(headers, spawn, workloads):
    sleeper = spawn([workloads.build("chain_c"), "sleep", str(SLEEPS), "2"])
    symbolizer = Symbolizer()
    symbolizer.prepare(sleeper.pid)
    engine = make_engine(ProfileType.OFF_CPU, headers, EngineConfig(), "eh_frame")
    try:
        engine.add_pid(sleeper.pid)
        sleeper.send_line("go")
        assert sleeper.read_line(timeout=15) == f"done {SLEEPS}"
        reap(sleeper)
        results = drain_after_exit(engine, sleeper.pid)
        assert engine.forget_exited_threads() == 0  # its last switch-out was never kept
    finally:
        engine.close()
    switches = samples(results)
    fewest = workloads.fewest_switches(SLEEPS)
    assert sum(r.info["events"] for r in results) == switches >= fewest
    assert all(n == 0 for r in results for n in r.counters.values()), results[0].counters
    assert sum(s.values[1] for r in results for s in r.stacks) >= fewest * 2_000_000
    assert chained(results, symbolizer, sleeper.pid) >= fewest
