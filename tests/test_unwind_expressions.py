"""DWARF expressions in CFI, and signal handlers on an alternate signal stack.

Three references: hand-computed values for the evaluator; ``readelf -wf`` /
``readelf -wF`` for the decoded rows of real libraries (each expression is
printed back with pyelftools' independent ``ExprDumper`` and compared with
readelf's text); and snapshots of real stacks (``tests/workloads/unwind_expr.c``)
through a function gcc realigns with a DRAP register, and from a handler
running on a ``sigaltstack``.
"""

from __future__ import annotations

import random
import re
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.dwarf.descriptions import ExprDumper
from elftools.dwarf.structs import DWARFStructs
from test_unwind_cfi import readelf_rows

from rover.symbols import Symbolizer
from rover.symbols.maps import parse_maps
from rover.unwind.cfi import (
    CFA_EXPR,
    CFA_PLT,
    CFA_RBP,
    CFA_RSP,
    EXPR_RULE,
    MAX_EXPRESSIONS,
    OUTERMOST,
    SAME_VALUE,
    SIGNAL_FRAME,
    UNKNOWN,
    VAL_EXPR_RULE,
    decode_rows,
)
from rover.unwind.cfi_table import CfiTable
from rover.unwind.dwarf_expr import MAX_STEPS, Registers, evaluate
from rover.unwind.markers import (
    SIGALTSTACK,
    SIGALTSTACK_FRAME,
    TRUNCATED,
    TRUNCATED_FRAME,
    is_marker_frame,
    split_marker,
)
from rover.unwind.process_space import ProcessSpace, ProcessSpaces, UnwindModule
from rover.unwind.tables import load_unwind_info
from rover.unwind.unwinder import Status, Unwinder

LIBCRYPTO = "/usr/lib/x86_64-linux-gnu/libcrypto.so.3"
LIBMVEC = "/usr/lib/x86_64-linux-gnu/libmvec.so.1"
LIBX265 = "/usr/lib/x86_64-linux-gnu/libx265.so.199"  # DRAP in hundreds of functions
LIBGCRYPT = "/usr/lib/x86_64-linux-gnu/libgcrypt.so.20"
MASK = (1 << 64) - 1


def no_memory(address: int) -> int | None:
    return None


def run(code: bytes | list[int], rsp=0x1000, rbp=0x2000, rip=0x3000, read=no_memory, initial=None):
    return evaluate(bytes(code), rsp, rbp, rip, read, initial)


# -- the evaluator ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "value"),
    [
        ([0x30], 0),  # lit0
        ([0x4F], 31),  # lit31
        ([0x08, 0xFF], 0xFF),  # const1u
        ([0x09, 0xFF], MASK),  # const1s -1
        ([0x0A, 0x34, 0x12], 0x1234),  # const2u
        ([0x0B, 0xFE, 0xFF], MASK - 1),  # const2s -2
        ([0x0C, 0x78, 0x56, 0x34, 0x12], 0x12345678),  # const4u
        ([0x0D, 0xE0, 0xFF, 0xFF, 0xFF], (-32) & MASK),  # const4s
        ([0x0E, *struct.pack("<Q", 0x1122334455667788)], 0x1122334455667788),  # const8u
        ([0x0F, *struct.pack("<q", -5)], (-5) & MASK),  # const8s
        ([0x10, 0xE5, 0x8E, 0x26], 624485),  # constu (the DWARF spec's example)
        ([0x11, 0x7F], MASK),  # consts -1
        ([0x11, 0x80, 0x7F], (-128) & MASK),  # consts -128
        ([0x77, 0x08], 0x1008),  # breg7 (rsp) 8
        ([0x76, 0x78], 0x1FF8),  # breg6 (rbp) -8
        ([0x80, 0x00], 0x3000),  # breg16 (rip) 0
        ([0x92, 0x07, 0x10], 0x1010),  # bregx rsp 16
        ([0x92, 0x10, 0x7F], 0x2FFF),  # bregx rip -1
        ([0x3A, 0x33, 0x22], 13),  # 10 + 3
        ([0x33, 0x3A, 0x1C], (3 - 10) & MASK),  # minus wraps
        ([0x3A, 0x23, 0x90, 0x01], 154),  # plus_uconst 144
        ([0x3A, 0x33, 0x1E], 30),  # mul
        ([0x3F, 0x36, 0x1A], 6),  # 15 & 6
        ([0x39, 0x36, 0x21], 15),  # 9 | 6
        ([0x3F, 0x36, 0x27], 9),  # 15 ^ 6
        ([0x30, 0x20], MASK),  # not 0
        ([0x35, 0x1F], (-5) & MASK),  # neg
        ([0x09, 0xFB, 0x19], 5),  # abs(-5)
        ([0x31, 0x4F, 0x24], 1 << 31),  # shl
        ([0x31, 0x08, 0x40, 0x24], 0),  # shl by 64: 0
        ([0x08, 0x80, 0x34, 0x25], 8),  # shr
        ([0x09, 0x80, 0x34, 0x26], (-8) & MASK),  # shra keeps the sign
        ([0x09, 0x80, 0x08, 0x70, 0x26], MASK),  # shra by 112
        ([0x09, 0xF9, 0x32, 0x1B], (-3) & MASK),  # div -7 / 2: toward zero
        ([0x37, 0x09, 0xFE, 0x1B], (-3) & MASK),  # div 7 / -2
        ([0x37, 0x32, 0x1D], 1),  # mod
        ([0x35, 0x35, 0x29], 1),  # eq
        ([0x35, 0x36, 0x2E], 1),  # ne
        ([0x09, 0xFF, 0x31, 0x2D], 1),  # lt is signed: -1 < 1
        ([0x09, 0xFF, 0x31, 0x2B], 0),  # gt
        ([0x35, 0x35, 0x2C], 1),  # le
        ([0x35, 0x36, 0x2A], 0),  # ge
        ([0x35, 0x12, 0x22], 10),  # dup
        ([0x35, 0x36, 0x13], 5),  # drop
        ([0x35, 0x36, 0x14], 5),  # over
        ([0x35, 0x36, 0x37, 0x15, 0x02], 5),  # pick 2
        ([0x35, 0x36, 0x16], 5),  # swap
        ([0x31, 0x32, 0x33, 0x17], 2),  # rot: 1 2 3 -> 3 1 2
        ([0x31, 0x32, 0x33, 0x17, 0x13, 0x13], 3),
        ([0x96, 0x31, 0x96], 1),  # nop
        ([0x2F, 0x01, 0x00, 0x35, 0x36], 6),  # skip over lit5
        ([0x31, 0x28, 0x01, 0x00, 0x35, 0x36], 6),  # bra taken
        ([0x30, 0x28, 0x01, 0x00, 0x35, 0x36], 6),  # bra not taken: lit5 lit6
        ([0x30, 0x28, 0x01, 0x00, 0x35], 5),
    ],
)
def test_operations(code, value):
    assert run(code) == value


