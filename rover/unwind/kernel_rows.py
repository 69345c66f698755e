"""A file's CFI table in the form the kernel walks: ``struct unwind_row`` shards.

The decoder's rows (``cfi_table.CfiTable``) say how to find each frame's CFA and
where the return address and the caller's RBP are, with DWARF expressions kept
as bytes. ``bpf/cfi_walk.h`` cannot run expressions, so the forms real code uses
are recognized here and turned into fixed rules: ``DW_OP_bregN off`` (a CFA, or
RBP, at another register: the leaf, a signal context), ``DW_OP_bregN off;
DW_OP_deref [; DW_OP_plus_uconst k]`` (stack realignment: the CFA loaded from
the stack). Any other form becomes "unsupported", which the kernel steps by
frame pointer and counts; so does a return address saved anywhere but CFA-8.

The rows go into one inner array map per file: element 0 a directory (how many
shards and rows, and each shard's first address), then the rows, 1024 to an
element, sorted by address. Layouts come from the C headers
(``rover.bpf.contract``).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

from rover.bpf.contract import header
from rover.unwind.cfi import (
    CFA_EXPR,
    CFA_PLT,
    CFA_RBP,
    CFA_RSP,
    EXPR_RULE,
    MAX_EXPRESSIONS,
    NO_CFI,
    OUTERMOST,
    SAME_VALUE,
    SIGNAL_FRAME,
    UNKNOWN,
    VAL_EXPR_RULE,
)
from rover.unwind.cfi_table import CfiTable
from rover.unwind.leb128 import sleb, uleb

_C = header("cfi_walk.h")
SHARD_ROWS: int = _C.defines["SHARD_ROWS"]
MAX_SHARDS: int = _C.defines["DIR_ENTRIES"]
SHARD_BYTES = ctypes.sizeof(_C.structs["unwind_shard"])
ROW = np.dtype(_C.structs["unwind_row"])  # numpy reads the layout from the ctypes struct
_CFA = {name: value for name, value, _ in _C.enums["cfa_rule"]}
_RBP = {name: value for name, value, _ in _C.enums["rbp_rule"]}
_RSP_REG, _RBP_REG = _C.defines["REG_RSP"], _C.defines["REG_RBP"]
_S16 = (-(1 << 15), (1 << 15) - 1)
_S32 = (-(1 << 31), (1 << 31) - 1)
_MAX_PC = (1 << 32) - 1
_RA_OFFSET = -8  # where x86-64 code saves the return address: the only form walked


class TableTooLarge(Exception):
    """The file cannot be walked in the kernel (its frames use frame pointers)."""


@dataclass(frozen=True)
class Expression:
    """A recognized DWARF expression: ``register + offset``, optionally loaded from,
    then ``add`` added."""

    register: int
    offset: int
    deref: bool = False
    add: int = 0


def recognize(code: bytes) -> Expression | None:
    """``code`` as one of the forms the kernel evaluates, or None."""
    if not code or not 0x70 <= code[0] <= 0x8F:  # DW_OP_breg0..31
        return None
    register = code[0] - 0x70
    try:
        offset, pos = sleb(code, 1)
        if pos == len(code):
            return Expression(register, offset)
        if code[pos] != 0x06:  # DW_OP_deref
            return None
        pos += 1
        if pos == len(code):
            return Expression(register, offset, deref=True)
        if code[pos] != 0x23:  # DW_OP_plus_uconst
            return None
        add, pos = uleb(code, pos + 1)
    except IndexError:
        return None
    return Expression(register, offset, True, add) if pos == len(code) else None


def kernel_rows(table: CfiTable) -> np.ndarray:
    """``table``'s rows as ``struct unwind_row`` records (raises TableTooLarge)."""
    n = len(table.pcs)
    if n and int(table.pcs[-1]) > _MAX_PC:
        raise TableTooLarge(f"addresses above 4 GiB ({int(table.pcs[-1]):#x})")
    if (n + SHARD_ROWS - 1) // SHARD_ROWS > MAX_SHARDS:
        raise TableTooLarge(f"{n} rows, over the {MAX_SHARDS * SHARD_ROWS} a file may have")
    rows = np.zeros(n, dtype=ROW)
    rows["pc"] = table.pcs
    kinds = table.kinds.astype(np.int64)
    cfa = table.cfa_offsets.astype(np.int64)
    rule = np.full(n, _CFA["CFA_UNSUPPORTED"], dtype=np.uint8)
    reg = np.zeros(n, dtype=np.uint8)
    offset = np.zeros(n, dtype=np.int64)
    add = np.zeros(n, dtype=np.int64)
    for kind, register in ((CFA_RSP, _RSP_REG), (CFA_RBP, _RBP_REG)):
        chosen = kinds == kind
        rule[chosen], reg[chosen], offset[chosen] = _CFA["CFA_REG_OFFSET"], register, cfa[chosen]
    chosen = kinds == CFA_PLT
    rule[chosen], offset[chosen] = _CFA["CFA_PLT"], cfa[chosen]
    rule[kinds == NO_CFI] = _CFA["CFA_NONE"]
    rule[kinds == SIGNAL_FRAME] = _CFA["CFA_SIGNAL"]
    rule[kinds == OUTERMOST] = _CFA["CFA_OUTERMOST"]
    for index in np.unique(cfa[kinds == CFA_EXPR]).tolist():
        expression = recognize(table.expressions[index])
        if expression is None:
            continue
        chosen = (kinds == CFA_EXPR) & (cfa == index)
        rule[chosen] = _CFA["CFA_REG_DEREF" if expression.deref else "CFA_REG_OFFSET"]
        reg[chosen], offset[chosen], add[chosen] = (
            expression.register,
            expression.offset,
            expression.add,
        )
    walked = np.isin(rule, [_CFA["CFA_REG_OFFSET"], _CFA["CFA_REG_DEREF"], _CFA["CFA_PLT"]])
    fits = _within(offset, _S32) & _within(add, _S16)
    rule[walked & ((table.ra_offsets != _RA_OFFSET) | ~fits)] = _CFA["CFA_UNSUPPORTED"]
    rows["cfa_rule"], rows["cfa_reg"] = rule, reg
    rows["cfa_offset"] = np.where(fits, offset, 0)
    rows["cfa_add"] = np.where(fits, add, 0)
    _rbp_rules(table, rows)
    return rows


