"""`rover profile` end to end on real workloads, with real BPF."""

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from rover_cli import (
    ROVER,
    folded_stacks,
    rover,
    start_rover,
    user_frames,
    wait_for_stderr_line,
)

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
    assert process.read_line(timeout=10) == f"done {iterations}"
    queued_ns = int(process.read_line(timeout=10).split()[1])
    return iterations, sleep_ms, sum(n for _, n in blocked), queued_ns


def is_sleep_stack(frames):
    """The workload's blocking call: main -> block_loop -> [block_sleep] -> clock_nanosleep.

    block_sleep calls libc's clock_nanosleep, which Debian builds without frame
    pointers, so frame-pointer unwinding skips its caller (block_sleep); the
    blocking call and the chain above it are what must be named.
    """
    user = user_frames(frames)
    return bool(user) and "nanosleep" in user[-1] and "block_loop" in user and "main" in user


def test_off_cpu_blocked_time_matches_sleeps(workloads, spawn, tmp_path):
    """Off-CPU time is the sleeps plus the wait for a CPU once woken (its run queue delay,
    as the kernel accounts it: the part a loaded machine adds)."""
    iterations, sleep_ms, micros, queued_ns = run_off_cpu(workloads, spawn, tmp_path)
    expected = iterations * sleep_ms * 1000 + queued_ns / 1000
    assert abs(micros - expected) <= 0.1 * expected, (micros, expected)


def test_off_cpu_switch_count_matches_iterations(workloads, spawn, tmp_path):
    iterations, _, switches, _ = run_off_cpu(workloads, spawn, tmp_path, "--value", "switches")
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