def test_a_loop_with_a_backward_branch():
    # counter = 3; do { counter -= 1 } while (counter): ends with 0 on the stack
    code = [0x33, 0x31, 0x1C, 0x12, 0x28, 0xFA, 0xFF]
    assert run(code) == 0


def test_cfa_is_pushed_first_for_register_rules():
    assert run([0x23, 0x08], initial=0x5000) == 0x5008
    assert run([], initial=0x5000) == 0x5000
    # libmvec's save slot: ((CFA - 8) & -32) - 96
    code = [0x38, 0x1C, 0x0D, *struct.pack("<i", -32), 0x1A, 0x0D, *struct.pack("<i", -96), 0x22]
    assert run(code, initial=0x7FFF_0000_1238) == ((0x7FFF_0000_1238 - 8) & -32) - 96


def test_the_plt_expression_matches_its_fast_path():
    plt = [0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22]
    assert run(plt, rsp=0x1000, rip=0x40100A) == 0x1008  # before the push: byte 10 < 11
    assert run(plt, rsp=0x1000, rip=0x40100B) == 0x1010


def test_memory_is_read_only_through_read():
    words = {0x1FF8: 0x7FFE_0000_0010, 0x1010: 0xAABB_CCDD_EEFF_1122}
    seen: list[int] = []

    def read(address):
        seen.append(address)
        return words.get(address)

    # DRAP: CFA = [rbp - 8]
    assert run([0x76, 0x78, 0x06], read=read) == 0x7FFE_0000_0010
    # OpenSSL: CFA = [rsp + 16] + 8
    assert run([0x77, 0x10, 0x06, 0x23, 0x08], read=read) == 0xAABB_CCDD_EEFF_112A
    assert run([0x77, 0x10, 0x94, 0x02], read=read) == 0x1122  # deref_size 2
    assert run([0x77, 0x10, 0x94, 0x04], read=read) == 0xEEFF_1122
    assert seen == [0x1FF8, 0x1010, 0x1010, 0x1010]
    assert run([0x77, 0x20, 0x06], read=read) is None  # a read that fails
    assert run([0x77, 0x10, 0x94, 0x03], read=read) is None  # no 3-byte reads


