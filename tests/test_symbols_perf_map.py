"""JIT frames from perf maps: parsing, namespaces, growth, rewrites, and a real Node.js."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from symbols_helpers import RunningProgram, build

from rover.byte_cache import ENTRY_OVERHEAD_BYTES
from rover.hostfs import HostFS
from rover.profile import ProfileType
from rover.symbols import Symbolizer, perf_map
from rover.symbols.perf_map import parse_perf_map

ANON = 0x7F0000000000
MAPS = (
    f"{ANON:x}-{ANON + 0x100000:x} r-xp 00000000 00:00 0 \n"
    "555555554000-555555556000 r--p 00000000 fe:00 42 /opt/app/data\n"
)


def names(frames):
    return [f.name for f in frames]


def test_parse_lines_and_count_garbage() -> None:
    text = (
        b"7f0000001000 40 JS:*hot /app/x.js:1\n"
        b"0x7f0000002000 0x20 py::f:/a.py\n"
        b"garbage\n"
        b"\n"
        b"zz 10 name\n"
        b"7f0000003000 10\n"
        b"7f0000004000\t8\tspaced name  \n"
        b"10000000000000000 10 too wide\n"
    )
    starts, sizes, offsets, garbage = parse_perf_map(text)
    assert starts.tolist() == [0x7F0000001000, 0x7F0000002000, 0x7F0000004000]
    assert sizes.tolist() == [0x40, 0x20, 8]
    lines = [text[offset:].split(b"\n", 1)[0] for offset in offsets.tolist()]
    assert lines == [
        b"7f0000001000 40 JS:*hot /app/x.js:1",
        b"0x7f0000002000 0x20 py::f:/a.py",
        b"7f0000004000\t8\tspaced name  ",
    ]
    assert garbage == 4


def fake_process(tmp_path: Path, pid: int, ns_pid: int, perf_map_text: str) -> Path:
    """A /proc tree for ``pid`` (``ns_pid`` in its own namespace) with one anonymous
    executable mapping and a perf map inside its root; returns the perf map path."""
    proc = tmp_path / "proc" / str(pid)
    (proc / "root" / "tmp").mkdir(parents=True)
    (proc / "maps").write_text(MAPS)
    (proc / "status").write_text(f"Name:\tnode\nPid:\t{pid}\nNSpid:\t{pid}\t{ns_pid}\n")
    path = proc / "root" / "tmp" / f"perf-{ns_pid}.map"
    path.write_text(perf_map_text)
    return path


def test_anonymous_code_is_named_from_the_perf_map_of_the_namespace_pid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake_process(
        tmp_path,
        4242,
        7,
        f"{ANON + 0x1000:x} 100 LazyCompile:*work /app/x.js:3\n"
        "this line is garbage\n"
        f"{ANON + 0x2000:x} 20 Interpreter\n"
        f"{ANON + 0x200000:x} 40 stub_outside_any_mapping\n",
    )
    # Another pid's perf map (the host pid's name) must not be read.
    (tmp_path / "proc/4242/root/tmp/perf-4242.map").write_text(f"{ANON:x} 100000 wrong\n")
    symbolizer = Symbolizer(HostFS(tmp_path))
    symbolizer.prepare(4242)
    addresses = [ANON + 0x1010, ANON + 0x2001, ANON + 0x3000, ANON + 0x200010]
    frames = symbolizer.user_frames(4242, addresses)
    assert names(frames) == [
        "LazyCompile:*work /app/x.js:3",
        "Interpreter",  # a return address: searched at address - 1
        f"[anon]+0x{ANON + 0x3000:x}",
        "stub_outside_any_mapping",
    ]
    assert [f.symbolized for f in frames] == [True, True, False, True]
    assert (frames[0].module, frames[0].file) == ("perf-7.map", "/tmp/perf-7.map")
    assert symbolizer.counters["perf_map_bad_lines"] == 1
    assert symbolizer.counters["unsymbolized_frames"] == 1
    assert symbolizer.counters["maps_rereads"] == 1  # the address in no mapping, once


@pytest.fixture
def no_recheck_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perf_map, "RECHECK_SECONDS", 0.0)


def test_perf_map_that_grows_is_followed(tmp_path: Path, no_recheck_delay: None) -> None:
    path = fake_process(tmp_path, 4343, 4343, f"{ANON + 0x1000:x} 10 first\n")
    symbolizer = Symbolizer(HostFS(tmp_path))
    symbolizer.prepare(4343)
    assert names(symbolizer.user_frames(4343, [ANON + 0x1001])) == ["first"]
    assert names(symbolizer.user_frames(4343, [ANON + 0x2001])) == [f"[anon]+0x{ANON + 0x2001:x}"]
    with open(path, "a") as f:
        f.write(f"{ANON + 0x2000:x} 10 second\n{ANON + 0x3000:x} 10 thi")  # last line unfinished
    assert names(symbolizer.user_frames(4343, [ANON + 0x2001])) == ["second"]
    assert names(symbolizer.user_frames(4343, [ANON + 0x3001]))[0].startswith("[anon]")
    with open(path, "a") as f:
        f.write("rd\n")
    assert names(symbolizer.user_frames(4343, [ANON + 0x3001, ANON + 0x1001])) == [
        "third",
        "first",
    ]
    assert symbolizer.counters["perf_maps_read"] == 3
    assert symbolizer.counters["perf_map_bad_lines"] == 0


def test_newest_entry_wins_when_code_is_replaced(tmp_path: Path, no_recheck_delay: None) -> None:
    path = fake_process(tmp_path, 4444, 4444, f"{ANON + 0x1000:x} 40 old_code\n")
    symbolizer = Symbolizer(HostFS(tmp_path))
    assert names(symbolizer.user_frames(4444, [ANON + 0x1010])) == ["old_code"]
    with open(path, "a") as f:
        f.write(f"{ANON + 0x1000:x} 40 new_code\n{ANON + 0x5000:x} 4 other\n")
    symbolizer.user_frames(4444, [ANON + 0x5001])  # unknown: the map is read again
    assert names(symbolizer.user_frames(4444, [ANON + 0x1010])) == ["new_code"]


def test_rewritten_perf_map_is_read_anew(tmp_path: Path, no_recheck_delay: None) -> None:
    # `jcmd PID Compiler.perfmap` writes the whole file again each time.
    path = fake_process(tmp_path, 4545, 4545, f"{ANON + 0x1000:x} 10 a_long_first_name\n")
    symbolizer = Symbolizer(HostFS(tmp_path))
    assert names(symbolizer.user_frames(4545, [ANON + 0x1001])) == ["a_long_first_name"]
    path.write_text(f"{ANON + 0x2000:x} 10 b\n")  # shorter: not an append
    assert names(symbolizer.user_frames(4545, [ANON + 0x2001])) == ["b"]
    assert names(symbolizer.user_frames(4545, [ANON + 0x1001]))[0].startswith("[anon]+0x")


def test_perf_map_is_rechecked_at_most_every_interval(tmp_path: Path) -> None:
    path = fake_process(tmp_path, 4646, 4646, "")
    symbolizer = Symbolizer(HostFS(tmp_path))
    assert names(symbolizer.user_frames(4646, [ANON + 0x1001]))[0].startswith("[anon]")
    path.write_text(f"{ANON + 0x1000:x} 10 late\n")
    deadline = time.monotonic() + 5
    while names(symbolizer.user_frames(4646, [ANON + 0x1001])) != ["late"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert symbolizer.counters["perf_maps_read"] == 1


def test_perf_map_that_is_not_a_regular_file_is_not_read(tmp_path: Path) -> None:
    path = fake_process(tmp_path, 4747, 4747, "")
    path.unlink()
    os.mkfifo(path)  # opening a FIFO for reading would block forever
    symbolizer = Symbolizer(HostFS(tmp_path))
    frames = symbolizer.user_frames(4747, [ANON + 0x1001])
    assert not frames[0].symbolized


def test_real_process_anonymous_code_named_from_its_perf_map() -> None:
    symbolizer = Symbolizer()
    with RunningProgram([str(build("c_pie"))]) as prog:
        jit = prog.send("jit")["jit"]
        path = Path(f"/tmp/perf-{prog.pid}.map")
        try:
            path.write_text(f"{jit:x} 80 jitted_function\n{jit + 0x80:x} 80 another_one\n")
            symbolizer.prepare(prog.pid)
            frames = symbolizer.user_frames(
                prog.pid, [jit + 0x10, jit + 0x90, prog.addresses["main"] + 8]
            )
        finally:
            path.unlink()
    assert names(frames) == ["jitted_function", "another_one", "main"]
    assert frames[0].module == f"perf-{prog.pid}.map"


NODE_SCRIPT = r"""
function hotLoopWork() {
  let s = 0;
  for (;;) {
    for (let i = 0; i < 1e6; i++) s = (s + i * 7) % 1000003;
    if (s < 0) return s;
  }
}
console.log("ready");
hotLoopWork();
"""


@pytest.mark.bpf
@pytest.mark.parametrize("unwind", ["frame_pointer", "eh_frame"])
def test_node_perf_basic_prof_stacks_name_the_js_function(spawn, tmp_path: Path, unwind) -> None:
    """JIT code has no CFI: in eh_frame mode its frames are stepped by frame pointer (V8
    keeps them), and the unwind goes on through node's own frames."""
    from rover.bpf.engine import EngineConfig
    from rover.bpf.headers import HeaderSearch
    from rover.unwind.modes import make_engine

    # cwd: --perf-basic-prof also writes a V8 log file there.
    node = spawn(["node", "--perf-basic-prof", "-e", NODE_SCRIPT], cwd=tmp_path)
    perf_map_path = Path(f"/tmp/perf-{node.pid}.map")
    symbolizer = Symbolizer()
    try:
        engine = make_engine(ProfileType.ON_CPU, HeaderSearch().find(), EngineConfig(199), unwind)
        try:
            time.sleep(0.5)  # let V8 optimize the loop (and write its code to the perf map)
            symbolizer.prepare(node.pid)
            engine.add_pid(node.pid)
            assert engine.settle(30)  # node's own table takes a second or so to build
            time.sleep(1.5)
            stacks = [s for s in engine.drain().stacks if s.tgid == node.pid and s.user]
        finally:
            engine.close()
        symbolized = [(symbolizer.user_frames(node.pid, s.user), s.values[0]) for s in stacks]
    finally:
        node.stop()
        perf_map_path.unlink(missing_ok=True)
    total = sum(n for _, n in symbolized)
    in_work = [frames for frames, _ in symbolized if any("hotLoopWork" in f.name for f in frames)]
    named = sum(n for frames, n in symbolized if frames in in_work)
    assert total > 100
    assert named / total > 0.8, [names(f) for f, _ in symbolized][:5]
    jit = [f for frames in in_work for f in frames if "hotLoopWork" in f.name]
    assert {(f.module, f.file) for f in jit} == {(perf_map_path.name, str(perf_map_path))}
    if unwind == "eh_frame":  # past the JIT frames, through node's C++ (CFI), to _start
        rooted = [
            frames
            for frames in in_work
            if [f.name for f in frames[-2:]] == ["__libc_start_main", "_start"]
            and any(f.name.startswith("node::Start") for f in frames)
        ]
        assert len(rooted) / len(in_work) > 0.8, [names(f)[-4:] for f in in_work][:3]


