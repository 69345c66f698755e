"""Decoding DWARF call frame information (``.eh_frame``, ``.debug_frame``) into rows.

Only what an x86-64 unwinder needs is kept: for each address range, how to
find the CFA (from RSP or RBP plus an offset, or a DWARF expression), where the
return address and the caller's RBP were saved (offsets from the CFA, or
expressions), and whether the frame is a signal frame. Other registers' rules
are read and dropped.

Expressions are rare but repeat (one realigning function after another has
the same two), so each distinct expression's bytes are stored once per file,
in ``CfiRows.expressions``, and rows refer to them by index: the CFA column of
a ``CFA_EXPR`` row, and ``EXPR_RULE + i`` / ``VAL_EXPR_RULE + i`` in the
register columns. ``DW_CFA_val_offset`` and ``DW_CFA_register`` become
synthesized value expressions, and a CFA at a register other than RSP or RBP
the expression ``DW_OP_bregN offset``; see ``dwarf_expr.py``.

This is a hand-written decoder rather than pyelftools' ``get_decoded()``:
pyelftools builds several Python objects per instruction and per row (minutes
for libLLVM) and rejects opcodes real libraries use (``DW_CFA_GNU_args_size``
in Debian's libc). The output is checked against ``readelf --debug-dump=frames-interp``
in the tests. FDEs whose instruction bytes repeat (most of them in C++ code)
are decoded once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rover.unwind.leb128 import sleb as _sleb
from rover.unwind.leb128 import uleb as _uleb

# Row kinds: how the CFA of a frame is found.
CFA_RSP = 0  # CFA = RSP + cfa_offset
CFA_RBP = 1  # CFA = RBP + cfa_offset
CFA_UNSUPPORTED = 2  # not computable (a vector register, or too many expressions)
NO_CFI = 3  # no FDE covers the address
SIGNAL_FRAME = 4  # a sigreturn trampoline (CIE augmentation "S"): registers are in a ucontext
OUTERMOST = 5  # the return address is undefined: the first frame of a thread
CFA_PLT = 6  # the lazy-binding PLT expression: RSP + 8, + 8 more past byte cfa_offset of 16
CFA_EXPR = 7  # CFA = the value of expression number cfa_offset

# Offsets from the CFA that mean "not saved in this frame".
SAME_VALUE = 1 << 30  # the register still holds the caller's value
UNKNOWN = (1 << 30) + 1  # saved somewhere we cannot follow (another register)
# Register rules by expression number i (within int32, far above any offset):
EXPR_RULE = 0x5000_0000  # EXPR_RULE + i: saved at the address expression i computes
VAL_EXPR_RULE = 0x6000_0000  # VAL_EXPR_RULE + i: the value is what expression i computes
MAX_EXPRESSIONS = 0x1000_0000

_RSP, _RBP, _RA = 7, 6, 16

# The PLT CFA expression gcc/ld emit: DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and;
# DW_OP_lit<N>; DW_OP_ge; DW_OP_lit3; DW_OP_shl; DW_OP_plus  (N = 11 or 10).
_PLT_PREFIX = bytes([0x77, 0x08, 0x80, 0x00, 0x3F, 0x1A])
_PLT_SUFFIX = bytes([0x2A, 0x33, 0x24, 0x22])


class CfiRows(list):
    """``decode_rows``' rows, with the distinct expression bytes their rules refer to."""

    __slots__ = ("expressions",)

    def __init__(self) -> None:
        super().__init__()
        self.expressions: tuple[bytes, ...] = ()


class CfiError(Exception):
    """The section is malformed; rows decoded before the error are still usable."""


@dataclass(frozen=True, slots=True)
class Row:
    """One rule set, in effect from ``pc`` up to the next row's pc."""

    pc: int
    kind: int
    cfa_offset: int
    ra_offset: int
    rbp_offset: int


@dataclass(slots=True)
class _Cie:
    code_align: int
    data_align: int
    ra_register: int
    fde_encoding: int
    has_augmentation_data: bool
    signal: bool
    initial: bytes
    address_size: int


# One rule state: (kind, cfa_offset, ra_offset, rbp_offset).
_State = tuple[int, int, int, int]


