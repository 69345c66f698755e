"""scripts/install.sh, the image's install steps, into a fresh PREFIX: the result works."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import rover
from rover.bpf.engine import ProfilerEngine
from rover.bpf.headers import HeaderSearch
from rover.hostfs import HostFS
from rover.profile import ProfileType

pytestmark = pytest.mark.bpf

INSTALL = Path(__file__).resolve().parents[1] / "scripts" / "install.sh"


def install(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd="/",  # not the repository: nothing may come from the source tree by accident
    )


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("install") / "rover"
    result = install(target)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"[install] done: {target}/bin/rover (rover {rover.__version__})" in result.stdout
    return target


def shipped_dir(prefix: Path) -> Path:
    return prefix / "share" / "rover" / "kernel-headers"


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(map(str, argv)), capture_output=True, text=True, timeout=120, check=False, cwd="/"
    )


def test_installed_rover_reports_its_version(prefix):
    result = run(prefix / "bin" / "rover", "--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"rover {rover.__version__}"


def test_installed_rover_check_passes(prefix):
    result = run(prefix / "bin" / "rover", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[  ok] on-cpu profiling" in result.stdout
    assert "[  ok] off-cpu profiling" in result.stdout


def test_installed_rover_falls_back_to_its_shipped_headers(prefix, tmp_path):
    """A host without headers (an empty host root): the wrapper points rover at its own."""
    result = run(prefix / "bin" / "rover", "check", "--host-root", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(ln for ln in result.stdout.splitlines() if "kernel headers" in ln)
    assert line.startswith("[  ok] kernel headers   shipped headers ")  # then their version
    assert f" at {shipped_dir(prefix)}/" in line


def test_installed_package_carries_its_data_and_dependencies(prefix):
    code = (
        "from rover.bpf.loader import bpf_source_dir; from rover.config import SHIPPED_CONFIG; "
        "import rover.health, rover.metrics; "
        "print(bpf_source_dir()); print(SHIPPED_CONFIG)"
    )
    result = run(prefix / "venv" / "bin" / "python", "-c", code)
    assert result.returncode == 0, result.stderr
    bpf_dir, config = (Path(line) for line in result.stdout.splitlines())
    site = prefix / "venv" / "lib"
    assert bpf_dir.is_relative_to(site) and config.is_relative_to(site)  # not the source tree
    assert {p.name for p in bpf_dir.iterdir()} >= {"oncpu.c", "offcpu.c", "profile_common.h"}
    assert config.name == "rover_configs.yaml" and config.stat().st_size > 0


def test_shipped_headers_are_debian_12_trees_that_compile(prefix):
    trees = sorted(p.name for p in shipped_dir(prefix).iterdir())
    arch_trees = [t for t in trees if t.endswith("-amd64")]
    assert [t.split("-")[2].rsplit(".", 1)[0] for t in arch_trees] == ["6.1", "6.12"], trees
    assert sorted(t.replace("-amd64", "-common") for t in arch_trees) == sorted(
        t for t in trees if t.endswith("-common")
    )
    no_host = HostFS(prefix / "no-host-root")
    # The closest version is picked for this kernel...
    headers = HeaderSearch(hostfs=no_host, shipped_dir=str(shipped_dir(prefix))).find()
    assert headers.origin == "shipped"
    assert headers.build.name.startswith("linux-headers-6.12.")
    # ...and every shipped tree builds a real program.
    for tree in arch_trees:
        search = HeaderSearch(
            hostfs=no_host,
            configured_dir=str(shipped_dir(prefix) / tree),
            shipped_dir=str(prefix / "none"),
        )
        found = search.find()
        assert found.build.name == tree and found.source.name.endswith("-common")
        ProfilerEngine(ProfileType.ON_CPU, found).close()


def test_pruned_trees_keep_only_what_bcc_reads(prefix):
    for tree in shipped_dir(prefix).iterdir():
        assert not (tree / "scripts").exists() and not (tree / "Module.symvers").exists()
        if (tree / "arch").is_dir():
            assert [p.name for p in (tree / "arch").iterdir()] == ["x86"]


def test_a_second_run_updates_in_place(prefix):
    result = install(prefix)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "already in" in result.stdout  # the headers are not unpacked again
    assert run(prefix / "bin" / "rover", "--version").returncode == 0


def test_help_and_bad_arguments():
    result = install("--help")
    assert result.returncode == 0 and result.stdout.startswith("Usage: scripts/install.sh")
    result = install("--frobnicate", "/tmp/x")
    assert result.returncode == 1
    assert result.stderr.strip() == "[install] error: unknown option --frobnicate (see --help)"
    result = install()
    assert result.returncode == 1 and "PREFIX is missing" in result.stderr
    result = install("--source", "/nonexistent", "/tmp/x")
    assert result.returncode == 1
    assert "--source /nonexistent does not exist" in result.stderr
