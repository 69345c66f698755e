"""`rover profile` end to end on real workloads, with real BPF."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from rover_cli import folded_stacks, rover, start_rover, user_frames, wait_for_stderr_line

pytestmark = pytest.mark.bpf

ON_CPU_WORKLOADS = ["hot_c_fp", "hot_c_nofp", "hot_cpp", "hot_rust", "hot_go"]


def leaf_share(stacks, function):
    total = sum(n for _, n in stacks)
    hits = sum(n for frames, n in stacks if user_frames(frames)[-1:] == [function])
    return hits / total if total else 0.0


@pytest.mark.parametrize("name", ON_CPU_WORKLOADS)
def test_hot_function_is_the_leaf_of_most_samples(name, workloads, spawn, tmp_path):
    process = spawn([workloads.build(name)])
    out = tmp_path / f"{name}.folded"
    result = rover("profile", "--pid", str(process.pid), "--duration", "3s", "--output", str(out))
    assert result.returncode == 0, result.stderr
    stacks = folded_stacks(out)
    assert leaf_share(stacks, workloads.hot_function(name)) > 0.5, stacks[:5]
    assert all(frames[0] == process.proc.args[0].split("/")[-1][:15] for frames, _ in stacks)


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_sample_count_matches_frequency_times_duration(workloads, spawn, tmp_path):
    """Samples = frequency x seconds on CPU, within 20%.

    On an idle machine the busy loop is on CPU for the whole duration; when
    other work shares the cores, the loop's CPU share measured over the
    profiling window (first progress line to exit) scales the expectation, so
    the test checks sampling accuracy, not the machine's load.
    """
    process = spawn([workloads.build("hot_c_fp")])
    out = tmp_path / "count.folded"
    proc = start_rover(
        "profile", "--pid", str(process.pid), "--duration", "5s", "--frequency", "99",
        "--output", str(out),
    )  # fmt: skip
    try:
        wait_for_stderr_line(proc, "profiling:")
        cpu_before, wall_before = cpu_seconds(process.pid), time.monotonic()
        stdout, stderr = proc.communicate(timeout=60)
        share = (cpu_seconds(process.pid) - cpu_before) / (time.monotonic() - wall_before)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    samples = sum(n for _, n in folded_stacks(out))
    expected = 99 * 5 * min(1.0, share)
    assert abs(samples - expected) <= 0.2 * expected, (samples, share)
    assert "samples" in stdout


def test_frame_pointer_build_names_the_whole_chain(workloads, spawn, tmp_path):
    process = spawn([workloads.build("hot_c_fp")])
    out = tmp_path / "chain.folded"
    assert (
        rover("profile", "--pid", str(process.pid), "--duration", "2s", "-o", str(out)).returncode
        == 0
    )
    chains = [user_frames(f)[1:] for f, _ in folded_stacks(out)]
    assert ["main", "c_outer", "c_hot_spin"] in [c[-3:] for c in chains]


def run_off_cpu(workloads, spawn, tmp_path, *extra):
    iterations, sleep_ms = 300, 10
    process = spawn([workloads.build("block_c"), str(iterations), str(sleep_ms)])
    out = tmp_path / f"off{len(extra)}.folded"
    proc = start_rover(
        "profile", "--pid", str(process.pid), "--type", "off-cpu", "--duration", "30s",
        "--output", str(out), *extra,
    )  # fmt: skip
    try:
        wait_for_stderr_line(proc, "profiling:")
        process.send_line("go")
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "exited" in stderr  # stopped early because the workload finished
    blocked = [(frames, n) for frames, n in folded_stacks(out) if is_sleep_stack(frames)]
    assert blocked, folded_stacks(out)
    return iterations, sleep_ms, sum(n for _, n in blocked)


def is_sleep_stack(frames):
    """The workload's blocking call: main -> block_loop -> [block_sleep] -> clock_nanosleep.

    block_sleep calls libc's clock_nanosleep, which Debian builds without frame
    pointers, so frame-pointer unwinding skips its caller (block_sleep); the
    blocking call and the chain above it are what must be named.
    """
    user = user_frames(frames)
    return bool(user) and "nanosleep" in user[-1] and "block_loop" in user and "main" in user


def test_off_cpu_blocked_time_matches_sleeps(workloads, spawn, tmp_path):
    iterations, sleep_ms, micros = run_off_cpu(workloads, spawn, tmp_path)
    expected = iterations * sleep_ms * 1000
    assert abs(micros - expected) <= 0.1 * expected, micros


def test_off_cpu_switch_count_matches_iterations(workloads, spawn, tmp_path):
    iterations, _, switches = run_off_cpu(workloads, spawn, tmp_path, "--value", "switches")
    assert abs(switches - iterations) <= 0.1 * iterations, switches


def test_process_in_its_own_mount_namespace_is_symbolized(
    workloads, spawn_in_mount_namespace, tmp_path
):
    process = spawn_in_mount_namespace(workloads.build("hot_c_fp"))
    out = tmp_path / "ns.folded"
    result = rover("profile", "--pid", str(process.pid), "--duration", "2s", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert leaf_share(folded_stacks(out), "c_hot_spin") > 0.5


def test_ctrl_c_stops_early_and_still_writes(workloads, spawn, tmp_path):
    process = spawn([workloads.build("hot_c_fp")])
    out = tmp_path / "interrupted.html"
    proc = start_rover("profile", "--pid", str(process.pid), "--duration", "60s", "-o", str(out))
    try:
        progress = wait_for_stderr_line(proc, "profiling:")
        assert "elapsed" in progress and "remaining" in progress and "samples" in progress
        time.sleep(1.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert time.monotonic() - started < 10
    assert proc.returncode == 0, stderr
    assert "stopped early" in stderr
    assert out.is_file() and "c_hot_spin" in out.read_text()


def test_process_exiting_mid_profile_is_not_an_error(workloads, spawn, tmp_path):
    process = spawn([workloads.build("block_c"), "50", "10"])
    out = tmp_path / "exits.folded"
    proc = start_rover(
        "profile", "--pid", str(process.pid), "--type", "off-cpu", "--duration", "20s",
        "-o", str(out),
    )  # fmt: skip
    try:
        wait_for_stderr_line(proc, "profiling:")
        process.send_line("go")
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert any(is_sleep_stack(frames) for frames, _ in folded_stacks(out))


def test_unwritable_output_fails_but_keeps_the_data(workloads, spawn):
    process = spawn([workloads.build("hot_c_fp")])
    result = rover(
        "profile", "--pid", str(process.pid), "--duration", "1s", "-o", "/proc/rover.folded"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "cannot write /proc/rover.folded" in line and "saved to" in line
    saved = line.rsplit("saved to ", 1)[1].strip()
    assert "c_hot_spin" in Path(saved).read_text()


def test_check_reports_everything_and_succeeds_here():
    result = rover("check")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("kernel", "BTF", "perf events", "tracepoints", "privileges", "kernel headers"):
        assert name in result.stdout
    assert "[  ok] on-cpu profiling" in result.stdout
    assert "[  ok] off-cpu profiling" in result.stdout


def check_in_process(capsys) -> tuple[int, str, str]:
    """`rover check` in this process, so tests can patch the loaders: (exit code, out, err)."""
    from rover.cli import main

    code = main(["check"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def unwind_threads() -> list[str]:
    """Consumer threads of .eh_frame engines still running (each engine starts one)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("rover-unwind-")]