def decode_rows(
    data: bytes, section_addr: int, is_eh_frame: bool, errors: list[str] | None = None
) -> CfiRows:
    """Every row of every FDE in a CFI section, as ``(pc, fde_end, state)``.

    A state holds from its ``pc`` to the next row of the same FDE, and the FDE
    ends at ``fde_end``. Malformed entries are skipped (their reasons appended
    to ``errors``); a malformed length ends the walk (nothing after it can be
    located). ``section_addr`` is the section's virtual address (for
    pc-relative pointers). The expressions rows refer to are in
    ``.expressions`` of the result.
    """
    out = CfiRows()
    cies: dict[int, _Cie | None] = {}
    memo: dict[tuple[int, bytes], list[tuple[int, _State]]] = {}
    expressions: dict[bytes, int] = {}
    pos, size = 0, len(data)
    while pos + 4 <= size:
        start = pos
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 4
        offset_size = 4
        if length == 0xFFFFFFFF:
            if pos + 8 > size:
                _note(errors, f"truncated 64-bit length at {start:#x}")
                break
            (length,) = struct.unpack_from("<Q", data, pos)
            pos += 8
            offset_size = 8
        if length == 0:
            if is_eh_frame:
                break  # the terminator
            pos = start + 4
            continue
        end = pos + length
        if end > size:
            _note(errors, f"entry at {start:#x} runs past the section end")
            break
        id_pos = pos
        fmt = "<I" if offset_size == 4 else "<Q"
        (cie_id,) = struct.unpack_from(fmt, data, pos)
        pos += offset_size
        is_cie = (
            cie_id == 0
            if is_eh_frame
            else cie_id == (0xFFFFFFFF if offset_size == 4 else -1 & 0xFFFFFFFFFFFFFFFF)
        )
        try:
            if is_cie:
                cies[start] = _parse_cie(data, pos, end)
            else:
                cie_at = id_pos - cie_id if is_eh_frame else cie_id
                if cie_at not in cies:
                    cies[cie_at] = _cie_at(data, cie_at, is_eh_frame)
                cie = cies[cie_at]
                if cie is None:
                    raise CfiError(f"FDE at {start:#x} refers to a bad CIE at {cie_at:#x}")
                _decode_fde(
                    data, pos, end, section_addr, is_eh_frame, cie, cie_at, memo, expressions, out
                )
        except (CfiError, struct.error, IndexError) as exc:
            _note(errors, f"entry at {start:#x}: {exc}")
            if is_cie:
                cies[start] = None
        pos = end
    out.expressions = tuple(expressions)
    return out


def _note(errors: list[str] | None, message: str) -> None:
    if errors is not None and len(errors) < 20:
        errors.append(message)


def _cie_at(data: bytes, at: int, is_eh_frame: bool) -> _Cie | None:
    """A CIE reached from an FDE before (or without) the walk passing it."""
    try:
        (length,) = struct.unpack_from("<I", data, at)
        pos = at + 4
        offset_size = 4
        if length == 0xFFFFFFFF:
            (length,) = struct.unpack_from("<Q", data, pos)
            pos += 8
            offset_size = 8
        end = pos + length
        if length == 0 or end > len(data):
            return None
        return _parse_cie(data, pos + offset_size, end)
    except (CfiError, struct.error, IndexError):
        return None


def _parse_cie(data: bytes, pos: int, end: int) -> _Cie:
    version = data[pos]
    pos += 1
    if version not in (1, 3, 4):
        raise CfiError(f"CIE version {version}")
    aug_end = data.index(b"\0", pos, end)
    augmentation = data[pos:aug_end].decode("ascii", "replace")
    pos = aug_end + 1
    if "eh" in augmentation:
        pos += 8
    address_size = 8
    if version == 4:
        address_size = data[pos]
        pos += 2  # address size, segment selector size
    code_align, pos = _uleb(data, pos)
    data_align, pos = _sleb(data, pos)
    if version == 1:
        ra_register = data[pos]
        pos += 1
    else:
        ra_register, pos = _uleb(data, pos)
    fde_encoding = 0  # DW_EH_PE_absptr
    signal = False
    has_aug_data = augmentation.startswith("z")
    if has_aug_data:
        aug_len, pos = _uleb(data, pos)
        aug_data_end = pos + aug_len
        for ch in augmentation[1:]:
            if ch == "R":
                fde_encoding = data[pos]
                pos += 1
            elif ch == "L":
                pos += 1
            elif ch == "P":
                encoding = data[pos]
                _, pos = _encoded(data, pos + 1, encoding, 0, 0)
            elif ch == "S":
                signal = True
            elif ch == "B":
                pass
            else:
                break  # unknown: the length lets us skip the rest
        pos = aug_data_end
    elif augmentation not in ("", "S"):
        raise CfiError(f"unsupported CIE augmentation {augmentation!r}")
    else:
        signal = augmentation == "S"
    if pos > end:
        raise CfiError("CIE runs past its length")
    return _Cie(
        code_align, data_align, ra_register, fde_encoding, has_aug_data, signal,
        bytes(data[pos:end]), address_size,
    )  # fmt: skip


