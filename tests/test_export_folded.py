"""Folded-stacks export, value selection, format choice and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import rover.export.atomic
from rover.export import (
    CorruptProfile,
    UnsupportedFormat,
    format_for_path,
    read_folded,
    read_profile,
    read_table,
    write_profile,
)
from rover.export.folded import folded_table, parse_folded
from rover.profile import Frame, FrameKind, ProcessInfo, Profile, ProfileType


def user(name: str) -> Frame:
    return Frame(name, FrameKind.USER, "busy")


def kernel(name: str) -> Frame:
    return Frame(name, FrameKind.KERNEL, "[kernel]")


def on_cpu_profile() -> Profile:
    profile = Profile.new(ProfileType.ON_CPU)
    profile.processes[100] = ProcessInfo(100, "busy")
    profile.processes[101] = ProcessInfo(101, "busy")  # same name: stacks merge
    main = (user("_start"), user("main"))
    profile.add(100, (*main, user("c_hot_spin")), [700, 7_000_000])
    profile.add(101, (*main, user("c_hot_spin")), [100, 1_000_000])
    profile.add(
        100,
        (*main, user("write"), kernel("entry_SYSCALL_64"), kernel("ksys_write")),
        [150, 1_500_000],
    )
    profile.add(100, (*main, user("std::map<int, int>::at(int const&)")), [30, 300_000])
    profile.add(100, (*main, user("odd;name\nwith breaks")), [20, 200_000])
    profile.add(100, (*main, user("")), [5, 50_000])
    profile.add(100, (*main, user("never_sampled")), [0, 0])
    profile.add(4242, (user("no_process_info"),), [1, 10_000])
    return profile


ON_CPU_FOLDED = """\
4242;no_process_info 1
busy;_start;main;[unknown] 5
busy;_start;main;c_hot_spin 800
busy;_start;main;odd:name with breaks 20
busy;_start;main;std::map<int, int>::at(int const&) 30
busy;_start;main;write;entry_SYSCALL_64_[k];ksys_write_[k] 150
"""


def off_cpu_profile() -> Profile:
    profile = Profile.new(ProfileType.OFF_CPU)
    profile.processes[7] = ProcessInfo(7, "sleeper")
    base = (user("main"), user("nanosleep"), kernel("do_nanosleep"), kernel("schedule"))
    profile.add(7, base, [3, 2_500_999])  # 2,500.999 µs -> 2500
    profile.add(7, (user("main"), user("read"), kernel("schedule")), [12, 999])  # < 1 µs
    return profile


def write_and_read(profile: Profile, path, **kwargs) -> str:
    write_profile(profile, str(path), **kwargs)
    return path.read_text(encoding="utf-8")


def test_on_cpu_folded_exact_content(tmp_path):
    assert write_and_read(on_cpu_profile(), tmp_path / "p.folded") == ON_CPU_FOLDED


def test_txt_is_folded_too(tmp_path):
    assert write_and_read(on_cpu_profile(), tmp_path / "p.txt") == ON_CPU_FOLDED


def test_cpu_value_is_nanoseconds(tmp_path):
    text = write_and_read(on_cpu_profile(), tmp_path / "p.folded", value="cpu")
    assert "busy;_start;main;c_hot_spin 8000000\n" in text
    assert "4242;no_process_info 10000\n" in text


def test_off_cpu_default_is_microseconds(tmp_path):
    text = write_and_read(off_cpu_profile(), tmp_path / "p.folded")
    # The sub-microsecond stack rounds down to 0 and is left out.
    assert text == (
        "# rover type=off-cpu value=off_cpu unit=microseconds 0\n"
        "sleeper;main;nanosleep;do_nanosleep_[k];schedule_[k] 2500\n"
    )
    assert write_and_read(off_cpu_profile(), tmp_path / "q.folded", value="off_cpu") == text


def test_off_cpu_switches(tmp_path):
    text = write_and_read(off_cpu_profile(), tmp_path / "p.folded", value="switches")
    assert text == (
        "# rover type=off-cpu value=switches unit=count 0\n"
        "sleeper;main;nanosleep;do_nanosleep_[k];schedule_[k] 3\n"
        "sleeper;main;read;schedule_[k] 12\n"
    )


@pytest.mark.parametrize(
    ("make", "value", "choices"),
    [
        (on_cpu_profile, "switches", "samples, cpu"),
        (off_cpu_profile, "samples", "switches, off_cpu"),
    ],
)
def test_unknown_value_names_the_choices(tmp_path, make, value, choices):
    with pytest.raises(ValueError, match=choices):
        write_profile(make(), str(tmp_path / "p.folded"), value=value)
    assert list(tmp_path.iterdir()) == []


def test_round_trip(tmp_path):
    path = tmp_path / "p.folded"
    write_profile(on_cpu_profile(), str(path))
    stacks = read_folded(str(path))
    assert stacks == [
        (["4242", "no_process_info"], 1),
        (["busy", "_start", "main", "[unknown]"], 5),
        (["busy", "_start", "main", "c_hot_spin"], 800),
        (["busy", "_start", "main", "odd:name with breaks"], 20),
        (["busy", "_start", "main", "std::map<int, int>::at(int const&)"], 30),
        (["busy", "_start", "main", "write", "entry_SYSCALL_64_[k]", "ksys_write_[k]"], 150),
    ]
    assert sum(value for _, value in stacks) == on_cpu_profile().total()


def test_parse_skips_blank_lines_and_reports_bad_ones():
    assert parse_folded(["a;b 3\n", "\n", "c 4\r\n"]) == [(["a", "b"], 3), (["c"], 4)]
    with pytest.raises(ValueError, match=r"x\.folded:2: .*'a;b'"):
        parse_folded(["a 1\n", "a;b\n"], source="x.folded")
    with pytest.raises(ValueError, match=":1:"):
        parse_folded(["a;b many\n"])


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("out.folded", "folded"),
        ("dir.v1/out.txt", "folded"),
        ("out.html", "html"),
        ("OUT.HTM", "html"),
        ("/tmp/x/out.svg", "svg"),
        ("out.pb.gz", "pprof"),
        ("OUT.PB.GZ", "pprof"),
        ("cpu.pprof", "pprof"),
        ("dir.pb.gz/out.folded", "folded"),
        ("out.speedscope.json", "speedscope"),
        ("/tmp/x.y/run.1.speedscope.json", "speedscope"),
    ],
)
def test_format_for_path(path, fmt):
    assert format_for_path(path) == fmt


@pytest.mark.parametrize(
    "path", ["out.gz", "out.pb", "out.json", "out", "out.html.bak", ".pb.gz", "speedscope.json"]
)
def test_unsupported_format(path):
    with pytest.raises(UnsupportedFormat) as error:
        format_for_path(path)
    assert isinstance(error.value, ValueError)
    for extension in (".folded", ".txt", ".html", ".htm", ".svg", ".pb.gz", ".speedscope.json"):
        assert extension in str(error.value)


def test_write_unsupported_format_creates_nothing(tmp_path):
    with pytest.raises(UnsupportedFormat):
        write_profile(on_cpu_profile(), str(tmp_path / "p.json"))
    assert list(tmp_path.iterdir()) == []


def test_read_folded_as_a_profile(tmp_path):
    path = tmp_path / "p.folded"
    write_profile(on_cpu_profile(), str(path))
    profile = read_profile(str(path))
    assert profile.type is ProfileType.ON_CPU
    assert [vt.type for vt in profile.value_types] == ["samples"]
    stacks = {(key.pid, tuple(f.name for f in key.frames)): v for key, v in profile}
    busy = profile_pid(profile, "busy")
    assert stacks[(busy, ("_start", "main", "c_hot_spin"))] == [800]
    assert stacks[(4242, ("no_process_info",))] == [1]  # a numeric process is its pid
    assert busy < 0  # other processes get stand-in pids, never shown
    write = next(k for k in profile.samples if k.frames[-1].name == "ksys_write")
    assert [f.kind for f in write.frames[-2:]] == [FrameKind.KERNEL, FrameKind.KERNEL]
    assert write.frames[-1].module == "[kernel]"
    assert write_and_read(profile, tmp_path / "again.folded") == ON_CPU_FOLDED


def test_read_folded_off_cpu_is_microseconds(tmp_path):
    path = tmp_path / "off.folded"
    write_profile(off_cpu_profile(), str(path))
    profile = read_profile(str(path), ProfileType.OFF_CPU)
    assert profile.value_types[0].type == "off_cpu"
    assert profile.total() == 2500 * 1000  # kept in nanoseconds
    assert write_and_read(profile, tmp_path / "again.folded") == path.read_text()


def test_unsymbolized_folded_frames_are_recognized():
    from rover.export.names import frame_from_folded

    frame = frame_from_folded("busy+0x1234")
    assert (frame.symbolized, frame.module) == (False, "busy")
    kernel = frame_from_folded("[kernel]+0xffffffff8100_[k]")
    assert (kernel.kind, kernel.symbolized, kernel.name) == (
        FrameKind.KERNEL,
        False,
        "[kernel]+0xffffffff8100",
    )
    assert frame_from_folded("[unknown]").symbolized is False
    assert frame_from_folded("operator+(int)").symbolized is True


def profile_pid(profile: Profile, name: str) -> int:
    return next(pid for pid, info in profile.processes.items() if info.name == name)


def test_missing_directory_raises_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_profile(on_cpu_profile(), str(tmp_path / "missing" / "p.folded"))
    assert list(tmp_path.iterdir()) == []


def test_parent_is_a_file_raises_oserror(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        write_profile(on_cpu_profile(), str(tmp_path / "file" / "p.html"))


def test_target_is_a_directory_leaves_no_temp_file(tmp_path):
    (tmp_path / "p.folded").mkdir()
    with pytest.raises(IsADirectoryError):
        write_profile(on_cpu_profile(), str(tmp_path / "p.folded"))
    assert [p.name for p in tmp_path.iterdir()] == ["p.folded"]


def test_failed_rename_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "p.folded"
    path.write_text("old content\n")

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rover.export.atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        write_profile(on_cpu_profile(), str(path))
    assert path.read_text() == "old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.folded"]


def test_write_goes_through_a_temp_file_in_the_same_directory(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace

    def recording_replace(src, dst):
        renames.append((src, dst, Path(src).read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(rover.export.atomic.os, "replace", recording_replace)
    path = tmp_path / "p.folded"
    write_profile(on_cpu_profile(), str(path))
    [(src, dst, content)] = renames
    assert os.path.dirname(src) == str(tmp_path)
    assert os.path.basename(src).startswith(".p.folded.")
    assert dst == str(path)
    assert content == ON_CPU_FOLDED == path.read_text()


def test_file_mode_like_open_and_kept_on_overwrite(tmp_path):
    path = tmp_path / "p.folded"
    umask = os.umask(0o022)
    os.umask(umask)
    write_profile(on_cpu_profile(), str(path))
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    path.chmod(0o640)
    write_profile(on_cpu_profile(), str(path))
    assert path.stat().st_mode & 0o777 == 0o640


# --- counts out of range --------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "needle"),
    [
        ("-5", "x.folded:2: negative count -5"),
        (str(2**63), "x.folded:2: count 9223372036854775808 is out of range"),
        ("1" * 5000, "x.folded:2: count 11111"),  # beyond int()'s digit limit
    ],
)
def test_counts_out_of_range_name_the_line(count, needle):
    lines = ["a;b 1\n", f"a;c {count}\n"]
    with pytest.raises(CorruptProfile, match=needle) as error:
        parse_folded(lines, source="x.folded")
    assert "\n" not in str(error.value) and len(str(error.value)) < 300
    with pytest.raises(CorruptProfile, match=needle):
        folded_table(lines, source="x.folded")


def test_total_beyond_int64_names_the_line():
    half = str(2**62)
    lines = [f"a;b {half}\n", f"a;c {half}\n"]
    with pytest.raises(CorruptProfile, match=r"x\.folded:2: values add up to more than"):
        folded_table(lines, source="x.folded")
    # Off-CPU microseconds are kept as nanoseconds: the limit is 1000 times lower.
    micros = [f"a;b {2**63 // 1000 + 1}\n"]
    with pytest.raises(CorruptProfile, match=r"x\.folded:1: values add up"):
        folded_table(micros, source="x.folded", profile_type=ProfileType.OFF_CPU)


def test_non_ascii_digits_are_not_counts():
    with pytest.raises(CorruptProfile, match=":1: expected"):
        parse_folded(["a;b \u0663\n"])  # ARABIC-INDIC DIGIT THREE, which int() accepts


# --- what the numbers are ------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "value", "line"),
    [
        (on_cpu_profile, None, None),  # sample counts: the folded default, no line
        (on_cpu_profile, "cpu", "# rover type=on-cpu value=cpu unit=nanoseconds 0"),
        (off_cpu_profile, None, "# rover type=off-cpu value=off_cpu unit=microseconds 0"),
        (off_cpu_profile, "switches", "# rover type=off-cpu value=switches unit=count 0"),
    ],
)
def test_value_line_says_what_the_numbers_are(tmp_path, make, value, line):
    path = tmp_path / "p.folded"
    text = write_and_read(make(), path, value=value)
    assert text.startswith(line + "\n") if line else not text.startswith("#")
    back = read_profile(str(path))  # no --input-type needed
    assert back.type is make().type
    [value_type] = back.value_types
    assert value_type.type == (value or ("samples" if make is on_cpu_profile else "off_cpu"))
    # read back, written again: the same file
    assert write_and_read(back, tmp_path / "again.folded") == text


def test_value_line_wins_over_the_input_type(tmp_path):
    path = tmp_path / "off.folded"
    write_profile(off_cpu_profile(), str(path))
    back = read_profile(str(path), ProfileType.ON_CPU)
    assert back.type is ProfileType.OFF_CPU and back.total() == 2_500_000


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        (["# rover type=gpu value=x unit=count 0\n"], ":1: unreadable value line"),
        (["# rover type=on-cpu value=x unit=count 3\n"], ":1: unreadable value line"),
        (
            ["a;b 1\n", "# rover type=off-cpu value=off_cpu unit=microseconds 0\n"],
            ":2: .* contradicts what the lines before it are",
        ),
    ],
)
def test_bad_value_lines(lines, needle):
    with pytest.raises(CorruptProfile, match=needle):
        folded_table(lines, source="x.folded")


def test_lines_are_sorted_as_text(tmp_path):
    """As `sort` gives them (inferno-flamegraph --no-sort checks it): "f;x" after "f.cold"."""
    profile = Profile.new(ProfileType.ON_CPU)
    for names in (("f", "x"), ("f.cold",), ("f2",), ("f",), ("f x",), ("f", "x", "y")):
        profile.add(1, tuple(user(n) for n in names), [1, 1])
    lines = write_and_read(profile, tmp_path / "p.folded").splitlines()
    assert lines == sorted(lines) and len(lines) == 6


@pytest.mark.parametrize("extension", ["folded", "html", "svg", "pb.gz", "speedscope.json"])
def test_stacks_without_frames(tmp_path, extension):
    """A line of one field is a process without frames (all of them, here)."""
    source = tmp_path / "in.folded"
    source.write_text("idle 5\nbusy 3\n")
    table = read_table(str(source))
    write_profile(table, str(tmp_path / f"out.{extension}"))
    assert read_table(str(source)).totals == [8]
    if extension == "folded":
        assert (tmp_path / "out.folded").read_text() == "busy 3\nidle 5\n"
