"""Files read on behalf of a profiled process never come from outside its root.

A process owns the files under its root: a symlink it plants (absolute, or
climbing with ``..``) must resolve inside that root, never in ours, or a host
file whose lines look like ``HEX HEX name`` becomes frame names shipped to the
backend. Each way a target's file is opened is checked: perf maps, mapped
ELF files, debug files, the executable.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from symbols_helpers import (
    build,
    chrooted_program,
    nm_functions,
    split_debug_file,
)

from rover.hostfs import HostFS
from rover.process.procfs import HostProcess
from rover.process.profilable import executable_is_readable_elf
from rover.symbols import Symbolizer, perf_map

SECRET = "HOST_SECRET_LEAKED"
ANON = 0x7F0000000000


def host_secret(tmp_path: Path, start: int) -> Path:
    """A host file that parses as a perf map naming ``start``."""
    secret = tmp_path / "host-etc" / "shadow"
    secret.parent.mkdir()
    secret.write_text(f"{start:x} 1000 {SECRET}\n")
    return secret


def fake_target(tmp_path: Path, pid: int, maps: str) -> Path:
    """``tmp_path/proc/PID`` with ``maps`` and an empty root; returns the root."""
    proc = tmp_path / "proc" / str(pid)
    (proc / "root" / "tmp").mkdir(parents=True)
    (proc / "maps").write_text(maps)
    (proc / "status").write_text(f"Name:\tjit\nPid:\t{pid}\nNSpid:\t{pid}\n")
    return proc / "root"


def names(frames) -> list[str]:
    return [frame.name for frame in frames]


def test_perf_map_symlinked_out_of_the_root_is_not_read(tmp_path: Path) -> None:
    secret = host_secret(tmp_path, ANON)
    root = fake_target(tmp_path, 4242, f"{ANON:x}-{ANON + 0x10000:x} r-xp 00000000 00:00 0 \n")
    (root / "tmp/perf-4242.map").symlink_to(secret)  # absolute: our root would find it
    symbolizer = Symbolizer(HostFS(tmp_path))
    frames = symbolizer.user_frames(4242, [ANON + 0x10])
    assert SECRET not in names(frames)[0]
    assert not frames[0].symbolized


def test_perf_map_climbing_out_with_dot_dot_is_not_read(tmp_path: Path) -> None:
    secret = host_secret(tmp_path, ANON)
    root = fake_target(tmp_path, 4343, f"{ANON:x}-{ANON + 0x10000:x} r-xp 00000000 00:00 0 \n")
    climb = "../" * 12 + str(secret).lstrip("/")
    (root / "tmp/perf-4343.map").symlink_to(climb)
    frames = Symbolizer(HostFS(tmp_path)).user_frames(4343, [ANON + 0x10])
    assert SECRET not in names(frames)[0]


def test_perf_map_symlinked_inside_the_root_is_read(tmp_path: Path) -> None:
    """The same absolute link, pointing at a file the target does have: followed."""
    root = fake_target(tmp_path, 4444, f"{ANON:x}-{ANON + 0x10000:x} r-xp 00000000 00:00 0 \n")
    (root / "var").mkdir()
    (root / "var/jit.map").write_text(f"{ANON:x} 100 js_function\n")
    (root / "tmp/perf-4444.map").symlink_to("/var/jit.map")
    frames = Symbolizer(HostFS(tmp_path)).user_frames(4444, [ANON + 0x10])
    assert names(frames) == ["js_function"]


def test_real_chrooted_process_perf_map_link_to_a_host_file(tmp_path: Path) -> None:
    """A real process in its own root, its perf map a symlink to a host file."""
    root = tmp_path / "container"
    with chrooted_program(build("c_static"), root) as prog:
        jit = prog.send("jit")["jit"]
        secret = host_secret(tmp_path, jit)
        (root / f"tmp/perf-{prog.pid}.map").symlink_to(secret)
        symbolizer = Symbolizer()
        frames = symbolizer.user_frames(prog.pid, [jit + 0x10])
        assert names(frames) == [f"[anon]+0x{jit + 0x10:x}"]
        # Its own perf map is still read, through the same root.
        (root / f"tmp/perf-{prog.pid}.map").unlink()
        (root / f"tmp/perf-{prog.pid}.map").write_text(f"{jit:x} 100 jitted_code\n")
        time.sleep(perf_map.RECHECK_SECONDS * 2)
        assert names(symbolizer.user_frames(prog.pid, [jit + 0x10])) == ["jitted_code"]


def test_mapped_file_symlinked_out_of_the_root_is_not_read(tmp_path: Path) -> None:
    """The mapping names /lib/libx.so; the target made that a link to a host ELF file
    with the very inode the mapping shows."""
    host_elf = tmp_path / "host-lib" / "c_pie"
    host_elf.parent.mkdir()
    shutil.copy(build("c_pie"), host_elf)
    st = os.stat(host_elf)
    start = 0x555555554000
    maps = (
        f"{start:x}-{start + st.st_size + 0xFFF & ~0xFFF:x} r-xp 00000000 "
        f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x} {st.st_ino} /lib/libx.so\n"
    )
    root = fake_target(tmp_path, 4545, maps)
    (root / "lib").mkdir()
    (root / "lib/libx.so").symlink_to(host_elf)
    leaf = nm_functions(host_elf)["c_leaf"][0]
    symbolizer = Symbolizer(HostFS(tmp_path))
    frames = symbolizer.user_frames(4545, [start + leaf + 3])
    assert names(frames) == [f"libx.so+0x{leaf + 3:x}"]
    assert symbolizer.counters["file_open_errors"] == 1


def container_proc(tmp_path: Path, pid: int, root: Path) -> Path:
    """A /proc for chrooted ``pid`` that shows its maps as a container's show them: paths
    as the process sees them (a chroot's maps show ours), its root at ``root``."""
    proc = tmp_path / "proc"
    entry = proc / str(pid)
    entry.mkdir(parents=True)
    maps = Path(f"/proc/{pid}/maps").read_text().replace(f"{root}/", "/")
    (entry / "maps").write_text(maps)
    (entry / "root").symlink_to(root)
    return proc


def test_debug_file_symlinked_out_of_the_root_is_not_read(tmp_path: Path) -> None:
    stripped, debug = tmp_path / "app", tmp_path / "host-debug" / "app.debug"
    debug.parent.mkdir()
    split_debug_file(build("c_static"), stripped, debug)
    root = tmp_path / "container"
    root.mkdir()
    with chrooted_program(stripped, root) as prog:
        proc = container_proc(tmp_path, prog.pid, root)
        address = prog.addresses["c_leaf"] + 3
        (root / "app.debug").symlink_to(debug)  # beside the binary, where its debug link says
        escaped = Symbolizer(HostFS("/", proc)).user_frames(prog.pid, [address])
        (root / "app.debug").unlink()
        shutil.copy(debug, root / "app.debug")
        inside = Symbolizer(HostFS("/", proc)).user_frames(prog.pid, [address])
    assert names(escaped) == [f"app+0x{address - 0x400000:x}"]
    assert names(inside) == ["c_leaf"]


def test_debug_link_on_the_host_is_only_looked_up_under_its_debug_root(tmp_path: Path) -> None:
    """The binary is /app in its root; the host's /app.debug is none of its business."""
    stripped, debug = tmp_path / "app", tmp_path / "app.debug"
    split_debug_file(build("c_static"), stripped, debug)
    host = tmp_path / "host"
    host.mkdir()
    shutil.copy(debug, host / "app.debug")
    root = tmp_path / "container"
    with chrooted_program(stripped, root) as prog:
        proc = container_proc(tmp_path, prog.pid, root)
        address = prog.addresses["c_leaf"] + 3
        beside = Symbolizer(HostFS(host, proc)).user_frames(prog.pid, [address])
        (host / "usr/lib/debug").mkdir(parents=True)
        shutil.move(host / "app.debug", host / "usr/lib/debug/app.debug")
        under_debug_root = Symbolizer(HostFS(host, proc)).user_frames(prog.pid, [address])
    assert names(beside) != ["c_leaf"]
    assert names(under_debug_root) == ["c_leaf"]


def test_executable_symlinked_out_of_the_root_is_not_read(tmp_path: Path) -> None:
    root = fake_target(tmp_path, 4646, "")
    (root / "bin").mkdir()
    (root / "bin/app").symlink_to(build("c_pie"))
    process = HostProcess(4646, 1, "app", ("/bin/app",), "/bin/app", "")
    assert not executable_is_readable_elf(HostFS(tmp_path), process)
    (root / "bin/app").unlink()
    shutil.copy(build("c_pie"), root / "bin/app")
    assert executable_is_readable_elf(HostFS(tmp_path), process)