def _decode_fde(
    data: bytes,
    pos: int,
    end: int,
    section_addr: int,
    is_eh_frame: bool,
    cie: _Cie,
    cie_at: int,
    memo: dict[tuple[int, bytes], list[tuple[int, _State]]],
    expressions: dict[bytes, int],
    out: list[tuple[int, int, _State]],
) -> None:
    encoding = cie.fde_encoding if is_eh_frame else 0
    pc_begin, pos = _encoded(data, pos, encoding, section_addr, cie.address_size)
    pc_range, pos = _encoded(data, pos, encoding & 0x0F, 0, cie.address_size)
    if cie.has_augmentation_data:
        aug_len, pos = _uleb(data, pos)
        pos += aug_len
    if pos > end:
        raise CfiError("FDE runs past its length")
    if pc_begin == 0 or pc_range == 0:
        return  # discarded by the linker (a zeroed FDE of a removed function)
    instructions = bytes(data[pos:end])
    key = (cie_at, instructions)
    rows = memo.get(key)
    if rows is None:
        rows = _execute(cie, instructions, expressions)
        memo[key] = rows
    pc_end = pc_begin + pc_range
    for delta, state in rows:
        if delta < pc_range:
            out.append((pc_begin + delta, pc_end, state))


def _execute(cie: _Cie, instructions: bytes, expressions: dict[bytes, int]):
    """Run the CIE's initial and the FDE's instructions: ``[(pc delta, state), ...]``."""
    if cie.signal:  # a sigreturn trampoline: its registers are read from the ucontext
        return [(0, _SIGNAL_STATE)]
    state = _Machine(cie, expressions)
    state.run(cie.initial, initial=True)
    state.initial_rules = (state.rbp, state.ra)
    state.rows = []
    state.run(instructions, initial=False)
    state.emit()
    return state.rows


