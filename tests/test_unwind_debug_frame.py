""".debug_frame from separate debug files fills the gaps of a binary's .eh_frame.

The program is built without unwind tables (``-fno-asynchronous-unwind-tables``):
its own functions have CFI only in ``.debug_frame``, which ``strip -g`` moves
out to the debug file; its ``.eh_frame`` keeps the C runtime's FDEs (``_start``,
the PLT). The reference for the rules is ``readelf --debug-dump=frames-interp``.
"""

from __future__ import annotations

import logging
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from symbols_helpers import (
    RunningProgram,
    build_id_of,
    namespaced_program,
    nm_functions,
    run,
    section_range,
)
from test_unwind_cfi import expected_rule, readelf_rows
from test_unwind_engine import chain_share, profile_user

from rover.bpf.engine import EngineConfig
from rover.bpf.headers import HeaderSearch
from rover.hostfs import HostFS
from rover.profile import ProfileType
from rover.unwind.cfi import (
    CFA_EXPR,
    CFA_RSP,
    EXPR_RULE,
    NO_CFI,
    SAME_VALUE,
    VAL_EXPR_RULE,
    CfiRows,
)
from rover.unwind.modes import make_engine
from rover.unwind.process_space import ProcessSpaces, UnwindModule
from rover.unwind.tables import (
    DEBUG_FILE_FRAME,
    DEBUG_FRAME,
    EH_FRAME,
    load_unwind_info,
    merge_cfi,
)

DEBUG_ROOT = "/usr/lib/debug"
CHAIN = ["main", "df_a", "df_b"]
FLAGS = (
    "-O2", "-fomit-frame-pointer", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",
    "-g", "-Wl,--build-id",
)  # fmt: skip

# main -> df_a -> df_b -> memset (libc), forever; "ready" first (the tests' protocol).
PROGRAM = r"""
#include <stdio.h>
#include <string.h>

static char buffer[1 << 16];
volatile unsigned long df_sink;

__attribute__((noinline)) void df_b(int round) {
    for (int i = 0; i < 64; i++) {
        memset(buffer, round + i, sizeof buffer);
        df_sink += buffer[i * 7] + VARIANT;
    }
    __asm__ volatile("" ::: "memory"); /* work after the call: no tail call */
}

__attribute__((noinline)) void df_a(int round) {
    df_b(round);
    __asm__ volatile("" ::: "memory");
}

int main(void) {
    printf("ready\n");
    fflush(stdout);
    for (int round = 0;; round++)
        df_a(round);
}
"""


@dataclass(frozen=True)
class Split:
    """A stripped program and its separate debug file."""

    full: Path  # as built: its own .debug_frame
    stripped: Path  # no .debug_frame, no debug link
    debug: Path
    build_id: str

    @property
    def build_id_path(self) -> str:
        return f"{DEBUG_ROOT}/.build-id/{self.build_id[:2]}/{self.build_id[2:]}.debug"


def split_program(directory: Path, variant: int = 0) -> Split:
    directory.mkdir(parents=True, exist_ok=True)
    source, full = directory / "df.c", directory / "df_full"
    source.write_text(PROGRAM)
    run("gcc", *FLAGS, f"-DVARIANT={variant}", "-o", full, source)
    stripped, debug = directory / "df", directory / "df.debug"
    run("objcopy", "--only-keep-debug", full, debug)
    run("strip", "--strip-debug", "-o", stripped, full)  # keeps .symtab: names still work
    return Split(full, stripped, debug, build_id_of(stripped))


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Split:
    return split_program(tmp_path_factory.mktemp("debug-frame"))


def function_range(binary: Path, name: str) -> range:
    start, size = nm_functions(binary)[name]
    return range(start, start + size)


def readelf_fde_ranges(binary: Path) -> list[range]:
    out = run("readelf", "--debug-dump=frames", binary)
    return [
        range(int(lo, 16), int(hi, 16))
        for lo, hi in re.findall(r"pc=([0-9a-f]+)\.\.([0-9a-f]+)", out)
    ]


def loaded_module(spaces: ProcessSpaces, pid: int, path: str) -> UnwindModule:
    """The executable mapping of ``path`` in ``pid``, with its table loaded."""
    space = spaces.space(pid)
    assert space is not None
    for module in space.modules:
        if module.mapping.path == path:
            loaded = spaces.module_at(pid, space, module.mapping.start)
            assert loaded is module and module.table is not None
            return module
    raise LookupError(f"{path} is not mapped executable by {pid}")


def rows_of(split: Split, name: str):
    """readelf's rows of the debug file's FDE of function ``name``: (pc, expected rule)."""
    span = function_range(split.stripped, name)
    rows = [(pc, expected_rule(row)) for pc, row in readelf_rows(str(split.debug)) if pc in span]
    assert len(rows) >= 2, rows  # at least one push: several rules
    return rows


def cfi_rows(expressions: tuple[bytes, ...], *fdes) -> CfiRows:
    """Rows as decode_rows gives them, from ``(start, end, [(pc, state), ...])`` FDEs."""
    rows = CfiRows()
    rows.extend((pc, end, state) for _, end, states in fdes for pc, state in states)
    rows.expressions = expressions
    return rows


