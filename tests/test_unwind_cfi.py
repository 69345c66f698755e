"""CFI tables and the user-space unwinder on real binaries, without BPF.

The reference for the tables is ``readelf --debug-dump=frames-interp``; the
reference for unwinding is a workload that copies its own stack ("a core dump")
from deep inside libc (qsort's comparator, a signal handler).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from rover.symbols import Symbolizer
from rover.symbols.elf_file import ElfImage
from rover.symbols.maps import parse_maps
from rover.unwind.cfi import (
    CFA_EXPR,
    CFA_PLT,
    CFA_RBP,
    CFA_RSP,
    CFA_UNSUPPORTED,
    NO_CFI,
    OUTERMOST,
    SAME_VALUE,
    SIGNAL_FRAME,
    UNKNOWN,
    VAL_EXPR_RULE,
)
from rover.unwind.markers import TRUNCATED
from rover.unwind.process_space import ProcessSpace, ProcessSpaces, UnwindModule
from rover.unwind.tables import UnwindInfoCache, load_unwind_info
from rover.unwind.unwinder import Status, Unwinder

LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
LIBSTDCXX = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"
_REG_RULE = re.compile(r"\b(r\d+) \(\w+\)")  # a value held in a register: "r9 (r9)"


def readelf_rows(path: str, register_names: bool = False):
    """(pc, columns) for every FDE row readelf prints (CIE rows skipped).

    A rule "held in a register" reads ``reg``, or with ``register_names`` the register.
    """
    # readelf exits 1 over libc's .debug_* stubs it cannot find; the frames print fine.
    out = subprocess.run(["readelf", "-wF", path], capture_output=True, text=True).stdout
    assert "FDE" in out
    columns, in_fde = None, False
    for line in out.splitlines():
        if " CIE" in line or " FDE " in line:
            in_fde, columns = " FDE " in line, None
        elif line.strip().startswith("LOC"):
            columns = line.split()
        elif columns and in_fde and re.match(r"^[0-9a-f]{16} ", line):
            values = _REG_RULE.sub(r"\1" if register_names else "reg", line).split()
            yield int(values[0], 16), dict(zip(columns, values, strict=False))


def expected_rule(row: dict[str, str]):
    """The row's rules as we decode them ("expression": checked in detail, against the
    expressions' text, by tests/test_unwind_expressions.py)."""
    cfa, ra, rbp = row["CFA"], row.get("ra", "u"), row.get("rbp", "u")
    if ra == "u":
        return "outermost"
    if cfa == "exp":
        return "expression"
    kind = {"rsp": CFA_RSP, "rbp": CFA_RBP}.get(cfa[:3])
    if kind is None:
        return "expression"  # CFA from another register: not computable either
    rbp_offset: int | str = (
        int(rbp[1:]) if rbp.startswith("c") else SAME_VALUE if rbp in "us" else UNKNOWN
    )
    ra_offset: int | str = int(ra[1:]) if ra.startswith("c") else UNKNOWN
    # Held in a register: the value expression DW_OP_bregN 0 (see comparable()).
    rbp_offset = HELD if rbp == "reg" else rbp_offset
    ra_offset = HELD if ra == "reg" else ra_offset
    return kind, int(cfa[4:]), ra_offset, rbp_offset


HELD = "held in a register"


def comparable(rule):
    """A looked-up rule with value-expression register rules shown as HELD."""
    kind, cfa, ra, rbp = rule
    return kind, cfa, *(HELD if v >= VAL_EXPR_RULE else v for v in (ra, rbp))


@pytest.mark.parametrize("path", [LIBC, LIBSTDCXX, "/usr/bin/python3.11"])
def test_table_matches_readelf_at_every_row(path):
    with open(path, "rb") as stream:
        info = load_unwind_info(stream)
    assert info.table.source == ".eh_frame" and not info.errors
    checked = mismatches = 0
    for pc, row in readelf_rows(path):
        expected = expected_rule(row)
        kind, cfa, ra, rbp = info.table.lookup(pc)
        if expected == "outermost":
            ok = kind == OUTERMOST
        elif expected == "expression":
            ok = kind in (CFA_PLT, CFA_EXPR, CFA_UNSUPPORTED, SIGNAL_FRAME)
        else:
            ok = comparable((kind, cfa, ra, rbp)) == expected
        checked += 1
        mismatches += not ok
        assert mismatches == 0, (hex(pc), row, (kind, cfa, ra, rbp))
    assert checked > 2000


def test_gaps_between_functions_have_no_cfi():
    with open(LIBC, "rb") as stream:
        table = load_unwind_info(stream).table
    assert table.lookup(0)[0] == NO_CFI
    assert table.lookup(0x7FFF_FFFF_FFFF)[0] == NO_CFI
    kinds = set(table.kinds.tolist())
    assert {CFA_RSP, NO_CFI, SIGNAL_FRAME, OUTERMOST, CFA_PLT} <= kinds