class _Machine:
    """The CFA rule machine, tracking the CFA and the rules of RBP and the return address."""

    __slots__ = (
        "cie", "loc", "cfa_reg", "cfa_off", "cfa_kind", "cfa_expr", "rbp", "ra", "stack",
        "rows", "initial_rules", "expressions",
    )  # fmt: skip

    def __init__(self, cie: _Cie, expressions: dict[bytes, int]) -> None:
        self.cie = cie
        self.expressions = expressions  # shared by the whole section: bytes -> index
        self.loc = 0
        self.cfa_reg = _RSP
        self.cfa_off = 0
        self.cfa_kind = CFA_RSP
        # CFA_PLT's byte or CFA_EXPR's index; apart from cfa_off, which a (misplaced)
        # DW_CFA_def_cfa_offset may change under an expression without effect.
        self.cfa_expr = 0
        self.rbp = SAME_VALUE
        self.ra = UNKNOWN
        self.stack: list[tuple] = []
        self.rows: list[tuple[int, _State]] = []
        self.initial_rules = (SAME_VALUE, UNKNOWN)

    def emit(self) -> None:
        """Close the row at ``loc`` (the state computed inline: this runs once per row)."""
        kind = self.cfa_kind
        if self.ra == OUTERMOST_RULE:
            state: _State = (OUTERMOST, 0, 0, UNKNOWN)
        elif kind != CFA_RSP:
            state = (kind, self.cfa_expr, self.ra, self.rbp)
        elif self.cfa_reg == _RSP:
            state = (CFA_RSP, self.cfa_off, self.ra, self.rbp)
        elif self.cfa_reg == _RBP:
            state = (CFA_RBP, self.cfa_off, self.ra, self.rbp)
        else:  # another register (a leaf's, or hand-written assembly): DW_OP_bregN off
            state = (*self.register_cfa(), self.ra, self.rbp)
        rows = self.rows
        if rows and rows[-1][0] == self.loc:
            rows[-1] = (self.loc, state)
        elif not rows or rows[-1][1] != state:
            rows.append((self.loc, state))

    def advance(self, delta: int) -> None:
        if delta:
            self.emit()
            self.loc += delta

    def set_rule(self, reg: int, rule: int) -> None:
        if reg == _RBP:
            self.rbp = rule
        elif reg == self.cie.ra_register:
            self.ra = rule

    def set_offset(self, reg: int, offset: int) -> None:
        """Saved at CFA + ``offset``; a huge (corrupt) offset would read as another rule."""
        if not -0x2000_0000 < offset < 0x2000_0000:  # a literal: this is a hot path
            offset = UNKNOWN
        if reg == _RBP:
            self.rbp = offset
        elif reg == self.cie.ra_register:
            self.ra = offset

    def tracks(self, reg: int) -> bool:
        return reg == _RBP or reg == self.cie.ra_register

    def intern(self, expression: bytes) -> int | None:
        """The index of ``expression`` in the section's expressions (None: too many)."""
        index = self.expressions.get(expression)
        if index is None:
            index = len(self.expressions)
            if index >= MAX_EXPRESSIONS:
                return None
            self.expressions[expression] = index
        return index

    def set_expression_rule(self, reg: int, base: int, expression: bytes) -> None:
        """``reg`` saved at (EXPR_RULE) or equal to (VAL_EXPR_RULE) ``expression``'s value."""
        if self.tracks(reg):
            index = self.intern(expression)
            self.set_rule(reg, UNKNOWN if index is None else base + index)

    def register_cfa(self) -> tuple[int, int]:
        """(kind, value) of a CFA at another register plus the offset, as an expression:
        only the sample's own registers know it (see the unwinder)."""
        if self.cfa_reg > _RA:
            return CFA_UNSUPPORTED, 0
        index = self.intern(bytes((0x70 + self.cfa_reg, *_sleb_bytes(self.cfa_off))))
        return (CFA_UNSUPPORTED, 0) if index is None else (CFA_EXPR, index)

    def set_cfa_expression(self, expression: bytes) -> None:
        kind, value = _cfa_expression(expression)
        if kind == CFA_EXPR:
            index = self.intern(expression)
            kind, value = (CFA_UNSUPPORTED, 0) if index is None else (CFA_EXPR, index)
        self.cfa_kind, self.cfa_expr = kind, value

    def run(self, code: bytes, initial: bool) -> None:
        cie = self.cie
        data_align = cie.data_align
        pos, n = 0, len(code)
        while pos < n:
            op = code[pos]
            pos += 1
            high = op & 0xC0
            if high == 0x40:  # advance_loc
                self.advance((op & 0x3F) * cie.code_align)
            elif high == 0x80:  # offset
                off, pos = _uleb(code, pos)
                self.set_offset(op & 0x3F, off * data_align)
            elif high == 0xC0:  # restore
                self.restore(op & 0x3F)
            elif op == 0x00:  # nop
                pass
            elif op == 0x0E:  # def_cfa_offset
                self.cfa_off, pos = _uleb(code, pos)
            elif op == 0x0C:  # def_cfa
                self.cfa_reg, pos = _uleb(code, pos)
                self.cfa_off, pos = _uleb(code, pos)
                self.cfa_kind = CFA_RSP
            elif op == 0x0D:  # def_cfa_register
                self.cfa_reg, pos = _uleb(code, pos)
                self.cfa_kind = CFA_RSP
            elif op == 0x02:  # advance_loc1
                self.advance(code[pos] * cie.code_align)
                pos += 1
            elif op == 0x03:  # advance_loc2
                self.advance(struct.unpack_from("<H", code, pos)[0] * cie.code_align)
                pos += 2
            elif op == 0x04:  # advance_loc4
                self.advance(struct.unpack_from("<I", code, pos)[0] * cie.code_align)
                pos += 4
            elif op == 0x0A:  # remember_state
                self.stack.append(
                    (self.cfa_reg, self.cfa_off, self.cfa_kind, self.cfa_expr, self.rbp, self.ra)
                )
            elif op == 0x0B:  # restore_state
                if not self.stack:
                    raise CfiError("DW_CFA_restore_state without remember_state")
                (self.cfa_reg, self.cfa_off, self.cfa_kind, self.cfa_expr, self.rbp, self.ra) = (
                    self.stack.pop()
                )
            elif op == 0x2E:  # GNU_args_size
                _, pos = _uleb(code, pos)
            elif op == 0x05:  # offset_extended
                reg, pos = _uleb(code, pos)
                off, pos = _uleb(code, pos)
                self.set_offset(reg, off * data_align)
            elif op == 0x11:  # offset_extended_sf
                reg, pos = _uleb(code, pos)
                off, pos = _sleb(code, pos)
                self.set_offset(reg, off * data_align)
            elif op == 0x2F:  # GNU_negative_offset_extended
                reg, pos = _uleb(code, pos)
                off, pos = _uleb(code, pos)
                self.set_offset(reg, -off * data_align)
            elif op == 0x06:  # restore_extended
                reg, pos = _uleb(code, pos)
                self.restore(reg)
            elif op == 0x07:  # undefined
                reg, pos = _uleb(code, pos)
                self.set_rule(reg, OUTERMOST_RULE if reg == cie.ra_register else UNKNOWN)
            elif op == 0x08:  # same_value
                reg, pos = _uleb(code, pos)
                self.set_rule(reg, SAME_VALUE)
            elif op == 0x09:  # register: held in another general register (or RIP)
                reg, pos = _uleb(code, pos)
                held_in, pos = _uleb(code, pos)
                if held_in <= _RA:  # as the value expression DW_OP_bregN 0
                    self.set_expression_rule(reg, VAL_EXPR_RULE, bytes((0x70 + held_in, 0)))
                else:
                    self.set_rule(reg, UNKNOWN)
            elif op == 0x12:  # def_cfa_sf
                self.cfa_reg, pos = _uleb(code, pos)
                off, pos = _sleb(code, pos)
                self.cfa_off = off * data_align
                self.cfa_kind = CFA_RSP
            elif op == 0x13:  # def_cfa_offset_sf
                off, pos = _sleb(code, pos)
                self.cfa_off = off * data_align
            elif op == 0x0F:  # def_cfa_expression
                length, pos = _uleb(code, pos)
                expression = code[pos : pos + length]
                pos += length
                if pos <= n:
                    self.set_cfa_expression(expression)
            elif op in (0x10, 0x16):  # expression, val_expression
                reg, pos = _uleb(code, pos)
                length, pos = _uleb(code, pos)
                expression = code[pos : pos + length]
                pos += length
                if pos <= n:
                    base = EXPR_RULE if op == 0x10 else VAL_EXPR_RULE
                    self.set_expression_rule(reg, base, expression)
            elif op in (0x14, 0x15):  # val_offset, val_offset_sf: CFA + offset
                reg, pos = _uleb(code, pos)
                off, pos = (_uleb if op == 0x14 else _sleb)(code, pos)
                if self.tracks(reg):  # as DW_OP_consts off; DW_OP_plus (the CFA pushed first)
                    expression = bytes((0x11, *_sleb_bytes(off * data_align), 0x22))
                    self.set_expression_rule(reg, VAL_EXPR_RULE, expression)
            elif op == 0x01:  # set_loc: absolute addresses are rare in .eh_frame; stop here
                raise CfiError("DW_CFA_set_loc is not supported")
            else:
                raise CfiError(f"unknown CFA opcode {op:#x}")
            if pos > n:
                raise CfiError("instruction runs past the entry")

    def restore(self, reg: int) -> None:
        rbp, ra = self.initial_rules
        if reg == _RBP:
            self.rbp = rbp
        elif reg == self.cie.ra_register:
            self.ra = ra


