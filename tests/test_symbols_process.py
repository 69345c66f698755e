"""Symbolizing live processes built from C, C++, Rust and Go sources."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from symbols_helpers import (
    RunningProgram,
    build,
    build_id_of,
    file_offset_of,
    mapping_of,
    nm_functions,
)

from rover.hostfs import ProcessGone
from rover.profile import FrameKind
from rover.symbols import Symbolizer


def names(frames):
    return [f.name for f in frames]


@pytest.fixture
def symbolizer() -> Symbolizer:
    return Symbolizer()


@pytest.mark.parametrize("binary", ["c_pie", "c_nopie"])
def test_c_functions_resolve(symbolizer: Symbolizer, binary: str) -> None:
    with RunningProgram([str(build(binary))]) as prog:
        symbolizer.prepare(prog.pid)
        a = prog.addresses
        frames = symbolizer.user_frames(
            prog.pid, [a["c_leaf"] + 3, a["c_outer"] + 5, a["main"] + 8]
        )
        assert names(frames) == ["c_leaf", "c_outer", "main"]
        assert all(f.symbolized and f.kind is FrameKind.USER for f in frames)
        assert {f.module for f in frames} == {binary}
        assert symbolizer.counters["unsymbolized_frames"] == 0


def test_frames_carry_the_file_path_and_build_id(symbolizer: Symbolizer, tmp_path: Path) -> None:
    lib = tmp_path / "libstripped.so"
    shutil.copy(build("libspin.so"), lib)
    subprocess.run(["strip", "--strip-all", str(lib)], check=True)
    binary = build("c_pie")
    with RunningProgram([str(binary), str(lib)]) as prog:
        jit = prog.send("jit")["jit"]
        symbolizer.prepare(prog.pid)
        a = prog.addresses
        addresses = [a["lib_hidden"], a["lib_spin"] + 2, a["main"] + 8, jit + 0x10, 0x10]
        frames = symbolizer.user_frames(prog.pid, addresses)
    assert [(f.symbolized, f.file, f.build_id) for f in frames] == [
        (False, str(lib), build_id_of(lib)),  # unsymbolized frames keep them too
        (True, str(lib), build_id_of(lib)),
        (True, str(binary), build_id_of(binary)),
        (False, "[anon]", ""),
        (False, "", ""),  # in no mapping
    ]


def test_function_start_as_leaf_resolves_to_that_function(symbolizer: Symbolizer) -> None:
    with RunningProgram([str(build("c_pie"))]) as prog:
        symbolizer.prepare(prog.pid)
        frames = symbolizer.user_frames(prog.pid, [prog.addresses["c_outer"]])
        assert names(frames) == ["c_outer"]


def test_return_address_after_last_call_resolves_to_the_caller(symbolizer: Symbolizer) -> None:
    binary = build("c_pie")
    functions = nm_functions(binary)
    start, size = functions["c_tail_call"]
    # The layout this test relies on: c_after_tail_call starts where c_tail_call ends.
    assert functions["c_after_tail_call"][0] == start + size
    with RunningProgram([str(binary)]) as prog:
        symbolizer.prepare(prog.pid)
        end = prog.addresses["c_tail_call"] + size  # the return address of its final call
        leaf = prog.addresses["c_leaf"] + 1
        assert names(symbolizer.user_frames(prog.pid, [leaf, end])) == ["c_leaf", "c_tail_call"]
        # As the leaf (an instruction pointer, not a return address) it is the next function.
        assert names(symbolizer.user_frames(prog.pid, [end])) == ["c_after_tail_call"]


def test_zero_addresses_are_skipped(symbolizer: Symbolizer) -> None:
    with RunningProgram([str(build("c_pie"))]) as prog:
        symbolizer.prepare(prog.pid)
        a = prog.addresses
        frames = symbolizer.user_frames(prog.pid, [a["c_leaf"] + 1, 0, a["main"] + 8, 0, 0])
        assert names(frames) == ["c_leaf", "main"]


@pytest.mark.parametrize("library", ["libspin.so", "libflat.so"])
def test_shared_library_loaded_with_the_program(symbolizer: Symbolizer, library: str) -> None:
    lib = build(library)
    with RunningProgram([str(build("c_pie")), str(lib)]) as prog:
        symbolizer.prepare(prog.pid)
        frames = symbolizer.user_frames(prog.pid, [prog.addresses["lib_spin"] + 2])
        assert names(frames) == ["lib_spin"]
        assert frames[0].module == library


def test_library_whose_exec_segment_is_its_first_mapping(symbolizer: Symbolizer) -> None:
    lib = build("libflat.so")
    with RunningProgram([str(build("c_pie")), str(lib)]) as prog:
        _, _, offset, path = mapping_of(prog.pid, prog.addresses["lib_spin"])
        first = next(
            line.split()
            for line in Path(f"/proc/{prog.pid}/maps").read_text().splitlines()
            if line.endswith(str(lib))
        )
        assert path == str(lib) and offset == 0 and first[1] == "r-xp"
        symbolizer.prepare(prog.pid)
        assert names(symbolizer.user_frames(prog.pid, [prog.addresses["lib_spin"] + 2])) == [
            "lib_spin"
        ]


def test_library_dlopened_after_prepare_is_found_by_rereading_maps(
    symbolizer: Symbolizer,
) -> None:
    with RunningProgram([str(build("c_pie"))]) as prog:
        symbolizer.prepare(prog.pid)
        printed = prog.send(f"dlopen {build('libspin.so')}")
        frames = symbolizer.user_frames(prog.pid, [printed["lib_spin"] + 2])
        assert names(frames) == ["lib_spin"]
        assert symbolizer.counters["maps_rereads"] == 1


def test_address_without_symbol_shows_module_and_file_offset(
    symbolizer: Symbolizer, tmp_path: Path
) -> None:
    # A stripped library whose only .text function is hidden: nothing in
    # .dynsym covers it, so the frame is library+file offset.
    lib = tmp_path / "libstripped.so"
    shutil.copy(build("libspin.so"), lib)
    subprocess.run(["strip", "--strip-all", str(lib)], check=True)
    hidden_vaddr, _ = nm_functions(build("libspin.so"))["lib_hidden"]
    with RunningProgram([str(build("c_pie")), str(lib)]) as prog:
        symbolizer.prepare(prog.pid)
        address = prog.addresses["lib_hidden"]
        start, _, offset, _ = mapping_of(prog.pid, address)
        frame = symbolizer.user_frames(prog.pid, [address])[0]
        assert not frame.symbolized
        assert frame.module == "libstripped.so"
        assert frame.name == f"libstripped.so+0x{address - start + offset:x}"
        assert frame.name == f"libstripped.so+0x{file_offset_of(lib, hidden_vaddr):x}"
        assert symbolizer.counters["unsymbolized_frames"] == 1


def test_cpp_names_are_demangled(symbolizer: Symbolizer) -> None:
    with RunningProgram([str(build("cpp"))]) as prog:
        symbolizer.prepare(prog.pid)
        a = prog.addresses
        frames = symbolizer.user_frames(prog.pid, [a["spin"] + 4, a["add"] + 1])
        assert names(frames) == ["ns::Worker::spin()", "int ns::add<int>(int, int)"]


@pytest.mark.parametrize("binary", ["rust_legacy", "rust_v0"])
def test_rust_names_are_demangled_without_hash(symbolizer: Symbolizer, binary: str) -> None:
    path = build(binary)
    mangled = [n for n in nm_functions(path) if "rust_hot_spin" in n]
    # rustc 1.95 mangles with the legacy scheme unless told v0.
    prefix = "_R" if binary == "rust_v0" else "_ZN"
    assert len(mangled) == 1 and mangled[0].startswith(prefix)
    with RunningProgram([str(path)]) as prog:
        symbolizer.prepare(prog.pid)
        a = prog.addresses
        frames = symbolizer.user_frames(prog.pid, [a["rust_hot_spin"] + 4, a["main"] + 4])
        assert names(frames) == ["hot_rust::worker::rust_hot_spin", "hot_rust::main"]


@pytest.mark.parametrize("binary", ["go", "go_pie"])
def test_go_names_come_out_as_go_prints_them(symbolizer: Symbolizer, binary: str) -> None:
    with RunningProgram([str(build(binary))]) as prog:
        symbolizer.prepare(prog.pid)
        a = prog.addresses
        frames = symbolizer.user_frames(prog.pid, [a["work"] + 4, a["main"] + 20])
        assert names(frames) == ["main.work", "main.main"]


def test_process_in_its_own_mount_namespace(symbolizer: Symbolizer, tmp_path: Path) -> None:
    mountpoint = tmp_path / "private"
    mountpoint.mkdir()
    binary = build("c_pie")
    script = (
        f"mount -t tmpfs none {mountpoint} && cp {binary} {mountpoint}/ && exec {mountpoint}/c_pie"
    )
    with RunningProgram(["unshare", "-m", "sh", "-c", script]) as prog:
        assert not (mountpoint / "c_pie").exists()  # only the process's root has it
        assert Path(mapping_of(prog.pid, prog.addresses["c_leaf"])[3]) == mountpoint / "c_pie"
        symbolizer.prepare(prog.pid)
        frames = symbolizer.user_frames(prog.pid, [prog.addresses["c_leaf"] + 1])
        assert names(frames) == ["c_leaf"] and frames[0].module == "c_pie"
        assert symbolizer.counters["elf_load_errors"] == 0


def test_deleted_binary_still_symbolizes(symbolizer: Symbolizer, tmp_path: Path) -> None:
    binary = tmp_path / "doomed"
    shutil.copy(build("c_pie"), binary)
    with RunningProgram([str(binary)]) as prog:
        binary.unlink()
        assert mapping_of(prog.pid, prog.addresses["c_leaf"])[3].endswith("(deleted)")
        symbolizer.prepare(prog.pid)
        frames = symbolizer.user_frames(prog.pid, [prog.addresses["c_leaf"] + 1])
        assert names(frames) == ["c_leaf"] and frames[0].module == "doomed"


def test_process_that_exits_after_prepare_still_symbolizes(symbolizer: Symbolizer) -> None:
    prog = RunningProgram([str(build("c_pie")), str(build("libspin.so"))])
    try:
        symbolizer.prepare(prog.pid)
        a = dict(prog.addresses)
        prog.exit()
        assert not os.path.exists(f"/proc/{prog.pid}")
        frames = symbolizer.user_frames(prog.pid, [a["c_leaf"] + 1, a["lib_spin"] + 3])
        assert names(frames) == ["c_leaf", "lib_spin"]
        # An address in no mapping: the re-read finds the process gone, no exception.
        frames = symbolizer.user_frames(prog.pid, [0x10, a["main"] + 8])
        assert names(frames) == ["[unknown]+0x10", "main"]
    finally:
        prog.stop()


def test_nonexistent_pid(symbolizer: Symbolizer) -> None:
    pid = _unused_pid()
    with pytest.raises(ProcessGone):
        symbolizer.prepare(pid)
    frames = symbolizer.user_frames(pid, [0x401000, 0x7F0000001234])
    assert names(frames) == ["[unknown]+0x401000", "[unknown]+0x7f0000001234"]
    assert not any(f.symbolized for f in frames)
    assert symbolizer.counters["unsymbolized_frames"] == 2


def test_anonymous_executable_memory_stays_unsymbolized(symbolizer: Symbolizer) -> None:
    with RunningProgram([str(build("c_pie"))]) as prog:
        jit = prog.send("jit")["jit"]
        symbolizer.prepare(prog.pid)
        for _ in range(3):
            frame = symbolizer.user_frames(prog.pid, [jit + 0x10])[0]
            assert frame.name == f"[anon]+0x{jit + 0x10:x}" and not frame.symbolized
        assert symbolizer.counters["maps_rereads"] == 0  # it is a known mapping


def test_vdso_functions_resolve(symbolizer: Symbolizer) -> None:
    with RunningProgram([str(build("c_pie"))]) as prog:
        start, end, _, _ = next(
            mapping_of(prog.pid, int(line.split("-")[0], 16))
            for line in Path(f"/proc/{prog.pid}/maps").read_text().splitlines()
            if line.endswith("[vdso]")
        )
        with open(f"/proc/{prog.pid}/mem", "rb") as mem:
            mem.seek(start)
            elf = ELFFile(io.BytesIO(mem.read(end - start)))
        base = next(s["p_vaddr"] for s in elf.iter_segments() if s["p_type"] == "PT_LOAD")
        symbols = elf.get_section_by_name(".dynsym")
        assert isinstance(symbols, SymbolTableSection)
        sym = next(s for s in symbols.iter_symbols() if s.name == "__vdso_clock_gettime")
        address = start + sym["st_value"] - base + 1
        symbolizer.prepare(prog.pid)
        frame = symbolizer.user_frames(prog.pid, [address])[0]
        assert frame.module == "[vdso]"
        assert frame.name in {"__vdso_clock_gettime", "clock_gettime"}


def test_tables_are_shared_between_processes_and_prepare_is_repeatable(
    symbolizer: Symbolizer, tmp_path: Path
) -> None:
    copy = tmp_path / "same_build_id"
    shutil.copy(build("c_pie"), copy)
    with RunningProgram([str(build("c_pie"))]) as first:
        symbolizer.prepare(first.pid)
        loaded = symbolizer.counters["elf_files_loaded"]
        symbolizer.prepare(first.pid)  # unchanged maps: nothing new is loaded
        assert symbolizer.counters["elf_files_loaded"] == loaded
        with RunningProgram([str(build("c_pie"))]) as second, RunningProgram([str(copy)]) as third:
            symbolizer.prepare(second.pid)
            symbolizer.prepare(third.pid)  # another path, same build id
            assert symbolizer.counters["elf_files_loaded"] == loaded
            frames = symbolizer.user_frames(third.pid, [third.addresses["c_outer"] + 1])
            assert names(frames) == ["c_outer"] and frames[0].module == "same_build_id"


def test_forget_drops_the_process_maps(symbolizer: Symbolizer) -> None:
    prog = RunningProgram([str(build("c_pie"))])
    try:
        symbolizer.prepare(prog.pid)
        address = prog.addresses["c_leaf"] + 1
        prog.exit()
        symbolizer.forget(prog.pid)
        assert names(symbolizer.user_frames(prog.pid, [address])) == [f"[unknown]+0x{address:x}"]
    finally:
        prog.stop()


def _unused_pid() -> int:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


def test_garbage_addresses_reread_maps_at_most_once_per_interval(
    symbolizer: Symbolizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Return addresses of code without frame pointers are often in no mapping at all.
    with RunningProgram([str(build("c_pie"))]) as prog:
        symbolizer.prepare(prog.pid)
        main = prog.addresses["main"] + 8
        for garbage in range(0x1000, 0x1000 + 50 * 8, 8):
            assert names(symbolizer.user_frames(prog.pid, [main, garbage]))[0] == "main"
        assert symbolizer.counters["maps_rereads"] == 1
        # A library loaded later is still found once the interval has passed.
        printed = prog.send(f"dlopen {build('libspin.so')}")
        monkeypatch.setattr("rover.symbols.symbolizer.MAPS_REREAD_INTERVAL", 0.0)
        frames = symbolizer.user_frames(prog.pid, [printed["lib_spin"] + 2])
        assert names(frames) == ["lib_spin"]
        assert symbolizer.counters["maps_rereads"] == 2


def test_symbols_stay_within_their_budget_and_name_the_same_after_eviction() -> None:
    """A budget for about half the process's files: loading them evicts (or refuses the
    biggest), and after the process's tables were all pushed out, the same addresses
    get the same names from tables loaded again."""
    with RunningProgram([str(build("c_pie")), str(build("libspin.so"))]) as prog:
        a = prog.addresses
        addresses = [a["lib_spin"] + 2, a["c_leaf"] + 3, a["c_outer"] + 5, a["main"] + 8]
        roomy = Symbolizer()
        roomy.prepare(prog.pid)
        expected = names(roomy.user_frames(prog.pid, addresses))
        assert expected == ["lib_spin", "c_leaf", "c_outer", "main"]
        everything = roomy.caches()[0]
        assert everything.name == "symbol_tables" and everything.entries >= 4

        budget = everything.bytes // 2
        tight = Symbolizer(symbol_table_bytes=budget)
        tight.prepare(prog.pid)
        stats = tight.caches()[0]
        assert stats.bytes <= budget and stats.evictions + stats.refused > 0
        assert names(tight.user_frames(prog.pid, addresses)) == expected
        loaded = tight.counters["elf_files_loaded"]
        tight.forget(prog.pid)
        # Another process fills the cache with other files (here: libspin's copies
        # are gone from it), then this one is symbolized from scratch.
        with RunningProgram([str(build("c_nopie"))]) as other:
            tight.prepare(other.pid)
        tight.prepare(prog.pid)
        assert tight.counters["elf_files_loaded"] > loaded
        assert names(tight.user_frames(prog.pid, addresses)) == expected
        assert tight.caches()[0].bytes <= budget