def test_libllvm_table_builds():
    path = "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1"
    with open(path, "rb") as stream:
        info = load_unwind_info(stream)
    assert len(info.table) > 500_000 and not info.errors


# -- unwinding a self-made snapshot -------------------------------------------


def take_snapshot(workloads, spawn, tmp_path: Path, mode: str):
    out = tmp_path / f"snapshot-{mode}.bin"
    process = spawn([workloads.build("unwind_snapshot"), out, mode])
    head, _, stack = out.read_bytes().partition(b"\n")
    ip, sp, bp = (int(x, 16) for x in head.split())
    return process, ip, sp, bp, stack


def names(symbolizer: Symbolizer, pid: int, addresses) -> list[str]:
    return [f.name for f in symbolizer.user_frames(pid, addresses)]


def test_unwinds_through_libc_without_frame_pointers(workloads, spawn, tmp_path):
    process, ip, sp, bp, stack = take_snapshot(workloads, spawn, tmp_path, "qsort")
    symbolizer = Symbolizer()
    symbolizer.prepare(process.pid)
    result = Unwinder(ProcessSpaces()).unwind(process.pid, ip, sp, bp, stack)
    assert result.status == Status.COMPLETE and result.fp_frames == 0
    frames = names(symbolizer, process.pid, result.addresses)
    assert frames[:2] == ["snap_take", "snap_compare"]
    assert frames[-1] == "_start"
    chain = frames[frames.index("snap_b") :]
    assert chain[:3] == ["snap_b", "snap_a", "main"]
    assert any("qsort" in f for f in frames[2 : frames.index("snap_b")])


def test_unwinds_through_a_signal_frame(workloads, spawn, tmp_path):
    process, ip, sp, bp, stack = take_snapshot(workloads, spawn, tmp_path, "signal")
    symbolizer = Symbolizer()
    symbolizer.prepare(process.pid)
    result = Unwinder(ProcessSpaces()).unwind(process.pid, ip, sp, bp, stack)
    assert result.status == Status.COMPLETE and result.signal_frames == 1
    frames = names(symbolizer, process.pid, result.addresses)
    assert frames[:2] == ["snap_take", "snap_handler"]
    after_signal = frames[3:]  # frames[2] is the sigreturn trampoline (__restore_rt)
    assert "raise" in after_signal
    assert after_signal[after_signal.index("snap_b") :][:3] == ["snap_b", "snap_a", "main"]


def test_stack_copy_ending_mid_frame_is_truncated(workloads, spawn, tmp_path):
    process, ip, sp, bp, stack = take_snapshot(workloads, spawn, tmp_path, "qsort")
    unwinder = Unwinder(ProcessSpaces())
    full = unwinder.unwind(process.pid, ip, sp, bp, stack).addresses
    for cut in (0, 8, 100, 333, 1024):
        result = unwinder.unwind(process.pid, ip, sp, bp, stack[:cut])
        assert result.status == Status.TRUNCATED
        assert result.addresses[-1] == TRUNCATED
        frames = result.addresses[:-1]
        assert frames == full[: len(frames)]  # what was found is right, just shorter


def test_process_that_exited_unwinds_from_cached_maps(workloads, spawn, tmp_path):
    process, ip, sp, bp, stack = take_snapshot(workloads, spawn, tmp_path, "qsort")
    spaces = ProcessSpaces()
    spaces.prepare(process.pid, preload_s=0)  # maps only: tables load after the exit
    symbolizer = Symbolizer()
    symbolizer.prepare(process.pid)
    process.stop()
    assert not Path(f"/proc/{process.pid}").exists()
    result = Unwinder(spaces).unwind(process.pid, ip, sp, bp, stack)
    assert result.status == Status.COMPLETE
    frames = names(symbolizer, process.pid, result.addresses)
    assert frames[0] == "snap_take" and frames[-1] == "_start"
    assert frames[frames.index("snap_b") :][:3] == ["snap_b", "snap_a", "main"]
    # Never seen before it exited: counted, the leaf alone, no exception.
    unknown = Unwinder(ProcessSpaces()).unwind(process.pid, ip, sp, bp, stack)
    assert unknown.status == Status.NO_MAPS and unknown.addresses == (ip,)


def test_adding_a_process_loads_its_tables_within_a_budget(workloads, spawn, tmp_path):
    process, ip, sp, bp, stack = take_snapshot(workloads, spawn, tmp_path, "qsort")
    lazy = ProcessSpaces()
    lazy.prepare(process.pid, preload_s=0)
    assert lazy.counters["cfi_files_loaded"] == 0
    eager = ProcessSpaces()
    eager.prepare(process.pid)  # as the engine does in add_pid
    loaded = eager.counters["cfi_files_loaded"]
    assert loaded >= 3  # the program, libc, the dynamic loader (and the vDSO)
    assert Unwinder(eager).unwind(process.pid, ip, sp, bp, stack).status == Status.COMPLETE
    assert eager.counters["cfi_files_loaded"] == loaded  # nothing left to load