def test_names_stay_readable_after_the_file_is_deleted(tmp_path: Path) -> None:
    """Names are read back from the file when first needed: through the descriptor kept
    open, so a JIT that exited (its perf map deleted with it) still gets named."""
    path = fake_process(tmp_path, 4848, 4848, f"{ANON + 0x1000:x} 10 jitted_then_gone\n")
    symbolizer = Symbolizer(HostFS(tmp_path))
    symbolizer.prepare(4848)
    assert names(symbolizer.user_frames(4848, [ANON + 0x20])) == [f"[anon]+0x{ANON + 0x20:x}"]
    path.unlink()
    assert names(symbolizer.user_frames(4848, [ANON + 0x1001])) == ["jitted_then_gone"]


def test_perf_map_over_the_line_budget_is_read_up_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(perf_map, "_MAX_ENTRIES", 3)
    monkeypatch.setattr(perf_map, "_CHUNK_BYTES", 64)  # several chunks: the budget is per line
    text = "".join(f"{ANON + i * 0x100:x} 10 fn{i}_{'x' * 20}\n" for i in range(10))
    fake_process(tmp_path, 4949, 4949, text)
    symbolizer = Symbolizer(HostFS(tmp_path))
    first = symbolizer.user_frames(4949, [ANON + 0x1])
    last = symbolizer.user_frames(4949, [ANON + 0x901])
    assert names(first) == [f"fn0_{'x' * 20}"]
    assert not last[0].symbolized
    assert symbolizer.counters["perf_map_errors"] == 1
    assert any("over 3 lines" in r.getMessage() for r in caplog.records)


