"""pprof export and import, checked with the real `go tool pprof`."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import zlib
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection
from rover_cli import rover
from test_export_flamegraph import HOT_NAME, hot_profile, kernel, user
from workloads.build import cache_dir

from rover.export import CorruptProfile, read_profile, write_profile
from rover.export import pprof as pprof_module
from rover.export.pprof import parse_pprof
from rover.export.pprof_pb import profile_pb2 as pb
from rover.profile import Frame, FrameKind, ProcessInfo, Profile, ProfileType

GO = "/usr/bin/go"


def go_env(tmp_path: Path) -> dict[str, str]:
    go_cache = cache_dir() / ".go"
    return {
        **os.environ,
        "GOCACHE": str(go_cache / "cache"),
        "GOPATH": str(go_cache / "path"),
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",  # everything used is in the standard library
        "PPROF_TMPDIR": str(tmp_path),
        "HOME": str(tmp_path),  # pprof may keep settings there
    }


def go_pprof(tmp_path: Path, *args: str) -> str:
    result = subprocess.run(
        [GO, "tool", "pprof", *args], capture_output=True, text=True, timeout=120,
        env=go_env(tmp_path), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def top_entries(output: str) -> list[tuple[str, float, float]]:
    """(function, flat %, cum %) rows of `go tool pprof -top`, in its order (by flat)."""
    rows = []
    table = output.split("flat%   sum%        cum   cum%", 1)[1]
    for line in table.strip().splitlines():
        match = re.match(r"\s*\S+\s+([\d.]+)%\s+[\d.]+%\s+\S+\s+([\d.]+)%\s+(.*)$", line)
        assert match, line
        rows.append((match.group(3).strip(), float(match.group(1)), float(match.group(2))))
    return rows


def decode(path: Path) -> pb.Profile:
    message = pb.Profile()
    message.ParseFromString(gzip.decompress(path.read_bytes()))
    return message


# --- go tool pprof reads what we write ------------------------------------------


def test_go_pprof_top_lists_the_hot_function_first(tmp_path):
    path = tmp_path / "hot.pb.gz"
    write_profile(hot_profile(), str(path))
    output = go_pprof(tmp_path, "-top", str(path))
    assert "Type: samples" in output
    assert "Duration: 10s, Total samples = 1000" in output
    name, flat, cum = top_entries(output)[0]
    assert name == HOT_NAME
    assert (flat, cum) == (74.0, 80.0)  # 740 samples in it, 60 more in its interrupts


def test_go_pprof_cpu_value_and_raw_dump(tmp_path):
    path = tmp_path / "hot.pprof"
    write_profile(hot_profile(), str(path), value="cpu")
    raw = go_pprof(tmp_path, "-raw", str(path))
    assert "PeriodType: cpu nanoseconds" in raw
    assert "Period: 10101010" in raw
    assert "samples/count cpu/nanoseconds[dflt]" in raw  # --value picks the default
    assert re.search(r"\[kernel\.kallsyms\]", raw)
    assert "process:[busy]" in raw and "pid:[100]" in raw
    top = go_pprof(tmp_path, "-top", str(path))
    assert "Type: cpu" in top
    assert top_entries(top)[0][0] == HOT_NAME


def test_go_pprof_tagroot_shows_the_process(tmp_path):
    path = tmp_path / "hot.pb.gz"
    write_profile(hot_profile(), str(path))
    traces = go_pprof(tmp_path, "-tagroot=process", "-traces", str(path))
    first = traces.split("-----------+", 2)[1]
    # -traces prints each stack leaf first; the process label is its outermost frame
    lines = [line.split()[-1] for line in first.strip().splitlines()[1:] if line.strip()]
    assert lines[-1] == "busy" and HOT_NAME in lines


def test_off_cpu_sample_types(tmp_path):
    profile = Profile.new(ProfileType.OFF_CPU, duration_ns=5_000_000_000)
    profile.processes[7] = ProcessInfo(7, "sleeper")
    profile.add(7, (user("main"), user("nanosleep"), kernel("schedule")), [4, 3_000_000_000])
    path = tmp_path / "off.pb.gz"
    write_profile(profile, str(path))
    message = decode(path)
    strings = message.string_table
    types = [(strings[t.type], strings[t.unit]) for t in message.sample_type]
    assert types == [("switches", "count"), ("off_cpu", "nanoseconds")]
    assert strings[message.default_sample_type] == "off_cpu"
    assert message.period == 0
    assert "Type: off_cpu" in go_pprof(tmp_path, "-top", str(path))


# --- structure -------------------------------------------------------------------


def test_structure_mappings_locations_strings(tmp_path):
    profile = hot_profile()
    profile.start_time_ns = 1_700_000_000_000_000_000
    profile.count("stacks_dropped", 3)
    profile.add(
        100,
        (Frame("main", FrameKind.USER, "busy", True, "/opt/busy", "abc123"),
         Frame("nft_do_chain", FrameKind.KERNEL, "nf_tables")),
        [5, 5],
    )  # fmt: skip
    path = tmp_path / "p.pb.gz"
    write_profile(profile, str(path))
    message = decode(path)
    strings = list(message.string_table)
    assert strings[0] == ""
    assert len(strings) == len(set(strings))
    assert [(strings[t.type], strings[t.unit]) for t in message.sample_type] == [
        ("samples", "count"),
        ("cpu", "nanoseconds"),
    ]
    assert (strings[message.period_type.type], strings[message.period_type.unit]) == (
        "cpu",
        "nanoseconds",
    )
    assert message.period == 1_000_000_000 // 99
    assert message.time_nanos == 1_700_000_000_000_000_000
    assert message.duration_nanos == 10_000_000_000
    assert [strings[c] for c in message.comment] == ["stacks_dropped=3"]

    mappings = {m.id: (strings[m.filename], strings[m.build_id]) for m in message.mapping}
    assert sorted(mappings.values()) == [
        ("/opt/busy", "abc123"),
        ("[kernel.kallsyms]", ""),
        ("busy", ""),
        ("libc.so.6", ""),
    ]
    assert mappings[message.mapping[0].id] == ("busy", "")  # the main binary comes first
    assert all(m.has_functions and m.id for m in message.mapping)

    functions = {f.id: f for f in message.function}
    locations = {loc.id: loc for loc in message.location}

    def frame(location_id: int) -> tuple[str, str, str]:
        location = locations[location_id]
        function = functions[location.line[0].function_id]
        mapping = mappings[location.mapping_id]
        return strings[function.name], mapping[0], strings[function.filename]

    hottest = max(message.sample, key=lambda s: s.value[0])
    assert list(hottest.value) == [740, 7_400_000_000]
    names = [frame(i)[0] for i in hottest.location_id]
    assert names == [HOT_NAME, "main", "__libc_start_main", "_start"]  # leaf first
    labels = {strings[label.key]: (strings[label.str], label.num) for label in hottest.label}
    assert labels == {"process": ("busy", 0), "pid": ("", 100)}

    module_sample = next(s for s in message.sample if list(s.value) == [5, 5])
    assert [frame(i) for i in module_sample.location_id] == [
        ("nft_do_chain", "[kernel.kallsyms]", "nf_tables"),  # a kernel module's frame
        ("main", "/opt/busy", ""),
    ]


def test_same_profile_same_bytes(tmp_path):
    write_profile(hot_profile(), str(tmp_path / "a.pb.gz"))
    write_profile(hot_profile(), str(tmp_path / "b.pb.gz"))
    assert (tmp_path / "a.pb.gz").read_bytes() == (tmp_path / "b.pb.gz").read_bytes()


# --- reading back -------------------------------------------------------------------


def test_round_trip_keeps_frames_processes_and_values(tmp_path):
    profile = hot_profile()
    profile.count("stacks_dropped", 2)
    profile.add(100, (Frame("f", FrameKind.USER, "busy", True, "/opt/busy", "abc"),), [3, 30])
    profile.add(100, (Frame("nft_do_chain", FrameKind.KERNEL, "nf_tables"),), [1, 10])
    path = tmp_path / "p.pb.gz"
    write_profile(profile, str(path))
    back = read_profile(str(path))
    assert back.type is ProfileType.ON_CPU
    assert back.value_types == profile.value_types
    assert back.samples == profile.samples  # every frame field, pid and value
    assert back.processes[100].name == "busy"
    assert (back.period_ns, back.duration_ns) == (profile.period_ns, profile.duration_ns)
    assert back.counters == {"stacks_dropped": 2}


def test_folded_to_pprof_to_folded(tmp_path):
    folded = tmp_path / "in.folded"
    write_profile(hot_profile(), str(folded))
    profile = read_profile(str(folded))
    write_profile(profile, str(tmp_path / "p.pb.gz"))
    write_profile(read_profile(str(tmp_path / "p.pb.gz")), str(tmp_path / "out.folded"))
    assert (tmp_path / "out.folded").read_text() == folded.read_text()
    # No pid is known: none is invented.
    assert "pid:" not in go_pprof(tmp_path, "-raw", str(tmp_path / "p.pb.gz"))


def test_reads_go_pprofs_own_encoding(tmp_path):
    ours = tmp_path / "ours.pb.gz"
    write_profile(hot_profile(), str(ours))
    theirs = tmp_path / "theirs.pb.gz"
    theirs.write_bytes(
        subprocess.run(
            [GO, "tool", "pprof", "-proto", str(ours)], capture_output=True, timeout=120,
            env=go_env(tmp_path), check=True,
        ).stdout
    )  # fmt: skip
    write_profile(read_profile(str(theirs)), str(tmp_path / "theirs.folded"))
    write_profile(hot_profile(), str(tmp_path / "ours.folded"))
    assert (tmp_path / "theirs.folded").read_text() == (tmp_path / "ours.folded").read_text()


GO_PROGRAM = """\
package main

