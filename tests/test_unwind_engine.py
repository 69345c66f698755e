"""The .eh_frame engine for real: BPF stack copies unwound in user space."""

from __future__ import annotations

import sys
import time

import pytest

from rover.bpf.engine import EngineConfig, ProfilerEngine
from rover.bpf.headers import HeaderSearch
from rover.profile import ProfileType
from rover.symbols import Symbolizer
from rover.unwind.engine import DwarfProfilerEngine, UnwindSettings
from rover.unwind.markers import TRUNCATED
from rover.unwind.modes import AutoUnwindEngine

pytestmark = pytest.mark.bpf

CHAIN = ["main", "chain_a", "chain_b"]


@pytest.fixture(scope="module")
def headers():
    return HeaderSearch().find()


def contains_in_order(frames: list[str], chain: list[str]) -> bool:
    """``chain`` appears in ``frames`` (root first) as consecutive frames."""
    n = len(chain)
    return any(frames[i : i + n] == chain for i in range(len(frames) - n + 1))


def profile_user(engine, pid: int, seconds: float, drains: int = 1):
    """(root-first user frame names, count) per stack, and the drain results."""
    symbolizer = Symbolizer()
    symbolizer.prepare(pid)
    engine.add_pid(pid)
    results = []
    for _ in range(drains):
        time.sleep(seconds / drains)
        results.append(engine.drain())
    engine.remove_pid(pid)
    results.append(engine.drain())
    stacks = []
    for result in results:
        for s in result.stacks:
            user = [a for a in s.user if a != TRUNCATED]
            frames = [f.name for f in reversed(symbolizer.user_frames(pid, user))]
            stacks.append((frames, s.values[0]))
    return stacks, results


def chain_share(stacks, chain) -> float:
    total = sum(n for _, n in stacks)
    return sum(n for frames, n in stacks if contains_in_order(frames, chain)) / max(1, total)


def counter(results, name: str) -> int:
    return sum(r.counters.get(name, 0) for r in results)


def test_on_cpu_names_the_caller_chain_without_frame_pointers(headers, spawn, workloads):
    busy = spawn([workloads.build("chain_c"), "cpu"])
    config = EngineConfig(frequency=499)
    engine = DwarfProfilerEngine(ProfileType.ON_CPU, headers, config)
    try:
        stacks, results = profile_user(engine, busy.pid, 2.0, drains=10)
    finally:
        engine.close()
    events = counter(results, "events")
    assert events > 300
    # Exact counting: every sample in one drain, or counted as lost.
    assert sum(n for _, n in stacks) + counter(results, "ringbuf_drops") == events
    assert chain_share(stacks, CHAIN) > 0.9, stacks[:3]
    fp = ProfilerEngine(ProfileType.ON_CPU, headers, config)
    try:
        fp_stacks, _ = profile_user(fp, busy.pid, 1.0)
    finally:
        fp.close()
    assert chain_share(fp_stacks, CHAIN) < 0.1, fp_stacks[:3]


def test_off_cpu_names_the_caller_chain_and_counts_every_switch(headers, spawn, workloads):
    sleeper = spawn([workloads.build("chain_c"), "sleep", "200", "2"])
    engine = DwarfProfilerEngine(ProfileType.OFF_CPU, headers)
    symbolizer = Symbolizer()
    symbolizer.prepare(sleeper.pid)
    try:
        engine.add_pid(sleeper.pid)
        sleeper.send_line("go")
        drains = []
        for _ in range(20):
            time.sleep(0.03)
            drains.append(engine.drain())
        assert sleeper.read_line(timeout=10) == "done 200"
        sleeper.proc.wait(timeout=5)
        time.sleep(0.05)
        drains += [engine.drain(), engine.drain()]
        assert engine.forget_exited_threads() >= 0
    finally:
        engine.close()
    events = counter(drains, "events")
    switches = sum(s.values[0] for d in drains for s in d.stacks)
    lost = counter(drains, "ringbuf_drops") + counter(drains, "offcpu_unpaired")
    assert switches + lost >= events >= switches
    fewest = workloads.fewest_switches(200)
    assert fewest <= events < 400  # a busy machine adds preemptions
    assert sum(s.values[1] for d in drains for s in d.stacks) >= fewest * 2_000_000
    chained = 0
    for d in drains:
        for s in d.stacks:
            frames = [f.name for f in reversed(symbolizer.user_frames(sleeper.pid, s.user))]
            chained += s.values[0] if contains_in_order(frames, CHAIN) else 0
    assert chained >= fewest
    # The same place every time: after the first unwinds, switch-outs are repeats.
    assert engine.memos.repeats >= 150
    assert counter(drains, "offcpu_memo_missing") == 0


