"""`rover convert IN OUT`: formats by extension, exit codes, one-line errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from rover_cli import rover
from test_cli_errors import assert_clean_error
from test_export_flamegraph import hot_profile

from rover.export import read_profile, write_profile
from rover.profile import ProfileType


@pytest.fixture
def hot_folded(tmp_path: Path) -> Path:
    path = tmp_path / "hot.folded"
    write_profile(hot_profile(), str(path))
    return path


def convert(*args: str):
    return rover("convert", *map(str, args), timeout=60)


@pytest.mark.parametrize("chain", [["pb.gz", "folded"], ["speedscope.json", "txt"],
                                   ["pprof", "speedscope.json", "pb.gz", "folded"]])  # fmt: skip
def test_conversions_keep_the_stacks(tmp_path, hot_folded, chain):
    source = hot_folded
    for i, extension in enumerate(chain):
        target = tmp_path / f"step{i}.{extension}"
        result = convert(source, target)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"wrote {target}: 5 distinct stacks, 1000 samples\n"
        source = target
    assert source.read_text() == hot_folded.read_text()


def test_to_flame_graphs(tmp_path, hot_folded):
    for extension in ("html", "svg"):
        target = tmp_path / f"hot.{extension}"
        result = convert(hot_folded, target, "--title", "from folded")
        assert result.returncode == 0, result.stderr
        assert "from folded" in target.read_text()


def test_value_picks_from_pprof(tmp_path):
    source = tmp_path / "hot.pb.gz"
    write_profile(hot_profile(), str(source))
    target = tmp_path / "cpu.folded"
    result = convert(source, target, "--value", "cpu")
    assert result.returncode == 0, result.stderr
    assert "busy;_start;__libc_start_main;main;c_hot_spin 7400000000\n" in target.read_text()


def test_input_type_off_cpu_folded(tmp_path):
    source = tmp_path / "off.folded"
    source.write_text("sleeper;main;nanosleep;schedule_[k] 2500\n")
    target = tmp_path / "off.pb.gz"
    assert convert(source, target, "--input-type", "off-cpu").returncode == 0
    profile = read_profile(str(target))
    assert profile.type is ProfileType.OFF_CPU
    assert profile.total() == 2_500_000  # microseconds in, nanoseconds kept
    back = tmp_path / "back.folded"
    assert convert(target, back).returncode == 0
    # Written back with the line that says what the numbers are.
    off_cpu = "# rover type=off-cpu value=off_cpu unit=microseconds 0\n"
    assert back.read_text() == off_cpu + source.read_text()


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("bad.folded", "a;b c\n", "bad.folded:1: expected"),
        ("bad.txt", b"\xff\xfe\x00", "not UTF-8"),
        ("bad.pb.gz", b"\x1f\x8b\x08\x00nonsense", "bad gzip data"),
        ("bad.pprof", b"definitely not protobuf \xff\xff", "not a pprof profile"),
        ("bad.speedscope.json", "{ nope", "not speedscope JSON"),
        ("other.speedscope.json", json.dumps({"traceEvents": []}), "not a speedscope file"),
    ],
)
def test_corrupt_input_exits_2(tmp_path, name, content, needle):
    source = tmp_path / name
    if isinstance(content, bytes):
        source.write_bytes(content)
    else:
        source.write_text(content)
    result = convert(source, tmp_path / "out.folded")
    assert_clean_error(result, 2, needle, "rover convert: error:")
    assert not (tmp_path / "out.folded").exists()


def test_empty_pprof_is_corrupt(tmp_path):
    source = tmp_path / "empty.pb.gz"
    source.write_bytes(gzip.compress(b""))
    assert_clean_error(convert(source, tmp_path / "o.folded"), 2, "not a pprof profile")


@pytest.mark.parametrize(
    ("source_name", "target_name", "needle"),
    [
        ("missing.folded", "out.folded", "No such file or directory"),
        ("hot.folded", "out.pdf", "use one of"),
        ("hot.folded", "out.json", ".speedscope.json"),
    ],
)
def test_bad_arguments_exit_2(tmp_path, hot_folded, source_name, target_name, needle):
    result = convert(tmp_path / source_name, tmp_path / target_name)
    assert_clean_error(result, 2, needle)
    assert not (tmp_path / target_name).exists()


@pytest.mark.parametrize(
    ("extension", "needle"),
    [("html", "cannot read html files"), ("svg", "cannot read svg"), ("dat", "use one of")],
)
def test_unreadable_input_formats_exit_2(tmp_path, hot_folded, extension, needle):
    source = tmp_path / f"in.{extension}"
    source.write_text("<html></html>")
    assert_clean_error(convert(source, tmp_path / "out.folded"), 2, needle)


def test_input_directory_exits_2(tmp_path):
    (tmp_path / "dir.folded").mkdir()
    assert_clean_error(convert(tmp_path / "dir.folded", tmp_path / "o.folded"), 2, "dir.folded")


def test_unknown_value_exits_2(tmp_path, hot_folded):
    result = convert(hot_folded, tmp_path / "out.pb.gz", "--value", "cpu")
    # a folded file has only one number per stack
    assert_clean_error(result, 2, "--value", "choose one of: samples")


@pytest.mark.parametrize("target", ["missing-dir/out.pb.gz", "hot.folded/out.svg", "taken.svg"])
def test_unwritable_output_exits_1(tmp_path, hot_folded, target):
    (tmp_path / "taken.svg").mkdir()
    assert_clean_error(convert(hot_folded, tmp_path / target), 1, "cannot write", target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hot.folded", "taken.svg"]


def test_output_without_extension_exits_2(tmp_path, hot_folded):
    assert_clean_error(convert(hot_folded, tmp_path / "out"), 2, "no extension")


def test_our_off_cpu_folded_says_its_unit(tmp_path):
    from test_export_folded import off_cpu_profile

    source = tmp_path / "wait.folded"
    write_profile(off_cpu_profile(), str(source))
    target = tmp_path / "wait.pb.gz"
    result = convert(source, target)  # no --input-type: the file says it
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {target}: 1 distinct stacks, 2500 µs\n"
    profile = read_profile(str(target))
    assert profile.type is ProfileType.OFF_CPU and profile.total() == 2_500_000


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("busy;main 5\nbusy;main;work -3\n", "in.folded:2: negative count -3"),
        (f"busy;main {2**64}\n", "in.folded:1: count 18446744073709551616 is out of range"),
        (f"busy;main {2**62}\nbusy;work {2**62}\n", "in.folded:2: values add up to more than"),
    ],
)
@pytest.mark.parametrize("target", ["out.pb.gz", "out.folded"])
def test_counts_out_of_range_exit_2(tmp_path, content, needle, target):
    source = tmp_path / "in.folded"
    source.write_text(content)
    assert_clean_error(convert(source, tmp_path / target), 2, needle, "rover convert: error:")
    assert not (tmp_path / target).exists()