@pytest.mark.parametrize(
    "code",
    [
        [],  # nothing on the stack
        [0x22],  # plus: underflow
        [0x31, 0x22],
        [0x06],  # deref with an empty stack
        [0x23, 0x01],  # plus_uconst with an empty stack
        [0x12],  # dup
        [0x31, 0x32, 0x17],  # rot needs three
        [0x31, 0x15, 0x01],  # pick beyond the stack
        [0x75, 0x00],  # breg5 (rdi): not known
        [0x92, 0x09, 0x00],  # bregx r9
        [0x50],  # DW_OP_reg0: a location, not a value
        [0x03, *bytes(8)],  # DW_OP_addr: would need relocation
        [0xE0],  # DW_OP_GNU_push_tls_address and other unknown opcodes
        [0x0C, 0x01, 0x02],  # const4u cut short
        [0x77],  # breg7 without its offset
        [0x10, 0x80],  # a LEB128 cut short
        [0x10, *([0x80] * 20), 0x01],  # a LEB128 over 64 bits
        [0x31, 0x30, 0x1B],  # division by zero
        [0x31, 0x30, 0x1D],  # modulo zero
        [0x2F, 0x05, 0x00],  # skip past the end
        [0x2F, 0xF0, 0xFF],  # skip before the start
        [0x28, 0x00, 0x00],  # bra with an empty stack
        [0x2F, 0xFD, 0xFF],  # skip to itself forever: the step limit
        [0x30] * (MAX_STEPS + 1),  # too many steps
        [0x30, 0x12, 0x2F, 0xFC, 0xFF],  # dup forever: the depth limit comes first
    ],
)
def test_bad_expressions_fail_without_raising(code):
    assert run(code) is None


def test_unknown_rbp_fails_only_expressions_that_use_it():
    assert run([0x76, 0x00], rbp=None) is None
    assert run([0x77, 0x08], rbp=None) == 0x1008


def test_random_bytes_never_raise():
    rng = random.Random(1234)
    words = {a: rng.getrandbits(64) for a in range(0x1000, 0x1100, 8)}
    # Mostly opcodes the evaluator knows (with whatever operand bytes follow), some not.
    alphabet = [0x06, 0x12, 0x13, 0x14, 0x16, 0x17, 0x22, 0x23, 0x28, 0x2F, 0x30, 0x38]
    alphabet += [0x77, 0x76, 0x80, 0x94, 0x1A, 0x1B, 0x1C, 0x1D, 0x24, 0x26, 0x29, 0x2D]
    ok = 0
    for _ in range(20000):
        size = rng.randint(0, 24)
        code = bytes(
            rng.choice(alphabet) if rng.random() < 0.7 else rng.getrandbits(8) for _ in range(size)
        )
        value = run(code, read=lambda a: words.get(a), initial=rng.choice([None, 0x1040]))
        assert value is None or 0 <= value <= MASK
        ok += value is not None
    assert ok > 500  # not everything is rejected


# -- decoding -------------------------------------------------------------------


def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def eh_frame(fdes: list[tuple[int, int, bytes]]) -> bytes:
    """A section with one CIE (CFA = rsp + 8, ra at cfa-8) and ``(pc, size, insns)`` FDEs."""
    initial = bytes([0x0C, 7, 8, 0x90, 1])
    cie = struct.pack("<I", 0) + bytes([1]) + b"\0" + uleb(1) + bytes([0x78, 16]) + initial
    out = struct.pack("<I", len(cie)) + cie
    for pc, size, insns in fdes:
        body = struct.pack("<IQQ", len(out) + 4, pc, size) + insns
        out += struct.pack("<I", len(body)) + body
    return out + struct.pack("<I", 0)


DRAP_CFA = bytes([0x76, 0x78, 0x06])  # breg6 -8; deref
AT_RBP = bytes([0x76, 0x00])  # breg6 0


def expression(code: bytes) -> bytes:
    return bytes([len(code)]) + code


