"""The compile helper: programs compiled in a short-lived child and handed over by file
descriptor, so the profiling process never holds the compiler."""

from __future__ import annotations

import ctypes as ct
import json
import logging
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

import rover.bpf.program
from rover.bpf import syscall
from rover.bpf.engine import ProfilerEngine
from rover.bpf.headers import HeaderSearch
from rover.bpf.loader import BPFLoadError
from rover.bpf.maps import BpfMap, MapLayoutError
from rover.bpf.program import CompileCancelled, cancel_compiles
from rover.profile import ProfileType

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module")
def headers():
    return HeaderSearch().find()  # raises (the test errors) when there are no headers


# A fresh interpreter (this one has bcc loaded by other tests): load every engine in
# every unwinding mode, profile the process given, and report what is mapped.
NO_COMPILER_HERE = """
import json, os, sys, time
from rover.bpf.headers import HeaderSearch
from rover.bpf.engine import EngineConfig
from rover.profile import ProfileType
from rover.unwind.modes import make_engine

target = int(sys.argv[1])
headers = HeaderSearch().find()
results = {}
for unwind in ("frame_pointer", "eh_frame"):
    for profile_type in ProfileType:
        engine = make_engine(profile_type, headers, EngineConfig(frequency=499), unwind)
        engine.add_pid(target)
        engine.settle(30)
        time.sleep(1)
        drained = engine.drain()
        results[f"{unwind} {profile_type.value}"] = [
            [list(s.user), s.values[0]] for s in drained.stacks if s.tgid == target
        ]
        engine.close()
mapped = [line.split()[-1] for line in open("/proc/self/smaps")
          if line.split()[-1].startswith("/") and ("libLLVM" in line or "libclang" in line)]
print(json.dumps({"results": results, "mapped": mapped,
                  "bcc": [m for m in sys.modules if m == "bcc" or m.startswith("bcc.")]}))
"""