OUTERMOST_RULE = UNKNOWN + 1  # internal: DW_CFA_undefined on the return address
_SIGNAL_STATE: _State = (SIGNAL_FRAME, 0, 0, UNKNOWN)


def _cfa_expression(expression: bytes) -> tuple[int, int]:
    """The PLT expression has its fast path; every other expression is evaluated."""
    if (
        len(expression) == 11
        and expression.startswith(_PLT_PREFIX)
        and expression.endswith(_PLT_SUFFIX)
        and 0x30 <= expression[6] <= 0x4F  # DW_OP_lit0..lit31
    ):
        return CFA_PLT, expression[6] - 0x30
    return (CFA_EXPR, 0) if expression else (CFA_UNSUPPORTED, 0)


def _sleb_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


_FIXED = {0x02: "<H", 0x03: "<I", 0x04: "<Q", 0x0A: "<h", 0x0B: "<i", 0x0C: "<q"}


def _encoded(data: bytes, pos: int, encoding: int, section_addr: int, address_size: int):
    """A DW_EH_PE-encoded pointer at ``pos``: ``(value, next pos)``."""
    if encoding == 0xFF:
        return 0, pos
    start = pos
    fmt = encoding & 0x0F
    if fmt == 0x00:
        size_fmt = "<Q" if address_size == 8 else "<I"
        (value,) = struct.unpack_from(size_fmt, data, pos)
        pos += struct.calcsize(size_fmt)
    elif fmt == 0x01:
        value, pos = _uleb(data, pos)
    elif fmt == 0x09:
        value, pos = _sleb(data, pos)
    elif fmt in _FIXED:
        (value,) = struct.unpack_from(_FIXED[fmt], data, pos)
        pos += struct.calcsize(_FIXED[fmt])
    else:
        raise CfiError(f"pointer encoding {encoding:#x}")
    application = encoding & 0x70
    if application == 0x10:  # pcrel
        value += section_addr + start
    elif application not in (0x00,):
        raise CfiError(f"pointer encoding {encoding:#x}")
    return value & 0xFFFFFFFFFFFFFFFF, pos