def test_expressions_decode_into_indexed_rows():
    drap = (
        bytes([0x44, 0x0C, 10, 0])  # +4: def_cfa r10 0
        + bytes([0x44, 0x10, 6]) + expression(AT_RBP)  # +4: rbp saved at [rbp]
        + bytes([0x42, 0x0F]) + expression(DRAP_CFA)  # +2: CFA = [rbp - 8]
        + bytes([0x10, 3]) + expression(bytes([0x76, 0x70]))  # rbx: not tracked
        + bytes([0x4A, 0x0E, 16])  # +10: a misplaced def_cfa_offset changes nothing
        + bytes([0x48, 0x0C, 7, 8])  # +8: def_cfa rsp 8
    )  # fmt: skip
    other = (
        bytes([0x41, 0x14, 6, 2])  # +1: val_offset rbp: CFA - 16
        + bytes([0x41, 0x09, 6, 7])  # +1: rbp held in rsp
        + bytes([0x41, 0x09, 6, 9])  # +1: rbp held in r9: breg9 0 (a leaf knows r9)
        + bytes([0x41, 0x09, 6, 17])  # +1: rbp held in xmm0: unknown
        + bytes([0x41, 0x16, 16]) + expression(bytes([0x77, 0x18]))  # +1: ra's value = rsp+24
        + bytes([0x41, 0x10, 16]) + expression(AT_RBP)  # +1: ra saved at [rbp]
    )  # fmt: skip
    data = eh_frame([(0x1000, 0x40, drap), (0x2000, 0x40, drap), (0x3000, 0x40, other)])
    errors: list[str] = []
    rows = decode_rows(data, 0, True, errors)
    assert not errors
    exprs = rows.expressions
    assert len(set(exprs)) == len(exprs)  # each distinct expression once
    cfa_at, rbp_at = exprs.index(DRAP_CFA), exprs.index(AT_RBP)
    val_off = exprs.index(bytes([0x11, 0x70, 0x22]))  # DW_OP_consts -16; DW_OP_plus
    in_rsp = exprs.index(bytes([0x77, 0x00]))
    in_r9 = exprs.index(bytes([0x79, 0x00]))
    at_r10 = exprs.index(bytes([0x7A, 0x00]))  # def_cfa r10 0: DW_OP_breg10 0
    ra_val = exprs.index(bytes([0x77, 0x18]))
    assert bytes([0x76, 0x70]) not in exprs
    by_pc = {pc: state for pc, _, state in rows}
    for start in (0x1000, 0x2000):  # the second FDE reuses the first one's expressions
        assert by_pc[start] == (CFA_RSP, 8, -8, SAME_VALUE)
        assert by_pc[start + 4] == (CFA_EXPR, at_r10, -8, SAME_VALUE)
        assert by_pc[start + 8] == (CFA_EXPR, at_r10, -8, EXPR_RULE + rbp_at)
        assert by_pc[start + 10] == (CFA_EXPR, cfa_at, -8, EXPR_RULE + rbp_at)
        assert start + 20 not in by_pc  # the def_cfa_offset made no new row
        assert by_pc[start + 28] == (CFA_RSP, 8, -8, EXPR_RULE + rbp_at)
    assert by_pc[0x3001] == (CFA_RSP, 8, -8, VAL_EXPR_RULE + val_off)
    assert by_pc[0x3002] == (CFA_RSP, 8, -8, VAL_EXPR_RULE + in_rsp)
    assert by_pc[0x3003] == (CFA_RSP, 8, -8, VAL_EXPR_RULE + in_r9)
    assert by_pc[0x3004] == (CFA_RSP, 8, -8, UNKNOWN)
    assert by_pc[0x3005] == (CFA_RSP, 8, VAL_EXPR_RULE + ra_val, UNKNOWN)
    assert by_pc[0x3006] == (CFA_RSP, 8, EXPR_RULE + rbp_at, UNKNOWN)
    table = CfiTable.from_rows(rows, ".eh_frame")
    assert table.expressions == exprs
    assert table.lookup(0x2010) == (CFA_EXPR, cfa_at, -8, EXPR_RULE + rbp_at)


def test_corrupt_expression_lengths_are_skipped():
    cut = bytes([0x44, 0x0F, 0x40, 0x76])  # an expression said to run past its FDE
    huge_offset = bytes([0x44, 0x86, *uleb(1 << 40)])  # rbp at cfa - 8 * 2**40
    errors: list[str] = []
    rows = decode_rows(
        eh_frame([(0x1000, 0x40, cut), (0x2000, 0x40, huge_offset)]), 0, True, errors
    )
    assert len(errors) == 1 and "past" in errors[0]
    assert {pc: state for pc, _, state in rows}[0x2004] == (CFA_RSP, 8, -8, UNKNOWN)
    assert rows.expressions == ()


# -- real files against readelf ------------------------------------------------------

_DUMPER = ExprDumper(DWARFStructs(little_endian=True, dwarf_format=32, address_size=8))
_REG_NAME = re.compile(r" \(\w+\)")  # readelf says "(rsp)", pyelftools "(r7)"
_PLT_TEXT = "DW_OP_breg7: 8; DW_OP_breg16: 0; DW_OP_lit15; DW_OP_and; DW_OP_lit{}; DW_OP_ge"


def text(code: bytes) -> str:
    return _REG_NAME.sub("", _DUMPER.dump_expr(code))