def test_merge_keeps_whole_fdes_in_gaps_and_renumbers_expressions() -> None:
    ret = (CFA_RSP, 8, -8, SAME_VALUE)
    eh = cfi_rows((b"eh0",), (0x1000, 0x1010, [(0x1000, (CFA_EXPR, 0, -8, SAME_VALUE))]))
    in_gap = [(0x2000, (CFA_EXPR, 0, VAL_EXPR_RULE + 1, EXPR_RULE)), (0x2004, ret)]
    debug = cfi_rows(
        (b"d0", b"d1"),
        (0x1000, 0x1008, [(0x1000, ret)]),  # covered by .eh_frame: dropped
        (0x100C, 0x1020, [(0x100C, ret)]),  # partly covered: dropped whole
        (0x1010, 0x1018, [(0x1010, (CFA_RSP, 16, -8, SAME_VALUE))]),  # right after: kept
        (0x2000, 0x2010, in_gap),
    )
    table, sources = merge_cfi([(EH_FRAME, eh), (DEBUG_FILE_FRAME, debug)])
    assert sources == (EH_FRAME, DEBUG_FILE_FRAME) and table.source == "+".join(sources)
    assert table.expressions == (b"eh0", b"d0", b"d1")
    assert table.lookup(0x100C) == (CFA_EXPR, 0, -8, SAME_VALUE)
    assert table.lookup(0x1010) == (CFA_RSP, 16, -8, SAME_VALUE)
    assert table.lookup(0x1018)[0] == table.lookup(0x1FFF)[0] == NO_CFI
    assert table.lookup(0x2000) == (CFA_EXPR, 1, VAL_EXPR_RULE + 2, EXPR_RULE + 1)
    assert table.lookup(0x200F) == ret and table.lookup(0x2010)[0] == NO_CFI
    alone, only = merge_cfi([(EH_FRAME, []), (DEBUG_FILE_FRAME, debug)])
    assert only == (DEBUG_FILE_FRAME,) and alone.lookup(0x1004) == ret


def test_the_stripped_program_has_no_cfi_for_its_functions(split: Split) -> None:
    sections = run("readelf", "-S", "-W", split.stripped)
    assert ".debug_frame" not in sections and ".gnu_debuglink" not in sections
    covered = readelf_fde_ranges(split.stripped)
    assert covered  # _start and the PLT
    for name in CHAIN:
        span = function_range(split.stripped, name)
        assert not any(r.start < span.stop and span.start < r.stop for r in covered), name
    assert ".debug_frame" in run("readelf", "-S", "-W", split.debug)


def test_an_unstripped_binary_merges_its_own_debug_frame(split: Split) -> None:
    with open(split.full, "rb") as stream:
        info = load_unwind_info(stream)
    assert info.sources == (EH_FRAME, DEBUG_FRAME) and not info.errors
    for pc, rule in rows_of(split, "df_b"):
        assert info.table.lookup(pc) == rule


def test_without_the_debug_file_b_has_no_rule(split: Split, tmp_path: Path) -> None:
    spaces = ProcessSpaces(HostFS(tmp_path, "/proc"))  # an empty host: no debug file anywhere
    with RunningProgram([str(split.stripped)]) as prog:
        module = loaded_module(spaces, prog.pid, str(split.stripped))
    assert module.table is not None and module.table.source == EH_FRAME
    assert all(
        module.table.lookup(pc)[0] == NO_CFI for pc in function_range(split.stripped, "df_b")
    )
    assert spaces.counters["debug_frame_errors"] == spaces.counters["debug_frames_used"] == 0


def test_debug_file_by_build_id_on_the_host(split: Split, tmp_path: Path) -> None:
    host = tmp_path / "host"  # the host's root as an agent in a container sees it
    place = host / split.build_id_path.lstrip("/")
    place.parent.mkdir(parents=True)
    shutil.copy(split.debug, place)
    spaces = ProcessSpaces(HostFS(host, "/proc"))
    with RunningProgram([str(split.stripped)]) as prog:
        module = loaded_module(spaces, prog.pid, str(split.stripped))
    table = module.table
    assert table is not None and table.source == f"{EH_FRAME}+{DEBUG_FILE_FRAME}"
    for name in CHAIN:
        for pc, rule in rows_of(split, name):
            assert table.lookup(pc) == rule, (name, hex(pc))
    # .eh_frame still gives _start's rule (the outermost frame).
    start = function_range(split.stripped, "_start").start
    assert table.lookup(start)[0] != NO_CFI
    assert spaces.counters["debug_frames_used"] == 1
    assert spaces.counters["debug_frame_errors"] == 0


def test_debug_file_by_debug_link(split: Split, tmp_path: Path) -> None:
    linked = tmp_path / "df"
    shutil.copy(split.debug, tmp_path / "df.debug")
    shutil.copy(split.stripped, linked)
    run("objcopy", f"--add-gnu-debuglink={tmp_path / 'df.debug'}", linked)
    assert build_id_of(linked) == split.build_id
    spaces = ProcessSpaces(HostFS(tmp_path / "empty-host", "/proc"))  # only the link finds it
    with RunningProgram([str(linked)]) as prog:
        module = loaded_module(spaces, prog.pid, str(linked))
    assert module.table is not None and DEBUG_FILE_FRAME in module.table.source
    for pc, rule in rows_of(split, "df_b"):
        assert module.table.lookup(pc) == rule
    assert spaces.counters["debug_frames_used"] == 1


