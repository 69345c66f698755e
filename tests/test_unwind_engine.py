"""eh_frame unwinding for real: the CFI walk in the kernel over rows user space loaded."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from rover.bpf.engine import EngineConfig, ProfilerEngine
from rover.bpf.headers import HeaderSearch
from rover.profile import ProfileType
from rover.symbols import Symbolizer
from rover.unwind import kernel_tables
from rover.unwind.markers import LOADING, TRUNCATED
from rover.unwind.modes import make_engine

pytestmark = pytest.mark.bpf

CHAIN = ["main", "chain_a", "chain_b"]
LOSSES_OF_A_WALK = ("walk_bad_frame", "walk_unmapped", "walk_tail_call_failed", "user_stacks_full")


@pytest.fixture(scope="module")
def headers():
    return HeaderSearch().find()


def eh_frame(profile_type: ProfileType, headers, **config) -> ProfilerEngine:
    return make_engine(profile_type, headers, EngineConfig(**config), "eh_frame")


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
            user = [a for a in s.user if a not in (TRUNCATED, LOADING)]
            frames = [f.name for f in reversed(symbolizer.user_frames(pid, user))]
            stacks.append((frames, s.values[0]))
    return stacks, results


def chain_share(stacks, chain) -> float:
    total = sum(n for _, n in stacks)
    return sum(n for frames, n in stacks if contains_in_order(frames, chain)) / max(1, total)


def counter(results, name: str) -> int:
    return sum(r.counters.get(name, 0) + r.info.get(name, 0) for r in results)


def losses(results) -> dict[str, int]:
    lost: dict[str, int] = {}
    for r in results:
        for name, n in r.counters.items():
            if n:
                lost[name] = lost.get(name, 0) + n
    return lost


def test_on_cpu_names_the_caller_chain_without_frame_pointers(headers, spawn, workloads):
    busy = spawn([workloads.build("chain_c"), "cpu"])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=499)
    try:
        stacks, results = profile_user(engine, busy.pid, 2.0, drains=10)
    finally:
        engine.close()
    events = counter(results, "events")
    assert events > 300
    assert losses(results) == {}
    assert sum(n for _, n in stacks) == events  # every sample, in exactly one drain
    assert chain_share(stacks, CHAIN) > 0.9, stacks[:3]
    assert all(frames[:2] == ["_start", "__libc_start_main"] for frames, _ in stacks), stacks[:3]
    fp = ProfilerEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=499))
    try:
        fp_stacks, _ = profile_user(fp, busy.pid, 1.0)
    finally:
        fp.close()
    assert chain_share(fp_stacks, CHAIN) < 0.1, fp_stacks[:3]


def test_off_cpu_names_the_caller_chain_and_counts_every_switch(headers, spawn, workloads):
    sleeper = spawn([workloads.build("chain_c"), "sleep", "200", "2"])
    engine = eh_frame(ProfileType.OFF_CPU, headers)
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
    assert switches == events
    assert losses(drains) == {}
    fewest = workloads.fewest_switches(200)
    assert fewest <= events < 400  # a busy machine adds preemptions
    assert sum(s.values[1] for d in drains for s in d.stacks) >= fewest * 2_000_000
    chained = 0
    for d in drains:
        for s in d.stacks:
            frames = [f.name for f in reversed(symbolizer.user_frames(sleeper.pid, s.user))]
            chained += s.values[0] if contains_in_order(frames, CHAIN) else 0
    assert chained >= fewest


def test_server_rate_off_cpu_counts_every_switch_once(headers, spawn, workloads):
    """Two threads on one CPU pass a byte through pipes: hundreds of thousands of switches
    a second, each walked in the kernel and counted once, against the kernel's own count
    of the threads' context switches."""
    game = spawn(["taskset", "-c", "1", workloads.build("pingpong_c")])
    engine = eh_frame(ProfileType.OFF_CPU, headers)
    try:
        engine.add_pid(game.pid)
        game.send_line("warm")  # every thread now blocked with its switch-out recorded
        assert game.read_line(timeout=10).startswith("warm")
        engine.drain()
        before = switches_once_blocked(game.pid)
        started = time.monotonic()
        game.send_line("go 3")
        assert game.read_line(timeout=30).startswith("round_trips")
        seconds = time.monotonic() - started
        after = switches_once_blocked(game.pid)  # every thread blocked, as before
        result = engine.drain()
    finally:
        engine.close()
    kernel = after - before
    counted = sum(s.values[0] for s in result.stacks if s.tgid == game.pid)
    assert kernel / seconds > 100_000, f"only {kernel / seconds:.0f} switches/s"
    # Exactly once, up to the reading of the kernel's counts: a thread seen blocked may
    # still be on its way off the CPU (its state set, its switch not yet counted): at
    # most one switch per thread (pingpong_c has 3) at each of the two readings.
    assert abs(counted - kernel) <= 2 * 3, (counted, kernel)
    # A switch-in the tracepoint never shows (a few per million switches) costs that
    # switch's time away, not the switch: counted, and said so.
    lost = losses([result])
    assert lost.pop("offcpu_switch_in_unseen", 0) <= kernel // 100_000
    assert lost == {}