def readelf_expression_states(path: str) -> dict[int, tuple[str | None, ...]]:
    """For each row location of each FDE: the texts of the CFA expression and of the
    expressions of RBP's and the return address's rules ("at:..." or "val:..."), from
    ``readelf -wf`` (which prints the instructions, not the rows)."""
    out = subprocess.run(["readelf", "-wf", path], capture_output=True, text=True).stdout
    states: dict[int, tuple[str | None, ...]] = {}
    state: list[str | None] = [None, None, None]
    stack: list[list[str | None]] = []
    loc = None
    for line in out.splitlines():
        header = re.match(r"[0-9a-f]{8} [0-9a-f]+ [0-9a-f]+ (CIE|FDE)(?: cie=\S+ pc=(\w+))?", line)
        if header:
            if loc is not None:
                states[loc] = tuple(state)
            is_fde = header.group(1) == "FDE"
            loc = int(header.group(2), 16) if is_fde else None
            state, stack = [None, None, None], []
            continue
        line = line.strip()
        if loc is None or not line.startswith("DW_CFA_"):
            assert "expression" not in line, "CIE with expressions: not handled here"
            continue
        if m := re.match(r"DW_CFA_advance_loc\d?: \d+ to ([0-9a-f]+)", line):
            states[loc] = tuple(state)
            loc = int(m.group(1), 16)
        elif m := re.match(r"DW_CFA_def_cfa_expression \((.*)\)$", line):
            state[0] = _REG_NAME.sub("", m.group(1))
        elif line.startswith(("DW_CFA_def_cfa:", "DW_CFA_def_cfa_register", "DW_CFA_def_cfa_sf")):
            state[0] = None
        elif m := re.match(r"DW_CFA_(val_)?expression: r(\d+) \(\w+\) \((.*)\)$", line):
            column = {"6": 1, "16": 2}.get(m.group(2))
            if column:
                state[column] = ("val:" if m.group(1) else "at:") + _REG_NAME.sub("", m.group(3))
        elif line == "DW_CFA_remember_state":
            stack.append(list(state))
        elif line == "DW_CFA_restore_state":
            state = stack.pop()
        elif m := re.match(r"DW_CFA_\w+: r(6|16) ", line):
            state[1 if m.group(1) == "6" else 2] = None  # any other rule
    if loc is not None:
        states[loc] = tuple(state)
    return states


def expected_register(rule: str, exp_text: str | None):
    """Our decoding of one readelf register column: an offset, SAME_VALUE, UNKNOWN, or
    ("at" | "val", expression text)."""
    if rule in ("u", "s"):
        return SAME_VALUE
    if rule.startswith("c"):
        return int(rule[1:])
    if rule.startswith("v") and rule[1:2] in "+-" and rule != "vexp":
        return ("val", f"DW_OP_consts: {int(rule[1:])}; DW_OP_plus")
    if rule in ("exp", "vexp"):
        assert exp_text is not None
        kind, _, code = exp_text.partition(":")
        assert kind == ("val" if rule == "vexp" else "at")
        return kind, code
    held_in = int(rule[1:])  # "r9": held in another register
    return ("val", f"DW_OP_breg{held_in}: 0") if held_in <= 16 else UNKNOWN


def actual_register(table: CfiTable, rule: int):
    for base, name in ((VAL_EXPR_RULE, "val"), (EXPR_RULE, "at")):
        if base <= rule < base + MAX_EXPRESSIONS:
            return name, text(table.expressions[rule - base])
    return rule


def expected_cfa(cfa: str, exp_text: str | None):
    if cfa == "exp":
        assert exp_text is not None
        if m := re.match(re.escape(_PLT_TEXT).replace(r"\{\}", r"(\d+)"), exp_text):
            return CFA_PLT, int(m.group(1))
        return "expr", exp_text
    parsed = re.match(r"(\w+?)([-+]\d+)$", cfa)
    assert parsed is not None, cfa
    register, offset = parsed.groups()
    if register in ("rsp", "rbp"):
        return (CFA_RSP if register == "rsp" else CFA_RBP), int(offset)
    number = DWARF_REGISTERS.get(register)  # another register: DW_OP_bregN offset
    return ("expr", f"DW_OP_breg{number}: {int(offset)}") if number is not None else None


DWARF_REGISTERS = {
    name: number
    for number, name in enumerate(
        ["rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", *(f"r{i}" for i in range(8, 16))]
    )
}


def actual_cfa(table: CfiTable, kind: int, cfa: int):
    return ("expr", text(table.expressions[cfa])) if kind == CFA_EXPR else (kind, cfa)


def compare_with_readelf(path: str) -> tuple[int, set[str]]:
    """Every row's rules against readelf; (rows with an expression, CFA expressions)."""
    with open(path, "rb") as stream:
        info = load_unwind_info(stream)
    assert not info.errors
    table = info.table
    states = readelf_expression_states(path)
    with_expressions, cfa_texts = 0, set()
    for pc, row in readelf_rows(path, register_names=True):
        cfa_text, rbp_text, ra_text = states[pc]
        kind, cfa, ra, rbp = table.lookup(pc)
        if row.get("ra", "u") == "u":
            assert kind == OUTERMOST, (hex(pc), row)
            continue
        assert kind != SIGNAL_FRAME  # none in these files
        expected = (
            expected_cfa(row["CFA"], cfa_text),
            expected_register(row["ra"], ra_text),
            expected_register(row.get("rbp", "u"), rbp_text),
        )
        actual = (
            actual_cfa(table, kind, cfa),
            actual_register(table, ra),
            actual_register(table, rbp),
        )
        assert actual == expected, (hex(pc), row, states[pc])
        if "exp" in (row["CFA"], row["ra"], row.get("rbp")):
            with_expressions += 1
            if kind == CFA_EXPR:
                cfa_texts.add(expected[0][1])
    return with_expressions, cfa_texts