LEFT, RIGHT = ["left_a", "left_b", "wait_leaf"], ["right_a", "right_b", "wait_leaf"]
SELECT_LOOP = """
import select
print("ready", flush=True)
while True:
    select.select([], [], [], 0.001)
"""


@pytest.mark.parametrize("kernel_stacks", ["counted in the kernel", "sent as records"])
def test_off_cpu_repeats_are_told_apart_by_their_stack_words(
    headers, spawn, workloads, kernel_stacks
):
    """Two paths block with equal registers; only return addresses on the stack differ.

    A second engine copying every switch-out sees the same switches (both are on
    sched_switch) and is the reference: the repeats must give the same counts per path.
    With a one-entry stack map that another process's kernel stack holds, kernel stack
    ids collide and repeats take the ring buffer instead of the in-kernel counts.
    """
    process = spawn([workloads.build("repeat_c"), "400", "4", "1"])
    tiny = kernel_stacks == "sent as records"
    config = EngineConfig(stack_map_size=1) if tiny else EngineConfig()
    memoizing = DwarfProfilerEngine(ProfileType.OFF_CPU, headers, config)
    if tiny:  # blocks in select(): a kernel stack unlike nanosleep's takes the one entry
        occupant = spawn([sys.executable, "-c", SELECT_LOOP])
        memoizing.add_pid(occupant.pid)
        time.sleep(0.3)
    copying = DwarfProfilerEngine(
        ProfileType.OFF_CPU, headers, settings=UnwindSettings(offcpu_repeats=False)
    )
    engines = (memoizing, copying)
    symbolizer = Symbolizer()
    symbolizer.prepare(process.pid)
    full_samples = []  # (ip, sp, bp, user frames) of every memo installed
    remember = memoizing.memos.remember

    def spy(tgid, tid, ip, sp, bp, result):
        full_samples.append((ip, sp, bp, result.addresses))
        remember(tgid, tid, ip, sp, bp, result)

    memoizing.memos.remember = spy
    drains: dict[int, list] = {id(e): [] for e in engines}
    try:
        for engine in engines:
            engine.add_pid(process.pid)
        process.send_line("go")
        assert process.read_line(timeout=20) == "done 400"
        process.proc.wait(timeout=5)
        time.sleep(0.05)
        for engine in engines:
            drains[id(engine)] += [engine.drain(), engine.drain()]
    finally:
        for engine in engines:
            engine.close()

    def names(user):
        return [f.name for f in reversed(symbolizer.user_frames(process.pid, user))]

    def per_side(results) -> dict[str, int]:
        sides = {"left": 0, "right": 0, "other": 0}
        for d in results:
            for s in d.stacks:
                if s.tgid != process.pid:
                    continue
                frames = names(s.user)
                side = "other"
                for name, chain in (("left", LEFT), ("right", RIGHT)):
                    if contains_in_order(frames, ["main", *chain]):
                        side = name
                sides[side] += s.values[0]
        return sides

    for engine in engines:
        results = drains[id(engine)]
        lost = ("ringbuf_drops", "offcpu_unpaired", "offcpu_memo_missing", "record_errors")
        assert all(counter(results, name) == 0 for name in lost), [r.counters for r in results]
    with_repeats, copied = per_side(drains[id(memoizing)]), per_side(drains[id(copying)])
    assert with_repeats == copied
    assert with_repeats["left"] >= 190 and with_repeats["right"] >= 190, with_repeats
    assert memoizing.memos.repeats >= 200
    assert memoizing.ring_repeats >= 100 if tiny else memoizing.ring_repeats == 0
    assert copying.memos is None
    by_registers: dict[tuple[int, int, int], set[str]] = {}
    for ip, sp, bp, user in full_samples:
        frames = names(user)
        side = "left" if contains_in_order(frames, LEFT) else "right"
        by_registers.setdefault((ip, sp, bp), set()).add(side)
    # The case that matters happened: the same registers on both paths.
    assert any(len(sides_seen) == 2 for sides_seen in by_registers.values()), by_registers