def switches_once_blocked(pid: int) -> int:
    """Context switches of every thread of ``pid``, as the kernel counts them, once every
    thread is blocked: then each has exactly one switch-out the kernel counted and the
    profiler holds until the thread comes back."""
    deadline = time.monotonic() + 10
    while True:
        states, total = [], 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            for line in (task / "status").read_text().splitlines():
                if line.split(":")[0] in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                    total += int(line.split()[1])
        if set(states) == {"S"}:
            time.sleep(0.05)  # and still so a moment later (no switch in between)
            if total == sum_switches(pid):
                return total
        assert time.monotonic() < deadline, f"threads of {pid} not all blocked: {states}"
        time.sleep(0.01)


def sum_switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.split(":")[0] in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


LEFT, RIGHT = ["left_a", "left_b", "wait_leaf"], ["right_a", "right_b", "wait_leaf"]


def test_off_cpu_paths_with_equal_registers_are_told_apart(headers, spawn, workloads):
    """Two paths block with equal registers; only return addresses on the stack differ."""
    process = spawn([workloads.build("repeat_c"), "400", "4", "1"])
    engine = eh_frame(ProfileType.OFF_CPU, headers)
    symbolizer = Symbolizer()
    symbolizer.prepare(process.pid)
    try:
        engine.add_pid(process.pid)
        process.send_line("go")
        assert process.read_line(timeout=20) == "done 400"
        process.proc.wait(timeout=5)
        time.sleep(0.05)
        results = [engine.drain(), engine.drain()]
    finally:
        engine.close()
    sides = {"left": 0, "right": 0, "other": 0}
    for d in results:
        for s in d.stacks:
            frames = [f.name for f in reversed(symbolizer.user_frames(process.pid, s.user))]
            side = "other"
            for name, chain in (("left", LEFT), ("right", RIGHT)):
                if contains_in_order(frames, ["main", *chain]):
                    side = name
            sides[side] += s.values[0]
    assert losses(results) == {}
    assert sides["left"] >= 190 and sides["right"] >= 190, sides


@pytest.mark.parametrize("name", ["hot_cpp", "hot_rust", "hot_go", "unwind_cpp"])
def test_other_languages_keep_leaf_and_callers(headers, spawn, workloads, name):
    process = spawn([workloads.build(name)])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=499)
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
    lost = losses(results)
    if name == "hot_go":
        # A sample in the Go runtime's hand-written assembly (the scheduler's stack
        # switches, preemption signals) can meet a pc whose CFI does not describe the
        # frame: counted as walk_bad_frame, rare (seen once in ~750 samples).
        assert lost.pop("walk_bad_frame", 0) <= total // 100, lost
    assert lost == {}


def test_stacks_deeper_than_the_limit_end_with_truncated(headers, spawn, workloads):
    busy = spawn([workloads.build("chain_c"), "deep", "200"])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=499)
    try:
        _, results = profile_user(engine, busy.pid, 1.0)
    finally:
        engine.close()
    stacks = [s for r in results for s in r.stacks]
    truncated = sum(s.values[0] for s in stacks if s.user[-1:] == (TRUNCATED,))
    assert truncated > 0.9 * sum(s.values[0] for s in stacks)
    assert all(len(s.user) == 128 for s in stacks if s.user[-1:] == (TRUNCATED,))
    assert counter(results, "walk_truncated") == truncated
    assert losses(results) == {}


def test_full_stack_map_is_counted_not_silent(headers, spawn, workloads):
    """More distinct stacks than user_stacks holds: the rest are counted without their
    user stack, and said so."""
    busy = spawn([workloads.build("chain_c"), "cpu"])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=499, stack_map_size=4)
    try:
        _, results = profile_user(engine, busy.pid, 1.5)
    finally:
        engine.close()
    events, full = counter(results, "events"), counter(results, "user_stacks_full")
    assert events > 300 and full > 0
    assert sum(s.values[0] for r in results for s in r.stacks) == events
    assert sum(s.values[0] for r in results for s in r.stacks if not s.user) == full