def test_libcrypto_expression_rows_match_readelf():
    # OpenSSL's perlasm saves the entry RSP in the frame: CFA = [rsp + N] + 8.
    with_expressions, cfa_texts = compare_with_readelf(LIBCRYPTO)
    assert with_expressions >= 60
    saved_rsp = re.compile(r"DW_OP_breg7: \d+; DW_OP_deref; DW_OP_plus_uconst: 8$")
    assert sum(bool(saved_rsp.match(t)) for t in cfa_texts) >= 10
    assert any(t.startswith("DW_OP_breg6: ") for t in cfa_texts)


@pytest.mark.parametrize("path", [LIBMVEC, LIBX265, LIBGCRYPT])
def test_other_libraries_with_expressions_match_readelf(path):
    if not Path(path).exists():
        pytest.skip(f"{path} is not installed")
    compare_with_readelf(path)


@pytest.mark.parametrize("path", [LIBCRYPTO, LIBX265])
def test_real_cfa_expressions_evaluate(path):
    """Every distinct CFA expression evaluates; those reading other registers than RSP,
    RBP and RIP (OpenSSL's DW_OP_breg9, a CFA at RAX) only with the sample's registers."""
    if not Path(path).exists():
        pytest.skip(f"{path} is not installed")
    with open(path, "rb") as stream:
        table = load_unwind_info(stream).table
    used = {int(c) for c in table.cfa_offsets[table.kinds == CFA_EXPR]}
    assert used
    for index in used:
        code = table.expressions[index]
        regs = (0x7FFE_0000_1000, 0x7FFE_0000_2000, 0x401000)
        value = evaluate(code, *regs, lambda a: a + 64)
        others = {int(n) for n in re.findall(r"DW_OP_breg(\d+)", text(code))} - {6, 7, 16}
        assert (value is None) == bool(others), text(code)
        leaf = Registers.of([0x7FFE_0000_3000] * 17)
        assert evaluate(code, *regs, lambda a: a + 64, None, leaf) is not None, text(code)


# -- unwinding real stacks ----------------------------------------------------------


@pytest.fixture(scope="module")
def unwind_expr(workloads) -> Path:
    return workloads.build("unwind_expr")


def snapshot(spawn, binary: Path, tmp_path: Path, mode: str):
    out = tmp_path / f"snapshot-{mode}.bin"
    process = spawn([binary, out, mode])
    head, _, stack = out.read_bytes().partition(b"\n")
    ip, sp, bp = (int(x, 16) for x in head.split())
    return process, ip, sp, bp, stack


def names(pid: int, addresses) -> list[str]:
    symbolizer = Symbolizer()
    symbolizer.prepare(pid)
    return [f.name for f in symbolizer.user_frames(pid, addresses)]


def test_unwinds_through_a_drap_realigned_frame(spawn, tmp_path, unwind_expr):
    process, ip, sp, bp, stack = snapshot(spawn, unwind_expr, tmp_path, "drap")
    unwinder = Unwinder(ProcessSpaces())
    result = unwinder.unwind(process.pid, ip, sp, bp, stack)
    assert result.status == Status.COMPLETE and result.fp_frames == 0
    frames = names(process.pid, result.addresses)
    assert frames[:4] == ["expr_take", "drap_frame", "expr_outer", "main"]
    assert frames[-1] == "_start"
    # drap_frame's return address row really is an expression (not the frame-pointer path)
    module = unwinder.spaces.module_at(process.pid, unwinder.spaces.space(process.pid), ip)
    kind, cfa, _, rbp = module.rule(result.addresses[1] - 1)
    assert kind == CFA_EXPR and text(module.table.expressions[cfa]).endswith("; DW_OP_deref")
    assert rbp == EXPR_RULE + module.table.expressions.index(bytes([0x76, 0x00]))


def test_unwinds_from_inside_a_drap_realigned_frame(spawn, tmp_path, unwind_expr):
    process, ip, sp, bp, stack = snapshot(spawn, unwind_expr, tmp_path, "drap_leaf")
    result = Unwinder(ProcessSpaces()).unwind(process.pid, ip, sp, bp, stack)
    assert result.status == Status.COMPLETE and result.fp_frames == 0
    frames = names(process.pid, result.addresses)
    assert frames[:3] == ["drap_frame", "expr_outer", "main"] and frames[-1] == "_start"


def test_drap_slot_past_the_copied_window_is_truncated(spawn, tmp_path, unwind_expr):
    process, ip, sp, bp, stack = snapshot(spawn, unwind_expr, tmp_path, "drap_leaf")
    unwinder = Unwinder(ProcessSpaces())
    first_read = bp - 40 - sp  # the CFA expression's deref: [rbp - 40]
    assert 0 < first_read < len(stack)
    result = unwinder.unwind(process.pid, ip, sp, bp, stack[:first_read])
    assert result.status == Status.TRUNCATED and result.addresses == (ip, TRUNCATED)