@pytest.mark.parametrize("name", ["hot_cpp", "hot_rust", "hot_go", "unwind_cpp"])
def test_other_languages_keep_leaf_and_callers(headers, spawn, workloads, name):
    process = spawn([workloads.build(name)])
    engine = DwarfProfilerEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=499))
    try:
        stacks, results = profile_user(engine, process.pid, 1.5)
    finally:
        engine.close()
    total = sum(n for _, n in stacks)
    chain = workloads.call_chain(name)
    assert total > 200
    if name != "unwind_cpp":  # its hot loop is inlined into cxx_work: no leaf of its own
        hot = workloads.hot_function(name)
        assert sum(n for f, n in stacks if f[-1:] == [hot]) / total > 0.5, stacks[:3]
    assert chain_share(stacks, chain) > 0.8, stacks[:3]
    assert counter(results, "record_errors") == 0


def test_small_stack_window_gives_truncated_frames(headers, spawn, workloads):
    busy = spawn([workloads.build("chain_c"), "cpu"])
    settings = UnwindSettings(stack_bytes=512)
    engine = DwarfProfilerEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=499), settings)
    try:
        engine.add_pid(busy.pid)
        time.sleep(1.0)
        result = engine.drain()
    finally:
        engine.close()
    truncated = sum(s.values[0] for s in result.stacks if s.user[-1:] == (TRUNCATED,))
    assert truncated > 0
    assert result.counters["unwind_truncated"] == truncated


def test_full_ring_buffer_is_counted_not_silent(headers, spawn, workloads):
    busy = spawn([workloads.build("chain_c"), "cpu"])
    settings = UnwindSettings(ring_buffer_bytes=16384)  # room for a few samples
    engine = DwarfProfilerEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=499), settings)
    try:
        with engine._ring_lock:  # a stalled consumer: the ring buffer fills up
            engine.add_pid(busy.pid)
            time.sleep(1.0)
            engine.remove_pid(busy.pid)
        # Samples in flight when a drain starts land in the next one: drain twice.
        results = [engine.drain(), engine.drain()]
    finally:
        engine.close()
    events, drops = counter(results, "events"), counter(results, "ringbuf_drops")
    assert events > 50 and drops > events // 2
    assert sum(s.values[0] for r in results for s in r.stacks) + drops == events


def test_auto_picks_per_process(headers, spawn, workloads):
    with_fp = spawn([workloads.build("hot_c_fp")])
    without = spawn([workloads.build("chain_c"), "cpu"])
    engine = AutoUnwindEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=199))
    try:
        engine.add_pid(with_fp.pid)
        engine.add_pid(without.pid)
        assert engine.choices[with_fp.pid].mode == "frame_pointer"
        assert engine.choices[without.pid].mode == "eh_frame"
        assert engine.loaded_modes() == ["eh_frame", "frame_pointer"]
        assert engine.pids == {with_fp.pid, without.pid}
        time.sleep(1.0)
        result = engine.drain()
        engine.remove_pid(without.pid)
        assert engine.pids == {with_fp.pid}
    finally:
        engine.close()
    assert {s.tgid for s in result.stacks} == {with_fp.pid, without.pid}
    assert engine.closed