def test_cfi_tables_stay_within_their_budget_and_unwind_the_same_after_eviction(
    workloads, spawn, tmp_path
):
    """A budget for about half the process's tables: they are evicted (or the biggest
    refused) as they load; once the process is forgotten and read again, the tables
    decoded anew unwind the same stack to the same frames."""
    process, ip, sp, bp, stack = take_snapshot(workloads, spawn, tmp_path, "qsort")
    roomy = ProcessSpaces()
    roomy.prepare(process.pid)
    expected = Unwinder(roomy).unwind(process.pid, ip, sp, bp, stack)
    assert expected.status == Status.COMPLETE
    everything = roomy.cache.stats()
    assert everything.name == "cfi_tables" and everything.entries >= 3

    budget = everything.bytes // 2
    tight = ProcessSpaces(cache=UnwindInfoCache(budget))
    tight.prepare(process.pid)
    stats = tight.cache.stats()
    assert stats.bytes <= budget and stats.evictions + stats.refused > 0
    assert Unwinder(tight).unwind(process.pid, ip, sp, bp, stack).addresses == expected.addresses
    loaded = tight.counters["cfi_files_loaded"]
    tight.forget(process.pid)
    tight.prepare(process.pid)
    assert tight.counters["cfi_files_loaded"] > loaded  # what was evicted, decoded again
    again = Unwinder(tight).unwind(process.pid, ip, sp, bp, stack)
    assert again.status == Status.COMPLETE and again.addresses == expected.addresses
    assert tight.cache.stats().bytes <= budget
    crcs = tight.debug_file_crcs()
    assert crcs is not None and crcs.name == "debug_file_crcs_unwinding"


def garble(path: Path, how: str) -> None:
    with open(path, "rb") as stream:
        section = ElfImage(stream).section(".eh_frame")
    assert section is not None
    data = bytearray(path.read_bytes())
    start, end = section.offset, section.offset + section.size
    if how == "garbage":
        for i in range(start + section.size // 3, end, 7):
            data[i] = 0xFF ^ data[i]
    else:  # a length field pointing far past the section, a third of the way in
        struct.pack_into("<I", data, start + (section.size // 3 & ~3), 0x7FFFFFF0)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["garbage", "bad_length"])
def test_corrupt_cfi_is_skipped_not_fatal(workloads, spawn, tmp_path, how):
    binary = tmp_path / "unwind_snapshot"
    shutil.copy(workloads.build("unwind_snapshot"), binary)
    garble(binary, how)
    with open(binary, "rb") as stream:
        info = load_unwind_info(stream)  # never raises for bad CFI
    out = tmp_path / "snap.bin"
    process = spawn([binary, out, "qsort"])
    head, _, stack = out.read_bytes().partition(b"\n")
    ip, sp, bp = (int(x, 16) for x in head.split())
    for _ in range(2):  # the second time from the cache
        result = Unwinder(ProcessSpaces()).unwind(process.pid, ip, sp, bp, stack)
        assert result.addresses[0] == ip
        assert result.status in {s for s in vars(Status).values() if isinstance(s, str)}
    assert len(info.table) >= 0


# -- frame-pointer fallback over synthetic mappings ---------------------------


def test_frames_without_cfi_fall_back_to_frame_pointers():
    maps = (
        "7f0000000000-7f0000001000 r-xp 00000000 00:00 0 \n"  # JIT code: no file, no CFI
        "7f0000002000-7f0000003000 r-xp 00000000 00:00 0 \n"
    )
    modules = [UnwindModule(m, None, 0, True) for m in parse_maps(maps)]
    space = ProcessSpace(maps, modules)
    spaces = ProcessSpaces()
    spaces._spaces[42] = space  # a process known only from its maps
    sp = 0x7FFD_0000_0000
    stack = bytearray(256)
    # frame at sp+64: saved rbp -> sp+128, return address into the second region
    struct.pack_into("<QQ", stack, 64, sp + 128, 0x7F00_0000_2010)
    # frame at sp+128: saved rbp 0, return address 0: the end
    struct.pack_into("<QQ", stack, 128, 0, 0)
    result = Unwinder(spaces).unwind(42, 0x7F00_0000_0100, sp, sp + 64, bytes(stack))
    assert result.addresses == (0x7F00_0000_0100, 0x7F00_0000_2010)
    assert result.status == Status.COMPLETE and result.fp_frames == 2
    # A frame pointer below the stack pointer is not followed.
    bad = Unwinder(spaces).unwind(42, 0x7F00_0000_0100, sp, sp - 64, bytes(stack))
    assert bad.status == Status.BAD_FRAME and bad.addresses == (0x7F00_0000_0100,)
