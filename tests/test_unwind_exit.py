"""The .eh_frame engine for real: samples of a process that exits before they are unwound.

The engine unwinds each record when its consumer thread takes it from the ring buffer.
These tests hold that thread back while a short workload (built without frame pointers)
runs and exits, then let it go: every sample is then unwound after the process is gone,
from the mappings read (and the tables loaded) at ``add_pid``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from rover.bpf.engine import DrainResult, EngineConfig
from rover.bpf.headers import HeaderSearch
from rover.profile import ProfileType
from rover.symbols import Symbolizer
from rover.unwind.engine import DwarfProfilerEngine, UnwindSettings

pytestmark = pytest.mark.bpf

CHAIN = ["main", "chain_a", "chain_b"]
CPU_SECONDS = "1.5"  # chain_c cpu: runs this long after "ready", then exits
SLEEPS = 50  # chain_c sleep: this many 2 ms sleeps after "go", then exits
# Room for every record taken while the consumer is held (~300 x 16 KiB): none may drop.
SETTINGS = UnwindSettings(ring_buffer_bytes=32 << 20)


@pytest.fixture(scope="module")
def headers():
    return HeaderSearch().find()  # raises (the test errors) when there are no headers


@contextlib.contextmanager
def consumer_held(engine: DwarfProfilerEngine) -> Iterator[None]:
    """Deliberate white-box hold: the consumer thread takes ``_ring_lock`` for each poll,
    so holding it here leaves every record in the ring buffer, not unwound, until release."""
    with engine._ring_lock:
        yield
        assert engine.samples_unwound == 0, "a sample was unwound while the consumer was held"


def reap(process) -> None:
    """Wait for the workload's own exit (not a kill) and make sure its /proc entry is gone."""
    assert process.proc.wait(timeout=15) == 0, process.stderr_text()
    assert not Path(f"/proc/{process.pid}").exists()


def counter(results: list[DrainResult], name: str) -> int:
    return sum(r.counters.get(name, 0) for r in results)


def samples(results: list[DrainResult]) -> int:
    return sum(s.values[0] for r in results for s in r.stacks)


def contains_in_order(frames: list[str], chain: list[str]) -> bool:
    n = len(chain)
    return any(frames[i : i + n] == chain for i in range(len(frames) - n + 1))


def named_stacks(results, symbolizer: Symbolizer, pid: int) -> list[tuple[list[str], int]]:
    """(root-first user frame names, count) per stack; the symbolizer read the maps in time."""
    stacks = []
    for result in results:
        for s in result.stacks:
            assert s.tgid == pid
            frames = [f.name for f in reversed(symbolizer.user_frames(pid, s.user))]
            stacks.append((frames, s.values[0]))
    return stacks


def chained(stacks: list[tuple[list[str], int]]) -> int:
    return sum(n for frames, n in stacks if contains_in_order(frames, CHAIN))


def run_cpu_workload_held(engine, spawn, workloads, forget: bool) -> tuple[int, Symbolizer]:
    """chain_c cpu profiled from start to exit with the consumer held; with ``forget``, its
    mappings are dropped before release, as if they had never been readable."""
    with consumer_held(engine):
        busy = spawn([workloads.build("chain_c"), "cpu", CPU_SECONDS])
        engine.add_pid(busy.pid)
        symbolizer = Symbolizer()
        symbolizer.prepare(busy.pid)
        reap(busy)
        assert engine.events() > 0, "no sample was taken while the process ran"
        if forget:
            engine.spaces.forget(busy.pid)
    return busy.pid, symbolizer


def drain_all(engine: DwarfProfilerEngine, pid: int) -> list[DrainResult]:
    results = [engine.drain()]
    engine.remove_pid(pid)
    results.append(engine.drain())  # nothing is left in flight: the process is gone
    return results


def test_on_cpu_samples_unwind_fully_after_the_process_exited(headers, spawn, workloads):
    engine = DwarfProfilerEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=199), SETTINGS)
    try:
        pid, symbolizer = run_cpu_workload_held(engine, spawn, workloads, forget=False)
        results = drain_all(engine, pid)
        files_loaded = engine.spaces.counters["cfi_files_loaded"]
    finally:
        engine.close()
    total = samples(results)
    assert counter(results, "record_errors") == 0
    assert total > 30  # ~280 on an idle machine; fewer when other work shares the CPUs
    assert counter(results, "ringbuf_drops") == 0
    assert total == counter(results, "events")  # every sample counted, after the exit
    assert counter(results, "unwind_no_maps") == 0
    # chain_c's and libc's tables were loaded (at add_pid; a file first needed after the
    # exit is found again on the host by inode: test_unwind_cfi.py checks that path).
    assert files_loaded >= 2
    stacks = named_stacks(results, symbolizer, pid)
    assert chained(stacks) / total > 0.9, stacks[:3]


def test_on_cpu_samples_without_mappings_keep_their_leaf(headers, spawn, workloads):
    engine = DwarfProfilerEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=199), SETTINGS)
    try:
        pid, symbolizer = run_cpu_workload_held(engine, spawn, workloads, forget=True)
        results = drain_all(engine, pid)
    finally:
        engine.close()
    total = samples(results)
    assert counter(results, "record_errors") == 0
    assert total > 0
    assert counter(results, "ringbuf_drops") == 0
    assert total == counter(results, "events")
    assert counter(results, "unwind_no_maps") == total
    assert all(len(s.user) == 1 for r in results for s in r.stacks)
    leaves = {frames[-1] for frames, _ in named_stacks(results, symbolizer, pid)}
    assert "chain_compare" in leaves, leaves  # the leaf is the sampled instruction pointer


def test_off_cpu_samples_unwind_fully_after_the_process_exited(headers, spawn, workloads):
    sleeper = spawn([workloads.build("chain_c"), "sleep", str(SLEEPS), "2"])
    symbolizer = Symbolizer()
    symbolizer.prepare(sleeper.pid)
    engine = DwarfProfilerEngine(ProfileType.OFF_CPU, headers, settings=SETTINGS)
    try:
        with consumer_held(engine):
            engine.add_pid(sleeper.pid)
            sleeper.send_line("go")
            assert sleeper.read_line(timeout=15) == f"done {SLEEPS}"
            reap(sleeper)
        results = drain_all(engine, sleeper.pid)
    finally:
        engine.close()
    switches = samples(results)
    assert counter(results, "record_errors") == 0
    assert counter(results, "ringbuf_drops") == 0
    assert counter(results, "offcpu_unpaired") == 0
    fewest = workloads.fewest_switches(SLEEPS)
    assert counter(results, "events") >= switches >= fewest
    assert counter(results, "unwind_no_maps") == 0
    assert sum(s.values[1] for r in results for s in r.stacks) >= fewest * 2_000_000
    stacks = named_stacks(results, symbolizer, sleeper.pid)
    assert chained(stacks) >= fewest, stacks[:3]