def test_auto_picks_per_process_in_one_program(headers, spawn, workloads, caplog):
    with_fp = spawn([workloads.build("hot_c_fp")])
    without = spawn([workloads.build("chain_c"), "cpu"])
    caplog.set_level(logging.INFO, logger="rover.bpf.engine")
    engine = make_engine(ProfileType.ON_CPU, headers, EngineConfig(frequency=199), "auto")
    try:
        engine.add_pid(with_fp.pid)
        engine.add_pid(without.pid)
        assert engine.choices[with_fp.pid].mode == "frame_pointer"
        assert engine.choices[without.pid].mode == "eh_frame"
        assert engine.pids == {with_fp.pid, without.pid}
        time.sleep(1.0)
        result = engine.drain()
        engine.remove_pid(without.pid)
        assert engine.pids == {with_fp.pid}
        assert without.pid not in engine.choices  # nothing is kept of a removed process
    finally:
        engine.close()
    assert {s.tgid for s in result.stacks} == {with_fp.pid, without.pid}
    assert engine.closed
    logged = [r.getMessage() for r in caplog.records if "unwinding" in r.getMessage()]
    assert any(f"process {without.pid}: eh_frame unwinding" in m for m in logged), logged


def test_a_verifier_that_refuses_the_walk_falls_back_to_frame_pointers(
    headers, spawn, workloads, walk_refused, caplog
):
    busy = spawn([workloads.build("chain_c"), "cpu"])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=199)
    try:
        assert not engine.walks_cfi
        engine.add_pid(busy.pid)
        assert engine.choices[busy.pid].mode == "frame_pointer"
        time.sleep(0.5)
        result = engine.drain()
    finally:
        engine.close()
    assert sum(s.values[0] for s in result.stacks) > 20
    refused = [r for r in caplog.records if "verifier refuses the CFI stack walk" in r.message]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING


def test_tables_still_loading_give_a_marked_partial_stack(headers, spawn, workloads, monkeypatch):
    """The loader holds back: samples meanwhile are counted with their leaf and a
    [unwind tables loading] frame, never dropped; once loaded, full stacks."""
    release = __import__("threading").Event()
    load = kernel_tables.KernelTables._load_process

    def slow_load(self, pid):
        release.wait(10)
        load(self, pid)

    monkeypatch.setattr(kernel_tables.KernelTables, "_load_process", slow_load)
    busy = spawn([workloads.build("chain_c"), "cpu"])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=499)
    try:
        engine.add_pid(busy.pid)  # waits up to its budget, then goes on
        time.sleep(0.5)
        loading = engine.drain()
        release.set()
        time.sleep(1.5)
        between = [engine.drain()]  # the switch to loaded tables happens in this interval
        time.sleep(0.5)
        loaded = engine.drain()
        engine.remove_pid(busy.pid)
        results = [loading, *between, loaded, engine.drain()]
    finally:
        engine.close()
    marked = sum(s.values[0] for s in loading.stacks if s.user[-1:] == (LOADING,))
    assert marked == sum(s.values[0] for s in loading.stacks) > 20
    every_mark = sum(s.values[0] for r in results for s in r.stacks if s.user[-1:] == (LOADING,))
    assert counter(results, "walk_tables_loading") == every_mark
    assert all(LOADING not in s.user for s in loaded.stacks)
    assert sum(s.values[0] for s in loaded.stacks) > 100


def test_tables_over_budget_fall_back_to_frame_pointers(headers, spawn, workloads, caplog):
    busy = spawn([workloads.build("chain_c"), "cpu"])
    engine = make_engine(
        ProfileType.ON_CPU, headers, EngineConfig(frequency=499), "eh_frame", table_bytes=1 << 16
    )
    try:
        stacks, results = profile_user(engine, busy.pid, 1.0)
    finally:
        engine.close()
    # chain_c's own rows fit in 64 KiB; libc's do not: counted, logged once, walked by FP.
    assert counter(results, "unwind_tables_over_budget") >= 1
    over = [r for r in caplog.records if "unwind_table_bytes" in r.getMessage()]
    assert over and "libc" in over[0].getMessage()
    assert sum(n for _, n in stacks) > 100


