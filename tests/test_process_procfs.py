"""Host process listing through HostFS, and the support_ebpf_profiling check."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from rover.hostfs import HostFS
from rover.process.procfs import HostProcess, read_process, scan_host_processes
from rover.process.profilable import ProfilingSupport, executable_is_readable_elf

SLEEP = shutil.which("sleep") or "/bin/sleep"


def stat_field_22(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[19])


def test_a_live_process_is_read_completely(spawn) -> None:
    child = spawn([SLEEP, "1000.25"], wait_ready=False)
    process = read_process(HostFS(), child.pid)
    assert process is not None
    assert process.pid == child.pid
    assert process.start_time == stat_field_22(child.pid)
    assert process.comm == "sleep" and process.exe_name == "sleep"
    assert process.cmdline == (SLEEP, "1000.25")
    assert process.command_line == f"{SLEEP} 1000.25"
    assert process.exe_path == os.path.realpath(SLEEP)
    assert process.cgroup == Path(f"/proc/{child.pid}/cgroup").read_text()


def test_scan_lists_user_processes_but_not_kernel_threads_or_zombies() -> None:
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "child did not exit"
            time.sleep(0.01)
        pids = {p.pid for p in scan_host_processes(HostFS()).processes}
    finally:
        zombie.wait()
    assert os.getpid() in pids
    assert zombie.pid not in pids
    kthreadd = Path("/proc/2/stat")
    if kthreadd.exists() and "(kthreadd)" in kthreadd.read_text():
        assert 2 not in pids


class VanishingHostFS(HostFS):
    """Kills ``victim`` the moment the scan starts reading its details."""

    def __init__(self, victim: subprocess.Popen[bytes]) -> None:
        super().__init__("/")
        self.victim = victim

    def read_bytes(self, pid: int, *parts: str) -> bytes:
        if pid == self.victim.pid and parts == ("cmdline",) and self.victim.poll() is None:
            self.victim.send_signal(signal.SIGKILL)
            self.victim.wait()  # reaped: /proc/PID is gone now
        return super().read_bytes(pid, *parts)


def test_a_process_that_exits_mid_scan_is_skipped_and_counted(spawn) -> None:
    survivor = spawn([SLEEP, "1000.5"], wait_ready=False)
    victim = subprocess.Popen([SLEEP, "1000.75"])
    try:
        listing = scan_host_processes(VanishingHostFS(victim))
    finally:
        victim.kill()
        victim.wait()
    pids = {p.pid for p in listing.processes}
    assert survivor.pid in pids and victim.pid not in pids
    assert listing.vanished >= 1


def fake_host_root(tmp_path: Path, pid: int, exe_target: Path) -> HostFS:
    """A host root mounted elsewhere (as in a container): /proc/<pid> with files we choose."""
    proc = tmp_path / "host" / "proc" / str(pid)
    proc.mkdir(parents=True)
    fields = ["S", "1", "1", "1", "0", "-1", "4194560"] + ["0"] * 12 + ["777"] + ["0"] * 30
    (proc / "stat").write_text(f"{pid} (my daemon) " + " ".join(fields) + "\n")
    (proc / "cmdline").write_bytes(b"/opt/my daemon\0--flag\0")
    (proc / "cgroup").write_text("0::/system.slice/my.service\n")
    (proc / "exe").symlink_to(exe_target)
    (proc / "root").symlink_to(tmp_path / "host")
    return HostFS(tmp_path / "host")


def test_processes_are_read_through_the_host_root_mapping(tmp_path: Path) -> None:
    hostfs = fake_host_root(tmp_path, 4321, Path("/opt/my daemon"))
    listing = scan_host_processes(hostfs)
    assert [p.pid for p in listing.processes] == [4321]
    process = listing.processes[0]
    assert process.comm == "my daemon"  # a task name with a space
    assert process.start_time == 777
    assert process.cmdline == ("/opt/my daemon", "--flag")
    assert process.exe_path == "/opt/my daemon"
    assert process.cgroup == "0::/system.slice/my.service\n"


def test_kernel_threads_are_recognised_by_their_flags(tmp_path: Path) -> None:
    hostfs = fake_host_root(tmp_path, 99, Path("/none"))
    stat = hostfs.proc_path(99, "stat")
    stat.write_text(stat.read_text().replace(" 4194560 ", f" {0x00200040} "))
    assert read_process(hostfs, 99) is None


def test_profilable_when_the_executable_is_an_elf_file(spawn) -> None:
    child = spawn([SLEEP, "1000.125"], wait_ready=False)
    process = read_process(HostFS(), child.pid)
    assert process is not None
    assert executable_is_readable_elf(HostFS(), process)
    assert ProfilingSupport(HostFS()).property_value(process) == "true"


class WithoutExeLink(HostFS):
    """Hides /proc/PID/exe, so only the path through /proc/PID/root can succeed."""

    def proc_path(self, pid: int, *parts: str) -> Path:
        if parts == ("exe",):
            return Path("/nonexistent/exe")
        return super().proc_path(pid, *parts)


def test_profilable_through_the_process_own_root(spawn_in_mount_namespace) -> None:
    """The binary exists only inside the process's mount namespace."""
    child = spawn_in_mount_namespace("/bin/sh", ["-c", "echo ready; read line"])
    process = read_process(HostFS(), child.pid)
    assert process is not None
    assert process.exe_path == child.exe_path and not os.path.exists(child.exe_path)
    assert executable_is_readable_elf(WithoutExeLink(), process)


def test_not_profilable_when_the_executable_is_no_elf(tmp_path: Path) -> None:
    script = tmp_path / "host" / "opt" / "my daemon"
    hostfs = fake_host_root(tmp_path, 4321, script)
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\nsleep 1\n")
    process = read_process(hostfs, 4321)
    assert process is not None
    support = ProfilingSupport(hostfs)
    assert support.property_value(process) == "false"
    elf = Path(SLEEP).resolve().read_bytes()
    script.write_bytes(elf)
    assert support.property_value(process) == "false"  # remembered per (pid, start time)
    support.retain(set())
    assert support.property_value(process) == "true"


def test_not_profilable_when_nothing_can_be_opened(tmp_path: Path) -> None:
    hostfs = fake_host_root(tmp_path, 4321, tmp_path / "missing")
    gone = HostProcess(4321, 777, "x", ("x",), "/missing", "")
    assert not executable_is_readable_elf(hostfs, gone)