def rover_profile_user(pid: int, out, *options: str) -> tuple[list[tuple[list[str], int]], str]:
    """``rover profile`` of ``pid`` for 2 s into folded ``out``: (user frames, count) per
    stack, and what it printed on stderr."""
    from rover_cli import folded_stacks, rover, user_frames

    command = ["profile", "--pid", str(pid), "--duration", "2s", *options, "--output", str(out)]
    result = rover(*command)
    assert result.returncode == 0, result.stderr
    return [(user_frames(frames), n) for frames, n in folded_stacks(out)], result.stderr


@pytest.mark.parametrize("unwind", ["eh_frame", "auto", "frame_pointer"])
def test_cli_unwind_option(spawn, workloads, tmp_path, unwind):
    busy = spawn([workloads.build("chain_c"), "cpu"])
    options = ("--frequency", "199", "--unwind", unwind)
    stacks, _ = rover_profile_user(busy.pid, tmp_path / "chain.folded", *options)
    share = chain_share(stacks, CHAIN)
    if unwind == "frame_pointer":
        assert share < 0.1
    else:  # auto picks eh_frame for this binary
        assert share > 0.8, stacks[:3]


@pytest.mark.parametrize("unwind", ["frame_pointer", "eh_frame"])
def test_cli_off_cpu_chain_into_libc(spawn, workloads, tmp_path, unwind):
    sleeper = spawn([workloads.build("chain_c"), "sleep", "100000", "1"])
    sleeper.send_line("go")
    options = ("--type", "off-cpu", "--unwind", unwind)
    stacks, stderr = rover_profile_user(sleeper.pid, tmp_path / "wait.folded", *options)
    assert "warning" not in stderr, stderr
    # main -> chain_a -> chain_b -> libc's nanosleep (built without frame pointers)
    into_libc = [(f, n) for f, n in stacks if any("nanosleep" in name for name in f)]
    if unwind == "frame_pointer":
        assert chain_share(stacks, CHAIN) < 0.1, stacks[:3]
    else:
        assert chain_share(into_libc, CHAIN) * sum(n for _, n in into_libc) > 0.9 * sum(
            n for _, n in stacks
        ), stacks[:3]


def test_leaf_whose_cfa_is_in_another_register(headers, spawn, workloads):
    """reg_leaf's CFA is R11 + 8 while it spins: only the sample's own R11 unwinds it."""
    busy = spawn([workloads.build("regcfa_c")])
    engine = DwarfProfilerEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=499))
    try:
        stacks, results = profile_user(engine, busy.pid, 1.5)
    finally:
        engine.close()
    chain = workloads.call_chain("regcfa_c")
    leaf_samples = sum(n for frames, n in stacks if frames[-1:] == ["reg_leaf"])
    assert leaf_samples > 0.8 * sum(n for _, n in stacks), stacks[:3]
    assert chain_share(stacks, chain) > 0.8, stacks[:3]
    assert counter(results, "record_errors") == 0


def test_samples_whose_stack_cannot_be_copied_keep_their_leaf_and_are_counted(
    headers, spawn, workloads
):
    """nostack_leaf spins with RSP at an unmapped page: no stack copy, the leaf alone."""
    busy = spawn([workloads.build("regcfa_c"), "nostack"])
    engine = DwarfProfilerEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=499))
    try:
        stacks, results = profile_user(engine, busy.pid, 1.5)
    finally:
        engine.close()
    events, failed = counter(results, "events"), counter(results, "stack_copy_failed")
    assert events > 300
    assert failed > 0.8 * events, (failed, events)
    # every sample is still counted exactly once, with what is known of it
    assert sum(n for _, n in stacks) + counter(results, "ringbuf_drops") == events
    leaf_only = sum(n for frames, n in stacks if frames == ["nostack_leaf"])
    assert leaf_only >= failed - counter(results, "ringbuf_drops"), stacks[:3]
    assert counter(results, "record_errors") == 0