def test_files_no_process_uses_are_evicted_first(headers, spawn, workloads):
    first = spawn([workloads.build("chain_c"), "cpu"])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=99)
    try:
        engine.add_pid(first.pid)
        tables = engine._tables
        assert tables.files >= 3  # chain_c, libc, ld.so, the vDSO
        engine.remove_pid(first.pid)  # its files stay loaded, used by no process now
        tables.budget_bytes = tables.used_bytes + (64 << 10)
        second = spawn([workloads.build("hot_cpp")])  # libstdc++'s rows need the room
        engine.add_pid(second.pid, deadline_ns=0)
        assert tables.counters["unwind_files_evicted"] >= 1
        assert tables.used_bytes <= tables.budget_bytes
        assert second.pid in tables._pids
    finally:
        engine.close()


def test_counting_stops_at_the_deadline_however_late_the_drain(headers, spawn, workloads):
    busy = spawn([workloads.build("chain_c"), "cpu"])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=499)
    try:
        engine.add_pid(busy.pid)
        engine.set_deadline(busy.pid, time.monotonic_ns() + 500_000_000)
        time.sleep(2.0)  # the drain comes 1.5 s after the deadline
        result = engine.drain()
    finally:
        engine.close()
    counted = sum(s.values[0] for s in result.stacks)
    assert 150 <= counted <= 300  # 0.5 s at 499 Hz, not 2 s
    assert result.info["after_deadline"] > 400


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
    # Nothing lost but, rarely, the time away of a switch-in the tracepoint never showed (a
    # few per million switches, both modes), which the CLI reports as it must.
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    unseen = r"warning: some data could not be collected: offcpu_switch_in_unseen=\d"
    assert all(re.fullmatch(unseen, line) for line in warnings), stderr
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
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=499)
    try:
        stacks, results = profile_user(engine, busy.pid, 1.5)
    finally:
        engine.close()
    chain = workloads.call_chain("regcfa_c")
    leaf_samples = sum(n for frames, n in stacks if frames[-1:] == ["reg_leaf"])
    assert leaf_samples > 0.8 * sum(n for _, n in stacks), stacks[:3]
    assert chain_share(stacks, chain) > 0.8, stacks[:3]
    assert losses(results) == {}


def test_a_leaf_whose_rsp_points_nowhere_unwinds_from_its_cfa_register(headers, spawn, workloads):
    """nostack_leaf spins with RSP at an unmapped page, its CFA in R11: the walk reads the
    stack at the CFA, not at RSP, so the whole chain is there."""
    busy = spawn([workloads.build("regcfa_c"), "nostack"])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=499)
    try:
        stacks, results = profile_user(engine, busy.pid, 1.5)
    finally:
        engine.close()
    chain = ["main", "reg_outer", "nostack_leaf"]
    assert chain_share(stacks, chain) > 0.8, stacks[:3]
    assert losses(results) == {}


def test_samples_whose_stack_cannot_be_read_keep_their_leaf_and_are_counted(
    headers, spawn, workloads
):
    """badstack_leaf spins with RSP at an unmapped page while its CFI still says RSP + 8:
    the return address cannot be read; each sample is counted with its leaf alone."""
    busy = spawn([workloads.build("regcfa_c"), "badstack"])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=499)
    try:
        stacks, results = profile_user(engine, busy.pid, 1.5)
    finally:
        engine.close()
    events, bad = counter(results, "events"), counter(results, "walk_bad_frame")
    assert events > 300
    assert bad > 0.8 * events, (bad, events)
    assert sum(n for _, n in stacks) == events  # every sample counted once, as known
    leaf_only = sum(n for frames, n in stacks if frames == ["badstack_leaf"])
    assert leaf_only >= bad, stacks[:3]


@pytest.mark.parametrize("how", ["garbage", "bad_length"])
def test_corrupt_cfi_in_the_kernel_path_is_counted_not_fatal(
    headers, spawn, workloads, tmp_path, how
):
    """chain_c with its .eh_frame garbled: the rows decoded before the damage are walked,
    the rest by frame pointers; every sample is still counted once."""
    import shutil

    from test_unwind_cfi import garble

    binary = tmp_path / "chain_c"
    shutil.copy(workloads.build("chain_c"), binary)
    garble(binary, how)
    busy = spawn([binary, "cpu"])
    engine = eh_frame(ProfileType.ON_CPU, headers, frequency=499)
    try:
        stacks, results = profile_user(engine, busy.pid, 1.0)
        assert engine.settle(10)
    finally:
        engine.close()
    events = counter(results, "events")
    assert events > 150
    assert sum(n for _, n in stacks) == events
    assert all(frames for frames, _ in stacks)  # at least the leaf, always