def fail_loads(monkeypatch, module) -> None:
    """Make ``module``'s load_program raise for every program, as a broken compile would."""
    from rover.bpf.loader import BPFLoadError

    def load(name, headers, defines):
        raise BPFLoadError(f"could not load {name}.c: simulated failure\nclang details")

    monkeypatch.setattr(module, "load_program", load)


def test_check_compiles_and_closes_the_eh_frame_programs(capsys):
    code, out, err = check_in_process(capsys)
    assert code == 0, out + err
    ok = "program compiled, loaded and attached"
    assert f"[  ok] on-cpu profiling (eh_frame) {ok}" in out
    assert f"[  ok] off-cpu profiling (eh_frame) {ok}" in out
    assert unwind_threads() == []


def test_check_eh_frame_failure_is_a_warning_when_frame_pointers_work(capsys, monkeypatch):
    import rover.unwind.engine

    fail_loads(monkeypatch, rover.unwind.engine)
    code, out, err = check_in_process(capsys)
    assert code == 0, out + err  # frame-pointer profiling works: only required checks count
    assert "profiling can run on this machine" in out
    assert "[  ok] on-cpu profiling program compiled" in out
    for kind in ("on-cpu", "off-cpu"):
        program = kind.replace("-", "") + "_dwarf.c"
        line = f"[warn] {kind} profiling (eh_frame) could not load {program}: simulated failure; "
        assert line + "only frame_pointer unwinding works" in out
    assert "clang details" not in out  # the first line of the error only
    assert unwind_threads() == []


def test_check_eh_frame_attach_failure_closes_the_engine(capsys, monkeypatch):
    import rover.unwind.engine
    from rover.bpf.loader import BPFLoadError

    def attach(*_args):
        raise BPFLoadError("could not attach the CPU-clock perf event: simulated")

    monkeypatch.setattr(rover.unwind.engine, "attach_cpu_clock", attach)
    code, out, err = check_in_process(capsys)
    assert code == 0, out + err
    assert "[warn] on-cpu profiling (eh_frame) could not attach the CPU-clock" in out
    assert "[  ok] off-cpu profiling (eh_frame) program compiled" in out
    assert unwind_threads() == []


def test_check_eh_frame_is_a_failure_when_frame_pointers_fail_too(capsys, monkeypatch):
    import rover.bpf.engine
    import rover.unwind.engine

    fail_loads(monkeypatch, rover.bpf.engine)
    fail_loads(monkeypatch, rover.unwind.engine)
    code, out, err = check_in_process(capsys)
    assert code == 1
    failure = "could not load {}: simulated failure\n"  # no advice to use frame pointers
    assert "[FAIL] on-cpu profiling " + failure.format("oncpu.c") in out
    assert "[FAIL] on-cpu profiling (eh_frame) " + failure.format("oncpu_dwarf.c") in out
    assert "profiling cannot work: on-cpu profiling, on-cpu profiling (eh_frame)" in err


@pytest.mark.browser
def test_real_flame_graph_in_chromium(workloads, spawn, tmp_path, browser):
    """A real profile's HTML: the hot frame is drawn wide and hovering shows its share."""
    from browser import chart_width, find_frame, hover, open_page, page_errors, screenshot
    from selenium.webdriver.common.by import By

    process = spawn([workloads.build("hot_cpp")])
    out = tmp_path / "real.html"
    assert (
        rover("profile", "--pid", str(process.pid), "--duration", "3s", "-o", str(out)).returncode
        == 0
    )
    open_page(browser, out)
    assert page_errors(browser) == []
    hot = find_frame(browser, "ns::Worker::spin()")
    assert hot is not None
    assert hot.rect["width"] > 0.5 * chart_width(browser)
    hover(browser, hot)
    details = browser.find_element(By.ID, "details").text
    assert "ns::Worker::spin()" in details
    share = float(details.split("%")[0].split()[-1])
    assert 50 < share <= 100, details
    screenshot(browser, "real_profile_hover.png")