import (
	"os"
	"runtime/pprof"
	"time"
)

var sink uint64 = 1

//go:noinline
func spin(n int) uint64 {
	x := sink
	for i := 0; i < n; i++ {
		x = x*6364136223846793005 + 1442695040888963407
	}
	return x
}

func main() {
	f, _ := os.Create(os.Args[1])
	pprof.StartCPUProfile(f)
	for deadline := time.Now().Add(800 * time.Millisecond); time.Now().Before(deadline); {
		sink = spin(1000000)
	}
	pprof.StopCPUProfile()
	f.Close()
}
"""


def test_reads_a_real_go_cpu_profile(tmp_path):
    source = tmp_path / "spinner.go"
    source.write_text(GO_PROGRAM)
    binary = tmp_path / "spinner"
    build = subprocess.run(
        [GO, "build", "-o", str(binary), str(source)], capture_output=True, text=True,
        timeout=300, env=go_env(tmp_path), check=False, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    out = tmp_path / "cpu.pprof"
    subprocess.run([str(binary), str(out)], check=True, timeout=60)

    profile = read_profile(str(out))
    assert profile.type is ProfileType.ON_CPU
    assert [(vt.type, vt.unit) for vt in profile.value_types] == [
        ("samples", "count"),
        ("cpu", "nanoseconds"),
    ]
    assert profile.period_ns == 10_000_000  # Go samples at 100 Hz
    assert profile.total() > 20
    spin = sum(v[0] for k, v in profile if k.frames and k.frames[-1].name == "main.spin")
    assert spin / profile.total() > 0.5
    names = {info.name for info in profile.processes.values()}
    assert names == {"spinner"}  # no labels: named after the main binary
    hot = next(k for k, _ in profile if k.frames and k.frames[-1].name == "main.spin")
    assert [f.name for f in hot.frames][-2:] == ["main.main", "main.spin"]
    assert hot.frames[-1].module == "spinner"
    assert hot.frames[-1].file == str(binary)


# --- corrupt input -------------------------------------------------------------------


def valid_message() -> pb.Profile:
    message = pb.Profile()
    message.string_table.extend(["", "samples", "count", "f"])
    message.sample_type.add(type=1, unit=2)
    message.function.add(id=1, name=3)
    message.location.add(id=1).line.add(function_id=1)
    message.sample.add(location_id=[1], value=[5])
    return message


def corrupted(change) -> bytes:
    message = valid_message()
    change(message)
    return message.SerializeToString()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "not a pprof profile"),
        (b"hello, world\n", "not a pprof profile"),
        (b"\x1f\x8b\x08\x00garbage", "bad gzip data"),
        (gzip.compress(b"\xff\xff\xff\xff"), "not a pprof profile"),
        (corrupted(lambda m: m.sample.add(location_id=[9], value=[1])), "location 9"),
        (corrupted(lambda m: m.sample.add(location_id=[1], value=[1, 2])), "2 values"),
        (corrupted(lambda m: setattr(m.function[0], "name", 99)), "string index 99"),
        (corrupted(lambda m: setattr(m.location[0], "mapping_id", 4)), "missing mapping"),
        (corrupted(lambda m: m.location.add(id=2).line.add(function_id=7)), None),
        (corrupted(lambda m: m.string_table.__setitem__(0, "x")), "no string table"),
        (corrupted(lambda m: m.sample.add(location_id=[1], value=[-5])), "negative value -5"),
        (
            corrupted(lambda m: m.sample.add(location_id=[1], value=[2**63 - 1])),
            "sample 1: values add up to more than 9,223,372,036,854,775,807",
        ),
        (valid_message().SerializeToString()[:-1], "not a pprof profile: a field at byte"),
    ],
)
def test_corrupt_input_is_named(data, needle):
    if needle is None:  # an unused broken location is harmless
        assert parse_pprof(data).total() == 5
        return
    with pytest.raises(CorruptProfile, match=needle) as error:
        parse_pprof(data, source="bad.pb.gz")
    assert str(error.value).startswith("bad.pb.gz: ")
    assert "\n" not in str(error.value)


def test_valid_minimal_message_reads():
    profile = parse_pprof(gzip.compress(valid_message().SerializeToString()))
    [(key, values)] = profile.samples.items()
    assert [f.name for f in key.frames] == ["f"] and values == [5]


# --- a real profile -------------------------------------------------------------------


def gnu_build_id(path: Path) -> str:
    with open(path, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if section.name == ".note.gnu.build-id" and isinstance(section, NoteSection):
                for note in section.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return note["n_desc"]
    raise AssertionError(f"{path} has no GNU build id")


@pytest.mark.bpf
def test_rover_profile_writes_pprof_go_reads(workloads, spawn, tmp_path):
    binary = workloads.build("hot_c_fp")
    process = spawn([binary])
    out = tmp_path / "hot_c_fp.pb.gz"
    result = rover("profile", "--pid", str(process.pid), "--duration", "3s", "-q", "-o", str(out))
    assert result.returncode == 0, result.stderr
    top = top_entries(go_pprof(tmp_path, "-top", str(out)))
    assert workloads.hot_function("hot_c_fp") in [name for name, _, _ in top[:3]], top[:5]

    message = decode(out)
    strings = message.string_table
    mappings = {strings[m.filename]: strings[m.build_id] for m in message.mapping}
    main = next(name for name in mappings if name.endswith("/hot_c_fp"))
    # /proc/PID/exe: the file the process runs, even if the cache was rebuilt since
    assert mappings[main] == gnu_build_id(Path(f"/proc/{process.pid}/exe"))
    assert strings[message.mapping[0].filename] == main
    assert message.period == 1_000_000_000 // 99
    assert "PeriodType: cpu nanoseconds\n" in go_pprof(tmp_path, "-raw", str(out))


# --- size limit ------------------------------------------------------------------------


def gzipped_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(2**20)
    parts = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join([*parts, compressor.flush()])


def test_gzip_bomb_is_refused_before_it_is_kept(monkeypatch):
    monkeypatch.setattr(pprof_module, "MAX_PPROF_BYTES", 8 * 2**20)
    message = "bomb.pb.gz decompresses to more than 8 MiB, rover's limit for a pprof profile"
    with pytest.raises(CorruptProfile, match=message):
        parse_pprof(gzipped_zeros(64 * 2**20), source="bomb.pb.gz")


def test_uncompressed_profile_over_the_limit_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(pprof_module, "MAX_PPROF_BYTES", 1000)
    path = tmp_path / "big.pprof"
    path.write_bytes(bytes(1001))
    with pytest.raises(CorruptProfile, match="big.pprof is larger than 0 MiB"):
        read_profile(str(path))
    path.write_bytes(gzip.compress(valid_message().SerializeToString()))
    assert read_profile(str(path)).total() == 5  # under the limit


def test_several_gzip_members_are_one_profile():
    encoded = valid_message().SerializeToString()
    middle = len(encoded) // 2
    data = gzip.compress(encoded[:middle]) + gzip.compress(encoded[middle:])
    assert parse_pprof(data).total() == 5
