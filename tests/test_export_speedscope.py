"""speedscope JSON export and import; speedscope itself reads what we write.

speedscope's npm package carries its file-format schema and the app: the
package is fetched once with `npm pack` into build/speedscope/ (the only tests
here that need the npm registry skip, saying why, when it cannot be reached).
The app is served over loopback HTTP and opened in headless Chromium.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import pytest
from browser import page_errors, screenshot
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_export_flamegraph import HOT_NAME, hot_profile, kernel, user

from rover.export import CorruptProfile, read_profile, write_profile
from rover.export import speedscope as speedscope_module
from rover.export.speedscope import SCHEMA, parse_speedscope
from rover.profile import Frame, FrameKind, ProcessInfo, Profile, ProfileType

SPEEDSCOPE_VERSION = "1.25.0"
CACHE = Path(__file__).resolve().parent.parent / "build" / "speedscope"


@pytest.fixture(scope="session")
def speedscope_release() -> Path:
    """speedscope's dist/release directory (app and schema), fetched once with npm."""
    release = CACHE / SPEEDSCOPE_VERSION / "package" / "dist" / "release"
    if (release / "index.html").exists():
        return release
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is not installed: cannot fetch speedscope (make setup installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        result = subprocess.run(
            [npm, "pack", f"speedscope@{SPEEDSCOPE_VERSION}", "--silent"], cwd=tmp,
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        tarballs = list(Path(tmp).glob("speedscope-*.tgz"))
        if result.returncode != 0 or not tarballs:
            pytest.fail(
                f"npm pack speedscope failed (registry unreachable?): {result.stderr[-300:]}"
            )
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(tarballs[0]) as tar:
            # Only plain files and directories inside the target (no filter= before 3.11.4).
            members = [
                m for m in tar.getmembers()
                if (m.isfile() or m.isdir()) and not m.name.startswith("/") and ".." not in m.name
            ]  # fmt: skip
            tar.extractall(unpacked, members=members)
        try:
            os.replace(unpacked, CACHE / SPEEDSCOPE_VERSION)  # atomic: parallel runs are safe
        except OSError:
            if not (release / "index.html").exists():
                raise
    return release


@pytest.fixture(scope="session")
def speedscope_schema(speedscope_release: Path) -> dict:
    return json.loads((speedscope_release / "file-format-schema.json").read_text())


@pytest.fixture
def served(speedscope_release: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, directory): the app at BASE/app/index.html, files put in the directory."""
    (tmp_path / "app").symlink_to(speedscope_release)
    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def write_document(profile: Profile, path: Path, **kwargs) -> dict:
    write_profile(profile, str(path), **kwargs)
    return json.loads(path.read_text())


def two_process_profile() -> Profile:
    profile = hot_profile()
    profile.processes[200] = ProcessInfo(200, "other")
    profile.add(200, (user("main"), user("other_work")), [30, 300])
    return profile


# --- the file -------------------------------------------------------------------


def test_valid_against_speedscopes_schema(tmp_path, speedscope_schema):
    document = write_document(two_process_profile(), tmp_path / "p.speedscope.json")
    jsonschema.Draft7Validator(speedscope_schema).validate(document)
    jsonschema.Draft7Validator(speedscope_schema).validate(
        write_document(Profile.new(ProfileType.ON_CPU), tmp_path / "empty.speedscope.json")
    )


def test_document_structure(tmp_path):
    document = write_document(two_process_profile(), tmp_path / "p.speedscope.json")
    assert document["$schema"] == SCHEMA
    assert document["exporter"].startswith("rover ")
    assert document["activeProfileIndex"] == 0
    frames = document["shared"]["frames"]
    assert len({json.dumps(f, sort_keys=True) for f in frames}) == len(frames)  # shared once
    assert all(isinstance(f["name"], str) for f in frames)
    by_name = {f["name"]: f for f in frames}
    assert by_name["entry_SYSCALL_64"]["file"] == "[kernel.kallsyms]"
    assert by_name["__libc_start_main"]["file"] == "libc.so.6"

    busy, other = document["profiles"]  # one per process, heaviest first
    assert (busy["name"], other["name"]) == ("busy (100)", "other (200)")
    for profile in document["profiles"]:
        assert profile["type"] == "sampled" and profile["unit"] == "none"
        assert profile["startValue"] == 0
        assert len(profile["samples"]) == len(profile["weights"])
        assert profile["endValue"] == sum(profile["weights"])
        assert all(0 <= i < len(frames) for stack in profile["samples"] for i in stack)
    assert busy["endValue"] == 1000
    hot = busy["samples"][busy["weights"].index(740)]
    names = [frames[i]["name"] for i in hot]
    assert names == ["_start", "__libc_start_main", "main", HOT_NAME]  # root first


def test_time_values_are_nanoseconds(tmp_path):
    on_cpu = write_document(hot_profile(), tmp_path / "cpu.speedscope.json", value="cpu")
    assert on_cpu["profiles"][0]["unit"] == "nanoseconds"
    assert max(on_cpu["profiles"][0]["weights"]) == 7_400_000_000

    off_cpu = Profile.new(ProfileType.OFF_CPU)
    off_cpu.add(7, (user("main"), kernel("schedule")), [3, 2_500_999])
    document = write_document(off_cpu, tmp_path / "off.speedscope.json")
    [profile] = document["profiles"]
    assert (profile["unit"], profile["weights"]) == ("nanoseconds", [2_500_999])
    assert profile["name"] == "7"
    switches = write_document(off_cpu, tmp_path / "sw.speedscope.json", value="switches")
    assert (switches["profiles"][0]["unit"], switches["profiles"][0]["weights"]) == ("none", [3])


# --- reading back ------------------------------------------------------------------


def test_folded_to_speedscope_to_folded(tmp_path):
    folded = tmp_path / "in.folded"
    write_profile(two_process_profile(), str(folded))
    write_profile(read_profile(str(folded)), str(tmp_path / "p.speedscope.json"))
    back = read_profile(str(tmp_path / "p.speedscope.json"))
    write_profile(back, str(tmp_path / "out.folded"))
    assert (tmp_path / "out.folded").read_text() == folded.read_text()


def test_round_trip_keeps_type_value_and_frames(tmp_path):
    profile = Profile.new(ProfileType.OFF_CPU)
    profile.processes[7] = ProcessInfo(7, "sleeper")
    frames = (
        Frame("main", FrameKind.USER, "sleeper", True, "/usr/bin/sleeper"),
        Frame("sleeper+0x10", FrameKind.USER, "sleeper", False, "/usr/bin/sleeper"),
        Frame("nft_do_chain", FrameKind.KERNEL, "nf_tables"),
        Frame("schedule", FrameKind.KERNEL, "[kernel]"),
    )
    profile.add(7, frames, [3, 2_500_999])
    path = tmp_path / "off.speedscope.json"
    write_profile(profile, str(path))
    back = read_profile(str(path))
    assert back.type is ProfileType.OFF_CPU
    assert [(vt.type, vt.unit) for vt in back.value_types] == [("off_cpu", "nanoseconds")]
    [(key, values)] = back.samples.items()
    assert (key.pid, key.frames, values) == (7, frames, [2_500_999])
    assert back.processes[7].name == "sleeper"


def test_other_tools_files_and_evented_profiles():
    document = {
        "$schema": SCHEMA,
        "shared": {"frames": [{"name": "main"}, {"name": "work", "file": "/src/w.c"}]},
        "profiles": [
            {"type": "evented", "name": "thread 1", "unit": "milliseconds", "startValue": 0,
             "endValue": 10, "events": [
                 {"type": "O", "frame": 0, "at": 0}, {"type": "O", "frame": 1, "at": 2},
                 {"type": "C", "frame": 1, "at": 9.5}, {"type": "C", "frame": 0, "at": 10}]},
            {"type": "sampled", "name": "thread 2", "unit": "microseconds", "startValue": 0,
             "endValue": 5, "samples": [[0, 1]], "weights": [5]},
        ],
    }  # fmt: skip
    profile = parse_speedscope(json.dumps(document))
    assert profile.type is ProfileType.ON_CPU
    assert [(vt.type, vt.unit) for vt in profile.value_types] == [("cpu", "nanoseconds")]
    stacks = {
        (profile.processes[k.pid].name, tuple(f.name for f in k.frames)): v[0] for k, v in profile
    }
    assert stacks == {
        ("thread 1", ("main",)): 2_500_000,  # 0-2 ms and 9.5-10 ms
        ("thread 1", ("main", "work")): 7_500_000,
        ("thread 2", ("main", "work")): 5_000,
    }
    off = parse_speedscope(json.dumps(document), profile_type=ProfileType.OFF_CPU)
    assert off.value_types[0].type == "off_cpu"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "not speedscope JSON"),
        ("{", "not speedscope JSON"),
        ('{"profiles": []}', "not a speedscope file"),
        ('[1, 2]', "not a speedscope file"),
        (f'{{"$schema": "{SCHEMA}", "profiles": []}}', "must be lists"),
        (f'{{"$schema": "{SCHEMA}", "shared": {{"frames": [{{}}]}}, "profiles": []}}', "frame 0"),
        (f'{{"$schema": "{SCHEMA}", "shared": {{"frames": []}}, "profiles": [{{"unit": "x"}}]}}',
         "unit"),
        (f'{{"$schema": "{SCHEMA}", "shared": {{"frames": []}}, "profiles": [{{"unit": "none", '
         '"type": "sampled", "samples": [[3]], "weights": [1]}]}', "frame 3"),
        (f'{{"$schema": "{SCHEMA}", "shared": {{"frames": []}}, "profiles": [{{"unit": "none", '
         '"type": "sampled", "samples": [], "weights": [1]}]}', "0 samples, 1 weights"),
        (f'{{"$schema": "{SCHEMA}", "shared": {{"frames": [{{"name": "a"}}]}}, "profiles": ['
         '{"unit": "none", "type": "evented", "events": [{"type": "C", "frame": 0, "at": 1}]}]}',
         "closed"),
        (f'{{"$schema": "{SCHEMA}", "shared": {{"frames": []}}, "profiles": [{{"unit": "none", '
         '"type": "flat"}]}', "'flat'"),
        (f'{{"$schema": "{SCHEMA}", "shared": {{"frames": [{{"name": "a"}}]}}, "profiles": ['
         '{"unit": "none", "type": "sampled", "samples": [[0]], "weights": [-5]}]}',
         "profile 0: negative weight -5"),
        (f'{{"$schema": "{SCHEMA}", "shared": {{"frames": [{{"name": "a"}}]}}, "profiles": ['
         '{"unit": "seconds", "type": "sampled", "samples": [[0]], "weights": [1e12]}]}',
         "profile 0: values add up to more than"),
    ],
)  # fmt: skip
def test_corrupt_input_is_named(text, needle):
    with pytest.raises(CorruptProfile, match=needle) as error:
        parse_speedscope(text, source="bad.speedscope.json")
    assert str(error.value).startswith("bad.speedscope.json: ")
    assert "\n" not in str(error.value)


def test_file_over_the_limit_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(speedscope_module, "MAX_SPEEDSCOPE_CHARS", 2**20)
    path = tmp_path / "big.speedscope.json"
    path.write_text(" " * (2**20 + 1))
    with pytest.raises(CorruptProfile, match="big.speedscope.json is larger than 1 MiB"):
        read_profile(str(path))


def test_rovers_own_file_says_its_type_whatever_the_input_type(tmp_path):
    path = tmp_path / "hot.speedscope.json"
    write_profile(hot_profile(), str(path))
    back = read_profile(str(path), ProfileType.OFF_CPU)
    assert back.type is ProfileType.ON_CPU and back.value_types[0].type == "samples"


# --- speedscope opens what we write ----------------------------------------------------


def open_in_speedscope(browser, base: str, name: str) -> list[str]:
    """Open BASE/NAME in speedscope's sandwich view; return its function table's rows."""
    browser.get("about:blank")  # a new page, not just a new hash
    browser.get(f"{base}/app/index.html#profileURL={base}/{name}&view=sandwich")
    WebDriverWait(browser, 15).until(lambda d: d.title.endswith(" - speedscope"))
    body = browser.find_element(By.TAG_NAME, "body")
    WebDriverWait(browser, 15).until(lambda d: "Symbol Name" in body.text)
    assert "Something went wrong" not in body.text
    assert page_errors(browser) == []
    rows = body.text.split("Symbol Name", 1)[1].strip().splitlines()
    return rows


@pytest.mark.browser
def test_speedscope_opens_our_speedscope_json(browser, served):
    base, directory = served
    write_profile(two_process_profile(), str(directory / "hot.speedscope.json"), title="busy run")
    rows = open_in_speedscope(browser, base, "hot.speedscope.json")
    assert browser.title == "busy run - speedscope"
    # sandwich rows: total, self, name; the hottest function by self time first
    assert rows[:3] == ["800 (80%)", "740 (74%)", HOT_NAME]
    assert "busy (100)" in browser.find_element(By.TAG_NAME, "body").text
    screenshot(browser, "speedscope_json.png")


@pytest.mark.browser
def test_speedscope_opens_our_pprof(browser, served):
    base, directory = served
    write_profile(hot_profile(), str(directory / "hot.pb.gz"))
    rows = open_in_speedscope(browser, base, "hot.pb.gz")
    assert browser.title == "hot.pb.gz - speedscope"
    assert rows[:3] == ["800 (80%)", "740 (74%)", HOT_NAME]
    screenshot(browser, "speedscope_pprof.png")


@pytest.mark.browser
def test_speedscope_opens_our_off_cpu_folded(browser, served):
    """The line saying what the numbers are is a zero-count stack to speedscope: ignored."""
    base, directory = served
    profile = Profile.new(ProfileType.OFF_CPU)
    profile.processes[7] = ProcessInfo(7, "sleeper")
    profile.add(7, (user("main"), user("nanosleep"), kernel("schedule")), [4, 3_000_000])
    profile.add(7, (user("main"), user("read"), kernel("schedule")), [96, 1_000_000])
    write_profile(profile, str(directory / "wait.folded"))
    assert (directory / "wait.folded").read_text().startswith("# rover type=off-cpu ")
    rows = open_in_speedscope(browser, base, "wait.folded")
    names = rows[2::3]
    assert sorted(names) == ["main", "nanosleep", "read", "schedule_[k]", "sleeper"], rows
    assert rows[:3] == ["4,000 (100%)", "4,000 (100%)", "schedule_[k]"]  # µs, nothing else
    screenshot(browser, "speedscope_folded.png")


# --- a real profile -------------------------------------------------------------------


@pytest.mark.bpf
def test_rover_profile_writes_speedscope(workloads, spawn, tmp_path):
    from rover_cli import rover

    process = spawn([workloads.build("hot_c_fp")])
    out = tmp_path / "hot.speedscope.json"
    result = rover("profile", "--pid", str(process.pid), "--duration", "2s", "-q", "-o", str(out))
    assert result.returncode == 0, result.stderr
    document = json.loads(out.read_text())
    assert document["$schema"] == SCHEMA
    [profile] = document["profiles"]
    assert profile["name"] == f"hot_c_fp ({process.pid})"
    frames = document["shared"]["frames"]
    hot = workloads.hot_function("hot_c_fp")
    leaf_weight = sum(
        w for s, w in zip(profile["samples"], profile["weights"], strict=True)
        if s and frames[s[-1]]["name"] == hot
    )  # fmt: skip
    assert leaf_weight / profile["endValue"] > 0.5
    assert any(f["name"] == hot and f["file"].endswith("/hot_c_fp") for f in frames)