def _rbp_rules(table: CfiTable, rows: np.ndarray) -> None:
    rbp = table.rbp_offsets.astype(np.int64)
    rule = np.full(len(rbp), _RBP["RBP_UNKNOWN"], dtype=np.uint8)
    reg = np.zeros(len(rbp), dtype=np.uint8)
    offset = np.zeros(len(rbp), dtype=np.int64)
    saved = _within(rbp, _S16)
    rule[saved], offset[saved] = _RBP["RBP_AT_CFA"], rbp[saved]
    rule[rbp == SAME_VALUE] = _RBP["RBP_SAME"]
    rule[rbp == UNKNOWN] = _RBP["RBP_UNKNOWN"]
    for base, name in ((EXPR_RULE, "RBP_AT_REG"), (VAL_EXPR_RULE, "RBP_IS_REG")):
        in_range = (rbp >= base) & (rbp < base + MAX_EXPRESSIONS)
        for index in np.unique(rbp[in_range] - base).tolist():
            expression = recognize(table.expressions[index])
            if (
                expression is None
                or expression.deref
                or not _S16[0] <= expression.offset <= _S16[1]
            ):
                continue
            chosen = rbp == base + index
            rule[chosen], reg[chosen], offset[chosen] = (
                _RBP[name],
                expression.register,
                expression.offset,
            )
    rows["rbp_rule"], rows["rbp_reg"], rows["rbp_offset"] = rule, reg, offset


def _within(values: np.ndarray, bounds: tuple[int, int]) -> np.ndarray:
    return (values >= bounds[0]) & (values <= bounds[1])


def shard_elements(rows: np.ndarray) -> list[bytes]:
    """The inner map's elements: the directory, then the shards (each padded)."""
    shards = [rows[i : i + SHARD_ROWS] for i in range(0, len(rows), SHARD_ROWS)]
    directory = np.zeros(SHARD_BYTES // 4, dtype="<u4")
    directory[0], directory[1] = len(shards), len(rows)
    directory[2 : 2 + len(shards)] = [int(shard["pc"][0]) for shard in shards]
    elements = [directory.tobytes()]
    for shard in shards:
        padded = np.zeros(SHARD_ROWS, dtype=ROW)
        padded[: len(shard)] = shard
        elements.append(padded.tobytes())
    return elements


def kernel_bytes(rows: np.ndarray) -> int:
    """Kernel memory the file's inner map takes (its elements; the map's own overhead
    is small and fixed)."""
    return (1 + (len(rows) + SHARD_ROWS - 1) // SHARD_ROWS) * SHARD_BYTES