def test_profiling_loads_no_compiler_into_the_process(spawn, workloads):
    from rover.symbols import Symbolizer

    busy = spawn([workloads.build("chain_c"), "cpu"])
    out = subprocess.run(
        [sys.executable, "-c", NO_COMPILER_HERE, str(busy.pid)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    report = json.loads(out)
    assert report["mapped"] == [] and report["bcc"] == []
    symbolizer = Symbolizer()
    symbolizer.prepare(busy.pid)
    for mode, stacks in report["results"].items():
        assert sum(n for _, n in stacks) > 0, mode
        if mode == "eh_frame on-cpu":  # main -> chain_a -> chain_b -> the spinning leaf
            named = [
                [f.name for f in symbolizer.user_frames(busy.pid, tuple(user))]
                for user, _ in stacks
            ]
            assert sum("chain_a" in n and "main" in n for n in named) > len(named) * 0.8


def bpf_objects() -> tuple[int, int]:
    """BPF programs and maps the kernel holds now (bpftool)."""
    counts = []
    for kind in ("prog", "map"):
        listed = subprocess.run(
            ["bpftool", "-j", kind, "show"], capture_output=True, text=True, check=True
        ).stdout
        counts.append(len(json.loads(listed)))
    return counts[0], counts[1]


def settled_objects(expected: tuple[int, int], timeout: float = 10.0) -> tuple[int, int]:
    """bpf_objects() once it equals ``expected``, or at ``timeout``: the kernel frees a
    map on a work queue after its last descriptor closes, not at once."""
    deadline = time.monotonic() + timeout
    while (now := bpf_objects()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return now


def baseline_objects(timeout: float = 10.0) -> tuple[int, int]:
    """bpf_objects() once objects freed by earlier tests are gone (two reads agree)."""
    deadline = time.monotonic() + timeout
    last = bpf_objects()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = bpf_objects()
        if now == last:
            return now
        last = now
    return last


def helpers() -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if "rover.bpf.compile_helper" in " ".join(child.cmdline())
    ]


def kill_helpers(times: int, stop: threading.Event) -> list[int]:
    """Kill the compile helper ``times`` times, each as soon as it runs; the pids killed."""
    killed: list[int] = []
    while len(killed) < times and not stop.is_set():
        for helper in helpers():
            if helper.pid not in killed:
                time.sleep(0.3)  # mid-compile
                helper.kill()
                killed.append(helper.pid)
        time.sleep(0.01)
    return killed


def test_a_helper_killed_mid_compile_is_replaced_and_nothing_leaks(headers, caplog):
    before = baseline_objects()
    stop = threading.Event()
    killed: list[int] = []
    killer = threading.Thread(target=lambda: killed.extend(kill_helpers(1, stop)))
    killer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="rover.bpf.program"):
            engine = ProfilerEngine(ProfileType.ON_CPU, headers)
    finally:
        stop.set()
        killer.join()
    try:
        assert len(killed) == 1
        assert "was killed by SIGKILL before handing the program over" in caplog.text
        assert "trying again" in caplog.text
        assert engine.drain().info["events"] >= 0  # loaded, attached, readable
    finally:
        engine.close()
    assert settled_objects(before) == before


def test_a_helper_killed_every_time_is_a_clear_error_and_nothing_leaks(headers):
    before = baseline_objects()
    stop = threading.Event()
    killer = threading.Thread(target=kill_helpers, args=(rover.bpf.program.HELPER_ATTEMPTS, stop))
    killer.start()
    try:
        with pytest.raises(BPFLoadError) as err:
            ProfilerEngine(ProfileType.OFF_CPU, headers)
    finally:
        stop.set()
        killer.join()
    message = str(err.value)
    assert "could not load offcpu.c: the compile helper was killed by SIGKILL" in message
    assert helpers() == []
    assert settled_objects(before) == before
    ProfilerEngine(ProfileType.OFF_CPU, headers).close()  # and the next compile works


def test_cancel_ends_a_compile_at_once(headers):
    stop = threading.Event()

    def cancel_when_compiling() -> None:
        while not stop.is_set() and not helpers():
            time.sleep(0.01)
        time.sleep(0.3)
        cancel_compiles()

    canceller = threading.Thread(target=cancel_when_compiling)
    canceller.start()
    started = time.monotonic()
    try:
        with pytest.raises(CompileCancelled, match="compiling oncpu.c was cancelled"):
            ProfilerEngine(ProfileType.ON_CPU, headers)
    finally:
        stop.set()
        canceller.join()
    assert time.monotonic() - started < 5
    assert helpers() == []
    ProfilerEngine(ProfileType.ON_CPU, headers).close()  # cancelling is not for ever


def test_without_a_helper_the_program_is_compiled_here_and_says_why(headers, caplog, monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    with caplog.at_level(logging.WARNING, logger="rover.bpf.program"):
        engine = ProfilerEngine(ProfileType.ON_CPU, headers)
    try:
        assert "compiling oncpu.c in the agent: the compile helper cannot start" in caplog.text
        assert engine.drain().info["events"] >= 0
    finally:
        engine.close()


def test_a_map_read_with_the_wrong_layout_is_an_error_not_garbage():
    fd = syscall.create_array("layout_test", 16, 4)
    try:
        with pytest.raises(MapLayoutError, match="value is 16 bytes in the kernel, 8 in"):
            BpfMap("layout_test", fd, ct.c_uint32, ct.c_uint64)
        pairs = BpfMap("layout_test", fd, ct.c_uint32, ct.c_uint64 * 2)
        pairs[3] = (ct.c_uint64 * 2)(7, 9)
        assert list(pairs[3]) == [7, 9] and list(pairs[0]) == [0, 0]
        assert 3 in pairs and len(pairs) == 4
        with pytest.raises(KeyError):
            pairs[4]
    finally:
        os.close(fd)
