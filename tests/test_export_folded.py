"""Folded-stacks export, value selection, format choice and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import rover.export.atomic
from rover.export import (
    UnsupportedFormat,
    format_for_path,
    read_folded,
    read_profile,
    write_profile,
)
from rover.export.folded import parse_folded
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
    assert text == "sleeper;main;nanosleep;do_nanosleep_[k];schedule_[k] 2500\n"
    assert write_and_read(off_cpu_profile(), tmp_path / "q.folded", value="off_cpu") == text


def test_off_cpu_switches(tmp_path):
    text = write_and_read(off_cpu_profile(), tmp_path / "p.folded", value="switches")
    assert text == (
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
