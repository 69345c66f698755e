"""HostFS: the host-root and host-proc mappings, vanished processes, zombies."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rover.hostfs import HostFS, ProcessGone


def fake_proc_entry(proc: Path, pid: int, state: str = "S") -> None:
    """``<proc>/<pid>`` with the files HostFS reads."""
    entry = proc / str(pid)
    entry.mkdir(parents=True)
    (entry / "stat").write_text(f"{pid} (my daemon) {state} 1 1 1 0\n")
    (entry / "comm").write_text("my daemon\n")
    (entry / "cmdline").write_bytes(b"/opt/my daemon\0--flag\0")


def unused_pid() -> int:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


@pytest.fixture
def zombie() -> Iterator[int]:
    """A child that has exited and is not reaped yet; reaped at teardown."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        yield child.pid
    finally:
        child.wait()


# --- mappings ------------------------------------------------------------------------------


def test_the_default_is_this_machine() -> None:
    fs = HostFS()
    assert fs.host_path("/lib/modules") == Path("/lib/modules")
    assert fs.proc_path(1, "stat") == Path("/proc/1/stat")
    assert fs.comm(os.getpid()) == Path("/proc/self/comm").read_text().strip()


def test_the_root_mapping(tmp_path: Path) -> None:
    fs = HostFS(tmp_path)
    assert fs.root == tmp_path and fs.proc == tmp_path / "proc"
    assert fs.host_path("/lib/modules/6.1") == tmp_path / "lib/modules/6.1"
    assert fs.host_path("etc/os-release") == tmp_path / "etc/os-release"
    assert fs.host_path("/proc/kallsyms") == tmp_path / "proc/kallsyms"
    assert fs.proc_path(42, "maps") == tmp_path / "proc/42/maps"
    assert fs.target_path(42, "/usr/bin/app") == tmp_path / "proc/42/root/usr/bin/app"
    fake_proc_entry(tmp_path / "proc", 42)
    assert fs.exists(42) and fs.is_running(42)
    assert fs.comm(42) == "my daemon"
    assert fs.cmdline(42) == ["/opt/my daemon", "--flag"]
    assert fs.read_text(42, "stat").startswith("42 (my daemon) S")


def test_the_proc_mapping(tmp_path: Path) -> None:
    root, proc = tmp_path / "host", tmp_path / "host-proc"
    fs = HostFS(root, proc)
    assert fs.root == root and fs.proc == proc
    assert fs.proc_path(42, "cgroup") == proc / "42/cgroup"
    assert fs.target_path(42, "/usr/bin/app") == proc / "42/root/usr/bin/app"
    # /proc itself and everything under it go to the proc mapping; the rest stays under root
    assert fs.host_path("/proc") == proc
    assert fs.host_path("/proc/net/route") == proc / "net/route"
    assert fs.host_path("/etc/os-release") == root / "etc/os-release"
    assert fs.host_path("/procedures") == root / "procedures"
    fake_proc_entry(proc, 42)
    fake_proc_entry(root / "proc", 42, state="Z")  # the root's own proc is not looked at
    assert fs.comm(42) == "my daemon" and fs.is_running(42)


def test_an_empty_proc_mapping_means_the_roots_proc(tmp_path: Path) -> None:
    assert HostFS(tmp_path, "").proc == tmp_path / "proc"
    assert HostFS(tmp_path, None).proc == tmp_path / "proc"


def test_the_real_proc_through_a_mapping(tmp_path: Path) -> None:
    """Host root somewhere empty, host /proc mapped to ours: our own process is readable."""
    fs = HostFS(tmp_path, "/proc")
    assert fs.exists(os.getpid()) and fs.is_running(os.getpid())
    assert fs.cmdline(os.getpid()) == HostFS().cmdline(os.getpid())


# --- processes that are gone -----------------------------------------------------------------


def test_a_vanished_process_raises_process_gone() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: /proc/PID no longer exists
    fs = HostFS()
    assert not fs.exists(child.pid)
    for read in (
        lambda: fs.read_text(child.pid, "stat"),
        lambda: fs.read_bytes(child.pid, "cmdline"),
        lambda: fs.comm(child.pid),
        lambda: fs.cmdline(child.pid),
    ):
        with pytest.raises(ProcessGone) as caught:
            read()
        assert caught.value.pid == child.pid
        assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_a_process_gone_from_a_mapped_proc(tmp_path: Path) -> None:
    with pytest.raises(ProcessGone, match="process 42 does not exist"):
        HostFS(tmp_path / "host", tmp_path / "proc").read_text(42, "stat")


def test_other_read_errors_are_not_process_gone(tmp_path: Path) -> None:
    fake_proc_entry(tmp_path / "proc", 42)
    with pytest.raises(IsADirectoryError):
        HostFS(tmp_path).read_text(42)


def test_a_zombie_is_not_running(zombie: int) -> None:
    fs = HostFS()
    assert fs.exists(zombie)  # its /proc entry is still there until it is reaped
    assert not fs.is_running(zombie)


def test_a_missing_process_is_not_running(tmp_path: Path) -> None:
    assert not HostFS().is_running(unused_pid())
    assert not HostFS(tmp_path).is_running(42)


def test_a_running_process_is_running() -> None:
    assert HostFS().is_running(os.getpid())