def test_debug_file_inside_the_target_root_and_the_cache_upgrade(split: Split) -> None:
    # The host has no debug file for this build id: the host copy's table lacks df_b.
    assert not Path(split.build_id_path).exists()
    spaces = ProcessSpaces(HostFS())
    b_start = function_range(split.stripped, "df_b").start + 1
    with RunningProgram([str(split.stripped)]) as on_host:
        host_module = loaded_module(spaces, on_host.pid, str(split.stripped))
    assert host_module.table is not None and host_module.table.lookup(b_start)[0] == NO_CFI
    files = {split.build_id_path: split.debug}
    with namespaced_program(split.stripped, files, [DEBUG_ROOT]) as (prog, exe_path):
        module = loaded_module(spaces, prog.pid, exe_path)
    # Same build id, another file: the cached table is rebuilt with the container's file.
    assert module.table is not None and DEBUG_FILE_FRAME in module.table.source
    assert module.table.lookup(b_start)[0] != NO_CFI
    assert spaces.counters["debug_frames_used"] == 1


def garble_debug_file(split: Split, how: str, directory: Path) -> Path:
    """A bad debug file at ``directory``, found by the build id of ``split``."""
    bad = directory / "bad.debug"
    if how == "other_build":
        return split_program(directory / "other", variant=1).debug
    data = bytearray(split.debug.read_bytes())
    offset, size = section_range(split.debug, ".debug_frame")
    if how == "bad_length":  # the second entry's length runs far past the section
        first = struct.unpack_from("<I", data, offset)[0]
        struct.pack_into("<I", data, offset + 4 + first, 0x7FFFFFF0)
    elif how == "garbage":
        data[offset + 4 : offset + size] = bytes(0xA5 for _ in range(size - 4))
    else:  # truncated in the middle of .debug_frame: no section headers left either
        del data[offset + size // 2 :]
    bad.write_bytes(bytes(data))
    return bad


@pytest.mark.parametrize("how", ["bad_length", "garbage", "truncated", "other_build"])
def test_bad_debug_file_is_counted_once_and_the_own_table_used(
    split: Split, tmp_path: Path, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    bad = garble_debug_file(split, how, tmp_path)
    host = tmp_path / "host"
    place = host / split.build_id_path.lstrip("/")
    place.parent.mkdir(parents=True)
    shutil.copy(bad, place)
    copy = tmp_path / "df-copy"  # the same build as another file: a second search
    shutil.copy(split.stripped, copy)
    caplog.set_level(logging.WARNING)
    spaces = ProcessSpaces(HostFS(host, "/proc"))
    with RunningProgram([str(split.stripped)]) as one, RunningProgram([str(copy)]) as two:
        modules = [
            loaded_module(spaces, one.pid, str(split.stripped)),
            loaded_module(spaces, two.pid, str(copy)),
        ]
    b_start = function_range(split.stripped, "df_b").start + 1
    for module in modules:
        assert module.table is not None and module.table.source == EH_FRAME
        assert module.table.lookup(b_start)[0] == NO_CFI
    assert spaces.counters["debug_frame_errors"] == 1
    assert spaces.counters["cfi_load_errors"] == spaces.counters["debug_frames_used"] == 0
    reports = [r.getMessage() for r in caplog.records if str(place) in r.getMessage()]
    assert len(reports) == 1 and "for unwinding" in reports[0], reports


# -- end to end, with BPF ------------------------------------------------------


@pytest.fixture(scope="module")
def headers():
    return HeaderSearch().find()


def profile_chain_share(headers, pid: int, whole: bool = True) -> float:
    engine = make_engine(ProfileType.ON_CPU, headers, EngineConfig(frequency=499), "eh_frame")
    try:
        stacks, results = profile_user(engine, pid, 2.0, drains=4)
    finally:
        engine.close()
    assert sum(n for _, n in stacks) > 300, stacks[:3]
    if whole:  # without CFI for its functions, frame pointers lead nowhere: lost frames
        assert all(n == 0 for r in results for n in r.counters.values())
    return chain_share(stacks, CHAIN)


@pytest.mark.bpf
def test_profile_names_the_chain_with_the_containers_debug_file(headers, split: Split) -> None:
    files = {split.build_id_path: split.debug}
    with namespaced_program(split.stripped, files, [DEBUG_ROOT]) as (prog, _):
        share = profile_chain_share(headers, prog.pid)
    assert share > 0.8


@pytest.mark.bpf
def test_profile_loses_the_chain_without_the_debug_file(headers, split: Split) -> None:
    with namespaced_program(split.stripped, {}, [DEBUG_ROOT]) as (prog, _):
        share = profile_chain_share(headers, prog.pid, whole=False)
    assert share < 0.1