def wait_until_compiling(proc, timeout=60) -> psutil.Process:
    """Until bcc compiles for ``proc``, in its compile helper: the loader points the
    helper's fd 2 at its compiler log (rover-bcc-*.log) for exactly as long as a compile
    runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(psutil.Error, OSError):
            for child in psutil.Process(proc.pid).children(recursive=True):
                if "/rover-bcc-" in os.readlink(f"/proc/{child.pid}/fd/2"):
                    return child
        time.sleep(0.002)
    raise AssertionError("rover did not start compiling")


def interrupt_rover(pid, out, when, sig=signal.SIGINT, ignore_sigint=False):
    """Start `rover profile --duration 30s`, send ``sig`` ``when`` seconds later (or, with
    ``when="compiling"``, while bcc compiles) and wait: (exit code, stderr, seconds from
    the signal to the exit)."""
    argv = ["profile", "--pid", str(pid), "--duration", "30s", "-o", str(out)]
    if ignore_sigint:  # as `rover ... &` from a script starts it: SIGINT ignored
        proc = subprocess.Popen(
            [*ROVER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )  # fmt: skip
    else:
        proc = start_rover(*argv)
    try:
        if when == "compiling":
            wait_until_compiling(proc)
        else:
            time.sleep(when)
        sent = time.monotonic()
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        return proc.returncode, stderr, time.monotonic() - sent
    finally:
        proc.kill()


# A compile under way is cancelled (its helper killed); the rest of stopping is fast.
STOP_WITHIN = 5


@pytest.mark.parametrize("when", [1.0, 3.0, "compiling"])
def test_ctrl_c_at_any_moment_stops_soon_and_still_writes(when, workloads, spawn, tmp_path):
    process = spawn([workloads.build("hot_c_fp")])
    out = tmp_path / "early.folded"
    code, stderr, took = interrupt_rover(process.pid, out, when)
    assert code == 0, stderr
    assert took < STOP_WITHIN, stderr
    assert out.is_file(), stderr
    assert "stopped early" in stderr or "stopped before sampling started" in stderr
    assert "Traceback" not in stderr


def test_ctrl_c_during_the_compile_writes_an_empty_profile(workloads, spawn, tmp_path):
    process = spawn([workloads.build("hot_c_fp")])
    out = tmp_path / "during-compile.html"
    code, stderr, took = interrupt_rover(process.pid, out, "compiling")
    assert code == 0, stderr
    assert "stopped before sampling started" in stderr
    assert "the output holds no samples" in stderr
    assert out.is_file() and "<html" in out.read_text().lower()


def test_sigterm_during_the_compile_stops_the_same_way(workloads, spawn, tmp_path):
    process = spawn([workloads.build("hot_c_fp")])
    out = tmp_path / "sigterm.folded"
    code, stderr, took = interrupt_rover(process.pid, out, "compiling", sig=signal.SIGTERM)
    assert (code, took < STOP_WITHIN, out.is_file()) == (0, True, True), stderr


def test_ctrl_c_works_when_started_in_the_background_of_a_script(workloads, spawn, tmp_path):
    """A shell starts background jobs with SIGINT ignored; `kill -INT` must still stop us."""
    process = spawn([workloads.build("hot_c_fp")])
    out = tmp_path / "background.folded"
    code, stderr, took = interrupt_rover(process.pid, out, 1.0, ignore_sigint=True)
    assert (code, took < STOP_WITHIN, out.is_file()) == (0, True, True), stderr


def test_a_run_killed_while_compiling_leaves_no_compiler_log(workloads, spawn):
    process = spawn([workloads.build("hot_c_fp")])
    proc = start_rover("profile", "--pid", str(process.pid), "--duration", "30s", "-q")
    try:
        helper = wait_until_compiling(proc)
        log = os.readlink(f"/proc/{helper.pid}/fd/2")
        proc.kill()  # SIGKILL: no clean-up code runs
        proc.communicate(timeout=30)
        helper.wait(timeout=10)  # the helper dies with rover (PR_SET_PDEATHSIG)
    finally:
        proc.kill()
    assert log.endswith(" (deleted)"), log  # unlinked from the start
    assert not Path(log.removesuffix(" (deleted)")).exists()


def running_kernel_headers_release() -> str:
    """The release the headers at /lib/modules/$(uname -r)/build say they are for."""
    from rover.bpf.headers import HeaderSearch

    return HeaderSearch().find().release


def test_profile_and_check_say_whether_the_headers_match_the_running_kernel(spawn, tmp_path):
    headers, running = running_kernel_headers_release(), os.uname().release
    if headers == running:
        expected = ", matching the running kernel"
    else:  # this machine runs a kernel Debian ships no headers for (see scripts/setup.sh)
        expected = f", which do not match the running kernel {running}; usable: "
    idle = spawn(["sleep", "1000"], wait_ready=False)
    profiled = rover(
        "profile", "--pid", str(idle.pid), "--duration", "0.5s", "-o", str(tmp_path / "p.folded")
    )
    checked = rover("check")
    line = next(ln for ln in profiled.stderr.splitlines() if ln.startswith("kernel headers:"))
    assert f"kernel headers: host headers {headers} at " in line and expected in line
    line = next(ln for ln in checked.stdout.splitlines() if "kernel headers" in ln)
    assert line.startswith(f"[  ok] kernel headers   host headers {headers} at ")
    assert expected in line


def test_check_says_headers_of_the_running_kernel_match(tmp_path, monkeypatch):
    """A host root whose /lib/modules/$(uname -r)/build is a tree of exactly that release.

    The tree only has what the search looks for, so the compiles are left out (bcc
    crashes compiling against a tree this incomplete)."""
    import rover.check
    from rover.bpf.headers import REQUIRED_BUILD_FILES, REQUIRED_SOURCE_FILES
    from rover.hostfs import HostFS

    running = os.uname().release
    tree = tmp_path / "usr" / "src" / f"linux-headers-{running}"
    for name, text in [
        *((name, "") for name in REQUIRED_SOURCE_FILES + REQUIRED_BUILD_FILES),
        ("include/config/kernel.release", running + "\n"),
    ]:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    moddir = tmp_path / "lib" / "modules" / running
    moddir.mkdir(parents=True)
    os.symlink(f"/usr/src/{tree.name}", moddir / "build")
    skipped = rover.check.CheckResult("compile", True, "not tried")
    monkeypatch.setattr(rover.check, "_can_profile", lambda *_: [skipped])
    results = rover.check.run_checks(HostFS(tmp_path))
    line = next(r.line() for r in results if r.name == "kernel headers")
    expected = f"host headers {running} at {tree}, matching the running kernel"
    assert line == f"[  ok] kernel headers   {expected}"


def test_kernel_thread_profile_is_empty_and_says_why(tmp_path):
    out = tmp_path / "kthreadd.folded"
    result = rover("profile", "--pid", "2", "--duration", "1s", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.is_file() and out.read_text() == ""
    note = result.stderr.strip().splitlines()[-1]
    assert note.startswith("note: the profile is empty: pid 2 (kthreadd) is a kernel thread")
    assert "no user stack" in note and "did not run on a CPU" in note


@pytest.mark.parametrize(
    ("profile_type", "reason"),
    [
        ("on-cpu", "did not run on a CPU while it was sampled (0 ms of CPU time)"),
        (
            "off-cpu",
            "stayed asleep the whole time: off-CPU time is counted when a thread wakes up, "
            "and none did",
        ),
    ],
)
def test_idle_process_profile_is_empty_and_says_why(profile_type, reason, spawn, tmp_path):
    idle = spawn(["sleep", "1000"], wait_ready=False)
    out = tmp_path / "idle.pb.gz"
    result = rover(
        "profile", "--pid", str(idle.pid), "--type", profile_type, "--duration", "1s",
        "-o", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.is_file()
    note = result.stderr.strip().splitlines()[-1]
    assert note == f"note: the profile is empty: pid {idle.pid} (sleep) {reason}"


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


def test_unwritable_output_fails_but_keeps_the_data(workloads, spawn, tmp_path):
    process = spawn([workloads.build("hot_c_fp")])
    result = rover(
        "profile", "--pid", str(process.pid), "--duration", "1s", "-o", "/proc/rover.folded",
        env={"TMPDIR": str(tmp_path)},  # where the profile is saved instead: not left in /tmp
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "cannot write /proc/rover.folded" in line and "saved to" in line
    saved = Path(line.rsplit("saved to ", 1)[1].strip())
    assert saved.parent == tmp_path
    assert "c_hot_spin" in saved.read_text()


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
    """Loader threads of CFI unwind tables still running (each CFI engine starts one)."""
    return [t.name for t in threading.enumerate() if t.name == "unwind-tables"]


def fail_loads(monkeypatch) -> None:
    """Make every program's compile fail, as a broken compile would."""
    import rover.bpf.engine
    from rover.bpf.loader import BPFLoadError

    def load(spec, headers):
        raise BPFLoadError(f"could not load {spec.source}.c: simulated failure\nclang details")

    monkeypatch.setattr(rover.bpf.engine, "load_program", load)