def test_line_longer_than_a_chunk_is_skipped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(perf_map, "_CHUNK_BYTES", 64)
    text = f"{ANON + 0x100:x} 10 {'y' * 300}\n{ANON + 0x200:x} 10 after_it\n"
    fake_process(tmp_path, 5050, 5050, text)
    symbolizer = Symbolizer(HostFS(tmp_path))
    assert names(symbolizer.user_frames(5050, [ANON + 0x201])) == ["after_it"]
    assert not symbolizer.user_frames(5050, [ANON + 0x101])[0].symbolized
    assert symbolizer.counters["perf_map_bad_lines"] == 1


PEAK_CHILD = r"""
import re, sys
from rover.byte_cache import ENTRY_OVERHEAD_BYTES
from rover.hostfs import HostFS
from rover.symbols.perf_map import PerfMap
from rover.symbols.report import Reporter
def hwm():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
before = hwm()
perf_map = PerfMap(HostFS(sys.argv[1]), 77, Reporter(()))
perf_map.refresh(force=True)
assert perf_map.frame(int(sys.argv[2]), True).name == "LazyCompile:*fn7 /app/src/m7.js:7"
print(len(perf_map), (hwm() - before) * 1024)
"""


def test_reading_a_big_perf_map_stays_within_its_memory_budget(tmp_path: Path) -> None:
    """1,000,000 lines (62 MB): the whole read peaks under 1.5x the file's size (about
    1.1x measured; it peaked at 8x when every line became Python objects)."""
    lines = 1_000_000
    proc = tmp_path / "proc" / "77"
    (proc / "root" / "tmp").mkdir(parents=True)
    (proc / "status").write_text("NSpid:\t77\n")
    path = proc / "root" / "tmp" / "perf-77.map"
    with open(path, "w") as f:
        for i in range(lines):
            f.write(f"{ANON + i * 0x200:x} 1f0 LazyCompile:*fn{i} /app/src/m{i % 97}.js:{i}\n")
    size = path.stat().st_size
    out = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD, str(tmp_path), str(ANON + 7 * 0x200 + 1)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    kept, peak = int(out[0]), int(out[1])
    assert kept == lines
    assert peak < size * 1.5, f"reading {size >> 20} MiB of perf map peaked at +{peak >> 20} MiB"