def test_handler_on_an_alternate_signal_stack(spawn, tmp_path, unwind_expr):
    process, ip, sp, bp, stack = snapshot(spawn, unwind_expr, tmp_path, "altstack")
    unwinder = Unwinder(ProcessSpaces())
    result = unwinder.unwind(process.pid, ip, sp, bp, stack)
    assert result.status == Status.SIGALTSTACK and result.signal_frames == 1
    assert result.addresses[-1] == SIGALTSTACK
    frames = names(process.pid, result.addresses[:-1])
    # frames[3] is the sigreturn trampoline; then the interrupted pc, then the marker
    assert frames[:3] == ["expr_take", "alt_burn", "alt_handler"]
    assert frames[4:] == ["alt_spin"]
    addresses, marker = split_marker(result.addresses)
    assert marker is SIGALTSTACK_FRAME and addresses == result.addresses[:-1]


# -- synthetic stacks ------------------------------------------------------------

CODE = 0x7F00_0000_0000  # one anonymous executable mapping, rules from a made-up table
CALLER = CODE + 0x800  # has no CFI: stepped by frame pointer
SP = 0x7FFD_0000_0000


def space_with(rows, expressions=()) -> ProcessSpaces:
    maps = "7f0000000000-7f0000001000 r-xp 00000000 00:00 0 \n"
    table = CfiTable.from_rows(rows, "test", tuple(expressions))
    modules = [UnwindModule(m, table, 0, True) for m in parse_maps(maps)]
    spaces = ProcessSpaces()
    spaces._spaces[42] = ProcessSpace(maps, modules)
    return spaces


def drap_stack(slot_value: int) -> tuple[bytes, int]:
    """A frame whose rbp is SP+64 and whose DRAP slot [rbp-8] says CFA = ``slot_value``;
    the return address (into CALLER) at CFA-8; the caller's rbp saved at [rbp]."""
    stack = bytearray(512)
    bp = SP + 64
    struct.pack_into("<Q", stack, 64 - 8, slot_value)
    struct.pack_into("<Q", stack, 64, SP + 256)  # caller's rbp
    if SP <= slot_value - 8 < SP + 512 - 8:
        struct.pack_into("<Q", stack, slot_value - 8 - SP, CALLER)
    struct.pack_into("<QQ", stack, 256, 0, 0)  # caller's frame: the end
    return bytes(stack), bp


DRAP_ROWS = [(CODE, CODE + 0x100, (CFA_EXPR, 0, -8, EXPR_RULE + 1))]


def test_synthetic_drap_frame():
    stack, bp = drap_stack(SP + 200)
    result = Unwinder(space_with(DRAP_ROWS, [DRAP_CFA, AT_RBP])).unwind(
        42, CODE + 16, SP, bp, stack
    )
    assert result.addresses == (CODE + 16, CALLER)
    assert result.status == Status.COMPLETE and result.fp_frames == 1  # the caller: no CFI


@pytest.mark.parametrize(
    ("slot", "status"),
    [
        (SP + 200, Status.COMPLETE),
        (SP + 4096, Status.TRUNCATED),  # the return address would be past the window
        (SP - 64, Status.BAD_FRAME),  # below the stack pointer
    ],
)
def test_reads_after_an_expression_follow_the_window(slot, status):
    stack, bp = drap_stack(slot)
    result = Unwinder(space_with(DRAP_ROWS, [DRAP_CFA, AT_RBP])).unwind(
        42, CODE + 16, SP, bp, stack
    )
    assert result.status == status
    assert (result.addresses[-1] == TRUNCATED) == (status == Status.TRUNCATED)


@pytest.mark.parametrize(
    ("expression", "status"),
    [
        (bytes([0x77, 0x80, 0xC0, 0x00, 0x06]), Status.TRUNCATED),  # deref of [rsp + 8192]
        (bytes([0x77, 0x40, 0x06]), Status.BAD_FRAME),  # deref of [rsp - 64]
    ],
)
def test_a_failed_deref_ends_the_walk(expression, status):
    stack, bp = drap_stack(SP + 200)
    spaces = space_with([(CODE, CODE + 0x100, (CFA_EXPR, 0, -8, SAME_VALUE))], [expression])
    result = Unwinder(spaces).unwind(42, CODE + 16, SP, bp, stack)
    assert result.status == status and result.fp_frames == 0