def test_check_compiles_the_programs_and_verifies_the_walk(capsys):
    code, out, err = check_in_process(capsys)
    assert code == 0, out + err
    for kind in ("on-cpu", "off-cpu"):
        assert f"[  ok] {kind} profiling program compiled (in a helper process), loaded and" in out
        assert f"[  ok] {kind} profiling (eh_frame) CFI stack walk verified by the kernel" in out
    assert unwind_threads() == []


def test_check_walk_refused_is_a_warning_when_frame_pointers_work(capsys, walk_refused):
    code, out, err = check_in_process(capsys)
    assert code == 0, out + err  # frame-pointer profiling works: only required checks count
    assert "profiling can run on this machine" in out
    for kind in ("on-cpu", "off-cpu"):
        assert f"[  ok] {kind} profiling program compiled" in out
        line = f"[warn] {kind} profiling (eh_frame) this kernel's verifier refuses the CFI"
        assert line in out and "only frame_pointer unwinding works" in out
    assert unwind_threads() == []


def test_check_attach_failure_is_reported_and_closes_the_engine(capsys, monkeypatch):
    from rover.bpf.loader import BPFLoadError
    from rover.bpf.program import LoadedProgram

    def attach(*_args):
        raise BPFLoadError("could not attach the CPU-clock perf event: simulated")

    monkeypatch.setattr(LoadedProgram, "attach_cpu_clock", attach)
    code, out, err = check_in_process(capsys)
    assert code == 1
    assert "[FAIL] on-cpu profiling could not attach the CPU-clock" in out
    assert "[  ok] off-cpu profiling program compiled" in out
    assert unwind_threads() == []


def test_check_fails_when_the_programs_do_not_compile(capsys, monkeypatch):
    fail_loads(monkeypatch)
    code, out, err = check_in_process(capsys)
    assert code == 1
    failure = "could not load {}: simulated failure\n"  # the first line of the error only
    assert "[FAIL] on-cpu profiling " + failure.format("oncpu.c") in out
    assert "[FAIL] on-cpu profiling (eh_frame) " + failure.format("oncpu.c") in out
    assert "clang details" not in out
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
