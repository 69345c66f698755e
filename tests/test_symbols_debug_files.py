"""Separate debug files (.gnu_debuglink, build-id paths) and MiniDebugInfo, on live processes."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from symbols_helpers import (
    RunningProgram,
    add_minidebuginfo,
    build,
    build_id_of,
    file_offset_of,
    namespaced_program,
    nm_functions,
    section_range,
    split_debug_file,
)

from rover.hostfs import HostFS
from rover.symbols import Symbolizer

DEBUG_ROOT = "/usr/lib/debug"


def names(frames):
    return [f.name for f in frames]


def c_frames(symbolizer: Symbolizer, prog: RunningProgram):
    a = prog.addresses
    return symbolizer.user_frames(prog.pid, [a["c_leaf"] + 3, a["c_outer"] + 5, a["main"] + 8])


@pytest.fixture
def split_c(tmp_path: Path) -> tuple[Path, Path]:
    """A stripped c_pie named ``app`` linked to ``app.debug`` (both in tmp_path)."""
    stripped, debug = tmp_path / "app", tmp_path / "app.debug"
    split_debug_file(build("c_pie"), stripped, debug)
    return stripped, debug


def test_stripped_binary_without_its_debug_file_shows_module_offsets(
    split_c: tuple[Path, Path],
) -> None:
    stripped, debug = split_c
    debug.unlink()
    symbolizer = Symbolizer()
    with RunningProgram([str(stripped)]) as prog:
        symbolizer.prepare(prog.pid)
        frames = c_frames(symbolizer, prog)
        assert symbolizer.symbol_sources(prog.pid)[str(stripped)] == ()
    assert not any(f.symbolized for f in frames)
    assert frames[0].name.startswith("app+0x")
    assert symbolizer.counters["debug_file_errors"] == 0


def test_debug_file_beside_a_host_binary(split_c: tuple[Path, Path]) -> None:
    stripped, _ = split_c
    symbolizer = Symbolizer()
    with RunningProgram([str(stripped)]) as prog:
        symbolizer.prepare(prog.pid)
        frames = c_frames(symbolizer, prog)
        assert symbolizer.symbol_sources(prog.pid)[str(stripped)] == ("debug_file",)
    assert names(frames) == ["c_leaf", "c_outer", "main"]
    # Frames carry the binary's path and build id (not the debug file's path).
    assert {(f.module, f.file, f.build_id) for f in frames} == {
        ("app", str(stripped), build_id_of(stripped))
    }
    assert symbolizer.counters["unsymbolized_frames"] == 0


# Where the debug file is put, inside the target's mount namespace only.
LINK_PLACES = {
    "beside": "app.debug",
    "dot_debug": ".debug/app.debug",
    "usr_lib_debug": DEBUG_ROOT + "{dir}/app.debug",
}


@pytest.mark.parametrize("place", sorted(LINK_PLACES))
def test_debug_link_inside_the_target_root(split_c: tuple[Path, Path], place: str) -> None:
    stripped, debug = split_c
    files = {LINK_PLACES[place]: debug}
    symbolizer = Symbolizer()
    with namespaced_program(stripped, files, [DEBUG_ROOT]) as (prog, exe_path):
        assert not Path(exe_path).exists()  # only the process's root has it
        in_namespace = LINK_PLACES[place].format(dir=str(Path(exe_path).parent))
        debug_path = Path(exe_path).parent / in_namespace
        assert not debug_path.exists()
        assert Path(f"/proc/{prog.pid}/root{debug_path}").exists()
        symbolizer.prepare(prog.pid)
        frames = c_frames(symbolizer, prog)
        assert symbolizer.symbol_sources(prog.pid)[exe_path] == ("debug_file",)
    assert names(frames) == ["c_leaf", "c_outer", "main"]
    assert frames[0].file == exe_path
    assert symbolizer.counters["debug_file_errors"] == 0


def test_build_id_path_inside_the_target_root(tmp_path: Path) -> None:
    stripped, debug = tmp_path / "app", tmp_path / "app.debug"
    split_debug_file(build("c_pie"), stripped, debug, link=False)  # no .gnu_debuglink at all
    build_id = build_id_of(stripped)
    in_namespace = f"{DEBUG_ROOT}/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
    symbolizer = Symbolizer()
    with namespaced_program(stripped, {in_namespace: debug}, [DEBUG_ROOT]) as (prog, exe_path):
        assert not Path(in_namespace).exists()
        symbolizer.prepare(prog.pid)
        frames = c_frames(symbolizer, prog)
        assert symbolizer.symbol_sources(prog.pid)[exe_path] == ("debug_file",)
    assert names(frames) == ["c_leaf", "c_outer", "main"]
    assert frames[0].build_id == build_id


@pytest.mark.parametrize("by", ["build_id", "debug_link"])
def test_debug_file_on_the_host_when_the_target_root_lacks_it(tmp_path: Path, by: str) -> None:
    # The host's root is mounted elsewhere (as for an agent in a container): tmp_path/host.
    stripped, debug = tmp_path / "app", tmp_path / "app.debug"
    split_debug_file(build("c_pie"), stripped, debug, link=by == "debug_link")
    host = tmp_path / "host"
    if by == "build_id":
        build_id = build_id_of(stripped)
        place = host / f"usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
    else:
        place = host / f"usr/lib/debug{tmp_path}/app.debug"
    place.parent.mkdir(parents=True)
    shutil.move(debug, place)
    symbolizer = Symbolizer(HostFS(host, "/proc"))
    with RunningProgram([str(stripped)]) as prog:
        symbolizer.prepare(prog.pid)
        frames = c_frames(symbolizer, prog)
    assert names(frames) == ["c_leaf", "c_outer", "main"]


def test_debug_link_with_a_wrong_crc_is_skipped(
    split_c: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    stripped, debug = split_c
    with open(debug, "ab") as f:
        f.write(b"another build")  # still a valid ELF file: only the CRC tells
    caplog.set_level(logging.WARNING, logger="rover.symbols")
    symbolizer = Symbolizer()
    with RunningProgram([str(stripped)]) as prog, RunningProgram([str(stripped)]) as again:
        symbolizer.prepare(prog.pid)
        frames = c_frames(symbolizer, prog)
        symbolizer.prepare(again.pid)
        c_frames(symbolizer, again)
    leaf_offset = file_offset_of(stripped, nm_functions(build("c_pie"))["c_leaf"][0])
    assert frames[0].name == f"app+0x{leaf_offset + 3:x}"
    assert not any(f.symbolized for f in frames)
    assert symbolizer.counters["debug_link_crc_mismatches"] == 1
    assert symbolizer.counters["debug_file_errors"] == 1
    assert symbolizer.counters["unsymbolized_frames"] == 6
    reports = [r.getMessage() for r in caplog.records if "app.debug" in r.getMessage()]
    assert len(reports) == 1 and "CRC" in reports[0]


def test_debug_file_of_another_build_at_the_build_id_path_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stripped, debug = tmp_path / "app", tmp_path / "app.debug"
    split_debug_file(build("c_pie"), stripped, debug, link=False)
    other = tmp_path / "other.debug"
    split_debug_file(build("c_nopie"), tmp_path / "other", other, link=False)
    build_id = build_id_of(stripped)
    in_namespace = f"{DEBUG_ROOT}/.build-id/{build_id[:2]}/{build_id[2:]}.debug"
    caplog.set_level(logging.WARNING, logger="rover.symbols")
    symbolizer = Symbolizer()
    with namespaced_program(stripped, {in_namespace: other}, [DEBUG_ROOT]) as (prog, _):
        symbolizer.prepare(prog.pid)
        frames = c_frames(symbolizer, prog)
    assert not any(f.symbolized for f in frames)
    assert symbolizer.counters["debug_file_errors"] == 1
    assert any("is not the binary's" in r.getMessage() for r in caplog.records)


def test_stripped_library_merges_its_debug_file_with_dynsym(tmp_path: Path) -> None:
    lib, debug = tmp_path / "libspin.so", tmp_path / "libspin.so.debug"
    split_debug_file(build("libspin.so"), lib, debug)
    symbolizer = Symbolizer()
    with RunningProgram([str(build("c_pie")), str(lib)]) as prog:
        symbolizer.prepare(prog.pid)
        a = prog.addresses
        frames = symbolizer.user_frames(prog.pid, [a["lib_hidden"] + 2, a["lib_spin"] + 2])
    # lib_hidden is in no .dynsym: only the debug file names it.
    assert names(frames) == ["lib_hidden", "lib_spin"]
    assert {f.file for f in frames} == {str(lib)}


def test_minidebuginfo_names_the_functions_dynsym_lacks(tmp_path: Path) -> None:
    binary = add_minidebuginfo(build("c_pie"), tmp_path / "fedora_style")
    assert not nm_functions(binary)  # stripped: no .symtab, and main is not exported
    section_range(binary, ".gnu_debugdata")
    symbolizer = Symbolizer()
    with RunningProgram([str(binary)]) as prog:
        symbolizer.prepare(prog.pid)
        frames = c_frames(symbolizer, prog)
        assert symbolizer.symbol_sources(prog.pid)[str(binary)] == ("minidebuginfo",)
    assert names(frames) == ["c_leaf", "c_outer", "main"]
    assert symbolizer.counters["minidebuginfo_used"] >= 1
    assert symbolizer.counters["minidebuginfo_errors"] == 0


def test_minidebuginfo_library_merges_with_dynsym(tmp_path: Path) -> None:
    lib = add_minidebuginfo(build("libspin.so"), tmp_path / "libspin.so")
    symbolizer = Symbolizer()
    with RunningProgram([str(build("c_pie")), str(lib)]) as prog:
        symbolizer.prepare(prog.pid)
        a = prog.addresses
        frames = symbolizer.user_frames(prog.pid, [a["lib_hidden"] + 2, a["lib_spin"] + 2])
    assert names(frames) == ["lib_hidden", "lib_spin"]


def test_damaged_minidebuginfo_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    binary = add_minidebuginfo(build("c_pie"), tmp_path / "fedora_style")
    offset, size = section_range(binary, ".gnu_debugdata")
    data = bytearray(binary.read_bytes())
    data[offset + size // 2 : offset + size // 2 + 64] = bytes(64)
    binary.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="rover.symbols")
    symbolizer = Symbolizer()
    with RunningProgram([str(binary)]) as prog:
        symbolizer.prepare(prog.pid)
        frames = c_frames(symbolizer, prog)
    assert not any(f.symbolized for f in frames)
    assert frames[0].name.startswith("fedora_style+0x")
    assert symbolizer.counters["minidebuginfo_errors"] == 1
    assert symbolizer.counters["elf_load_errors"] == 0  # the file itself is fine
    reports = [r for r in caplog.records if "minidebuginfo" in r.getMessage()]
    assert len(reports) == 1