def test_an_expression_that_cannot_be_computed_falls_back_to_frame_pointers():
    stack = bytearray(512)
    struct.pack_into("<QQ", stack, 64, SP + 256, CALLER)  # [rbp], [rbp + 8]
    struct.pack_into("<QQ", stack, 256, 0, 0)
    r9_cfa = bytes([0x79, 0x00])  # breg9: the unwinder has no r9
    spaces = space_with([(CODE, CODE + 0x100, (CFA_EXPR, 0, -8, SAME_VALUE))], [r9_cfa])
    result = Unwinder(spaces).unwind(42, CODE + 16, SP, SP + 64, bytes(stack))
    assert result.addresses == (CODE + 16, CALLER) and result.fp_frames == 2
    # An index outside the table's expressions (a corrupt row) is the same.
    spaces = space_with([(CODE, CODE + 0x100, (CFA_EXPR, 5, -8, SAME_VALUE))], [r9_cfa])
    assert Unwinder(spaces).unwind(42, CODE + 16, SP, SP + 64, bytes(stack)).fp_frames == 2


def test_value_rules_for_rbp_and_the_return_address():
    stack = bytearray(512)
    struct.pack_into("<QQ", stack, 256, 0, 0)
    # CFA = rsp + 32; rbp = CFA + 16 (as from val_offset); the return address is a value
    # rule whose expression reads it: [rsp + 8].
    struct.pack_into("<Q", stack, 8, CALLER)
    struct.pack_into("<QQ", stack, 48, 0, 0)  # the caller's frame pointer chain ends
    rows = [(CODE, CODE + 0x100, (CFA_RSP, 32, VAL_EXPR_RULE + 1, VAL_EXPR_RULE + 0))]
    exprs = [bytes([0x11, 0x10, 0x22]), bytes([0x77, 0x08, 0x06])]
    result = Unwinder(space_with(rows, exprs)).unwind(42, CODE + 16, SP, 0, bytes(stack))
    assert result.addresses == (CODE + 16, CALLER)
    # the caller (no CFI) was stepped by frame pointer from rbp = CFA + 16: its words end it
    assert result.status == Status.COMPLETE and result.fp_frames == 1


# A signal frame (kind SIGNAL_FRAME) at CODE; the ucontext at the handler's CFA (SP).
_UC_SS_SP, _UC_SS_SIZE, _UC_RBP, _UC_RSP, _UC_RIP = 16, 32, 120, 160, 168


def signal_stack(rsp: int, ss_sp: int = 0, ss_size: int = 0) -> bytes:
    stack = bytearray(1024)
    struct.pack_into("<Q", stack, _UC_SS_SP, ss_sp)
    struct.pack_into("<Q", stack, _UC_SS_SIZE, ss_size)
    struct.pack_into("<Q", stack, _UC_RBP, rsp)
    struct.pack_into("<Q", stack, _UC_RSP, rsp)
    struct.pack_into("<Q", stack, _UC_RIP, CALLER)
    return bytes(stack)


SIGNAL_ROWS = [(CODE, CODE + 0x100, (SIGNAL_FRAME, 0, 0, UNKNOWN))]


@pytest.mark.parametrize(
    ("rsp", "ss_sp", "ss_size", "status"),
    [
        (0x7FFE_0000_0000, SP - 0x8000, 0x10000, Status.SIGALTSTACK),  # main stack above
        (0x5555_0000_0000, SP - 0x8000, 0x10000, Status.SIGALTSTACK),  # ...or below
        (SP + 0x9000, SP - 0x8000, 0x10000, Status.SIGALTSTACK),  # just past the alt stack
        (SP + 0x9000, 0, 0, Status.TRUNCATED),  # no alt stack: only a short copy
        (SP - 0x100, 0, 0, Status.BAD_FRAME),  # no alt stack: the stack grew up?
        (SP + 0x100, SP - 0x8000, 0x10000, Status.COMPLETE),  # nested on the alt stack
    ],
)
def test_signal_frames_and_alternate_stacks(rsp, ss_sp, ss_size, status):
    stack = signal_stack(rsp, ss_sp, ss_size)
    result = Unwinder(space_with(SIGNAL_ROWS)).unwind(42, CODE + 16, SP, 0, stack)
    assert result.status == status
    if status == Status.SIGALTSTACK:
        # the interrupted pc (exact: reported + 1), then the marker
        assert result.addresses == (CODE + 16, CALLER + 1, SIGALTSTACK)
        assert result.signal_frames == 1
    elif status == Status.TRUNCATED:
        assert result.addresses == (CODE + 16, CALLER + 1, TRUNCATED)


def test_markers_split_into_frames():
    assert split_marker((1, 2, TRUNCATED)) == ((1, 2), TRUNCATED_FRAME)
    assert split_marker((1, 2, SIGALTSTACK)) == ((1, 2), SIGALTSTACK_FRAME)
    assert split_marker((1, 2)) == ((1, 2), None) and split_marker(()) == ((), None)
    assert SIGALTSTACK_FRAME.name == "[sigaltstack]" and not SIGALTSTACK_FRAME.symbolized
    assert is_marker_frame(SIGALTSTACK_FRAME) and is_marker_frame(TRUNCATED_FRAME)