def test_perf_maps_share_one_byte_budget_and_name_the_same_after_eviction(
    tmp_path: Path,
) -> None:
    """Three JIT processes, room for two maps: the least recently used is evicted (its
    file let go) and read again, to the same names, when its process needs it."""
    lines = 200
    for pid in (5101, 5102, 5103):
        text = "".join(f"{ANON + i * 0x100:x} 80 js_{pid}_{i}\n" for i in range(lines))
        fake_process(tmp_path, pid, pid, text)
    # Each map: its lines, two frames named, the cache entry.
    one_map = 1024 + 24 * lines + 2 * perf_map._FRAME_BYTES + ENTRY_OVERHEAD_BYTES
    budget = 2 * one_map + one_map // 2
    symbolizer = Symbolizer(HostFS(tmp_path), perf_map_bytes=budget)
    assert names(symbolizer.user_frames(5101, [ANON + 0x10, ANON + 0x510])) == [
        "js_5101_0",
        "js_5101_5",
    ]
    for pid in (5102, 5103):
        symbolizer.user_frames(pid, [ANON + 0x10, ANON + 0x510])
    perf_maps = symbolizer.caches()[1]
    assert perf_maps.name == "perf_maps"
    assert (perf_maps.entries, perf_maps.evictions) == (2, 1)
    assert perf_maps.bytes <= budget
    read = symbolizer.counters["perf_maps_read"]
    # 5101's map was evicted: it is read again, and names what it named before.
    assert names(symbolizer.user_frames(5101, [ANON + 0x510, ANON + 0x10, ANON + 0xC711])) == [
        "js_5101_5",
        "js_5101_0",
        "js_5101_199",
    ]
    assert symbolizer.counters["perf_maps_read"] == read + 1
    assert symbolizer.caches()[1].evictions == 2  # 5102's went to make room
    assert symbolizer.caches()[1].bytes <= budget


def test_one_perf_map_reads_at_most_half_the_budget(tmp_path: Path) -> None:
    text = "".join(f"{ANON + i * 0x100:x} 80 fn{i}\n" for i in range(1000))
    fake_process(tmp_path, 5201, 5201, text)
    budget = 48 * 100  # half of it: 100 lines of 24 bytes
    symbolizer = Symbolizer(HostFS(tmp_path), perf_map_bytes=budget)
    assert names(symbolizer.user_frames(5201, [ANON + 0x10, ANON + 99 * 0x100 + 0x11])) == [
        "fn0",
        "fn99",
    ]
    assert not symbolizer.user_frames(5201, [ANON + 100 * 0x100 + 0x10])[0].symbolized
    assert symbolizer.counters["perf_map_errors"] == 1  # "over N lines", once
    stats = symbolizer.caches()[1]
    assert stats.entries == 1 and stats.bytes <= stats.budget_bytes
