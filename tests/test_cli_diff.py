"""`rover diff BEFORE AFTER --output diff.html`: inputs in any readable format, errors."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from rover_cli import ROVER, rover
from test_cli_errors import assert_clean_error
from test_export_diff import before_after

from rover.export import write_profile
from rover.profile import Profile, ProfileType


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    before, after = before_after()
    write_profile(before, str(tmp_path / "before.folded"))
    write_profile(after, str(tmp_path / "after.pb.gz"))
    return tmp_path / "before.folded", tmp_path / "after.pb.gz"


def diff(*args: object):
    return rover("diff", *map(str, args), timeout=60)


def page_data(path: Path) -> dict:
    text = path.read_text()
    match = re.search(r'<script type="application/json" id="profile-data">(.*?)</script>', text)
    assert match
    return json.loads(match.group(1))


def test_diff_of_folded_and_pprof(tmp_path, inputs):
    before, after = inputs
    out = tmp_path / "diff.html"
    result = diff(before, after, "--output", out, "--title", "release 2 vs 1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {out}: after.pb.gz compared with before.folded\n"
    text = out.read_text()
    assert "release 2 vs 1" in text and "before.folded: 1,000 samples" in text
    data = page_data(out)
    assert (data["diff"]["beforeTotal"], data["diff"]["afterTotal"]) == (1000, 2000)


def test_default_output_and_speedscope_input(tmp_path, inputs):
    before, _ = inputs
    speedscope = tmp_path / "after.speedscope.json"
    write_profile(before_after()[1], str(speedscope))
    result = subprocess.run(
        [*ROVER, "diff", before.name, speedscope.name], cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert page_data(tmp_path / "rover-diff.html")["diff"]["afterTotal"] == 2000


def test_value_applies_to_both(tmp_path):
    before, after = before_after()
    write_profile(before, str(tmp_path / "b.pb.gz"))
    write_profile(after, str(tmp_path / "a.pb.gz"))
    out = tmp_path / "cpu.html"
    result = diff(tmp_path / "b.pb.gz", tmp_path / "a.pb.gz", "-o", out, "--value", "cpu")
    assert result.returncode == 0, result.stderr
    data = page_data(out)
    assert data["unit"] == "ns" and data["diff"]["beforeTotal"] == 10_000


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["missing.folded", "after.pb.gz"], "No such file or directory"),
        (["before.folded", "missing.pb.gz"], "missing.pb.gz"),
        (["before.folded", "after.pb.gz", "-o", "diff.svg"], "HTML"),
        (["before.folded", "after.pb.gz", "-o", "diff"], "no extension"),
        (["before.folded", "after.data"], "use one of"),
        (["before.folded", "after.pb.gz", "--value", "cpu"], "unknown value 'cpu'"),
        (["before.folded", "bad.pb.gz"], "not a pprof profile"),
        (["before.folded", "off.pb.gz"], "cannot compare an on-cpu profile"),
    ],
)
def test_bad_input_exits_2(tmp_path, inputs, args, needle):
    (tmp_path / "bad.pb.gz").write_bytes(b"not a profile at all")
    write_profile(Profile.new(ProfileType.OFF_CPU), str(tmp_path / "off.pb.gz"))
    args = [a if a.startswith("-") or a == "cpu" else tmp_path / a for a in args]
    if "-o" not in args:
        args += ["-o", tmp_path / "diff.html"]
    assert_clean_error(diff(*args), 2, needle, "rover diff: error:")
    assert not (tmp_path / "diff.html").exists()


@pytest.mark.parametrize("target", ["missing-dir/diff.html", "taken.html"])
def test_unwritable_output_exits_1(tmp_path, inputs, target):
    (tmp_path / "taken.html").mkdir()
    assert_clean_error(diff(*inputs, "-o", tmp_path / target), 1, "cannot write", target)


@pytest.mark.parametrize("target", ["folded", "speedscope.json"])
def test_a_profile_and_its_conversion_compare_equal(tmp_path, inputs, target):
    _, pprof = inputs  # with modules, which folded stacks do not keep
    converted = tmp_path / f"converted.{target}"
    assert rover("convert", str(pprof), str(converted)).returncode == 0
    for before, after in ((pprof, converted), (converted, pprof)):
        out = tmp_path / "same.html"
        result = diff(before, after, "-o", out)
        assert result.returncode == 0, result.stderr
        data = page_data(out)
        assert data["diff"]["before"] == data["diff"]["after"]
        assert data["diff"]["beforeTotal"] == 2000
        names = [data["frames"][i][0] for i in data["nodes"][::3]]
        assert names.count("_start") == 1  # one subtree, not one per side


def test_help_offers_title_for_the_html_only():
    result = rover("diff", "--help")
    assert result.returncode == 0
    options = result.stdout.split("\n  --title TITLE", 1)[1]  # the option, not the usage
    title_help = options.split("--input-type", 1)[0]
    assert "differential flame graph" in title_help
    assert "svg" not in title_help and "speedscope" not in title_help
