"""A DWARF expression evaluator for the call frame rules x86-64 code really uses.

CFI expressions compute a CFA (``DW_CFA_def_cfa_expression``), the address a
register was saved at (``DW_CFA_expression``) or a register's value
(``DW_CFA_val_expression``). Compilers emit a handful of shapes: stack
realignment (``DW_OP_breg6 -8; DW_OP_deref``), OpenSSL-style saved stack
pointers (``DW_OP_breg7 N; DW_OP_deref; DW_OP_plus_uconst 8``), the PLT
expression, and aligned save slots (``DW_OP_lit8; DW_OP_minus; DW_OP_const4s
-32; DW_OP_and; ...``), and a CFA at a register (``DW_OP_breg0 8`` for
``rax+8`` in OpenSSL's assembly). RSP, RBP and RIP are known in every frame;
the other general registers only in the frame whose registers were captured
(the sample's leaf, or the one a signal interrupted): :class:`Registers`.

The bytes come from files we do not trust: every failure (an unknown opcode
or register, a stack underflow or overflow, a branch out of the expression,
division by zero, too many steps, a memory read that fails) returns None,
never raises. Memory is read only through the caller's ``read`` function, so
the unwinder sees (and records) every word an expression reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from rover.unwind.leb128 import sleb, uleb

MAX_STEPS = 64  # operations executed per evaluation (branches can loop)
MAX_DEPTH = 64  # stack entries

_MASK = (1 << 64) - 1
_SIGN = 1 << 63
_RSP, _RBP, _RIP = 7, 6, 16

# Fixed-size constants: opcode -> (struct format, size).
_CONSTS = {
    0x08: ("<B", 1),  # const1u
    0x09: ("<b", 1),  # const1s
    0x0A: ("<H", 2),  # const2u
    0x0B: ("<h", 2),  # const2s
    0x0C: ("<I", 4),  # const4u
    0x0D: ("<i", 4),  # const4s
    0x0E: ("<Q", 8),  # const8u
    0x0F: ("<q", 8),  # const8s
}


class _Invalid(Exception):
    """An operand no valid expression has (a LEB128 number over 64 bits)."""


def _signed(value: int) -> int:
    return value - (1 << 64) if value & _SIGN else value


def _binary(op: int, a: int, b: int) -> int | None:
    """``a op b`` on 64-bit stack values (``b`` was on top); None for division by zero."""
    if op == 0x22:  # plus
        return (a + b) & _MASK
    if op == 0x1C:  # minus
        return (a - b) & _MASK
    if op == 0x1A:  # and
        return a & b
    if op == 0x21:  # or
        return a | b
    if op == 0x27:  # xor
        return a ^ b
    if op == 0x1E:  # mul
        return (a * b) & _MASK
    if op == 0x24:  # shl
        return (a << b) & _MASK if b < 64 else 0
    if op == 0x25:  # shr
        return a >> b if b < 64 else 0
    if op == 0x26:  # shra
        return (_signed(a) >> min(b, 63)) & _MASK
    if op == 0x1B:  # div: signed, truncating toward zero like C
        if b == 0:
            return None
        sa, sb = _signed(a), _signed(b)
        quotient = abs(sa) // abs(sb)
        return (quotient if (sa < 0) == (sb < 0) else -quotient) & _MASK
    if op == 0x1D:  # mod: unsigned (as libgcc's unwinder does)
        return None if b == 0 else a % b
    sa, sb = _signed(a), _signed(b)  # comparisons are signed
    if op == 0x29:
        return int(sa == sb)
    if op == 0x2A:
        return int(sa >= sb)
    if op == 0x2B:
        return int(sa > sb)
    if op == 0x2C:
        return int(sa <= sb)
    if op == 0x2D:
        return int(sa < sb)
    return int(sa != sb)  # 0x2E ne


_BINARY_OPS = frozenset((0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27))
_BINARY_OPS |= frozenset(range(0x29, 0x2F))


class Registers:
    """A frame's other general registers (DWARF numbers 0-5, 8-15)."""

    __slots__ = ("_value_of",)

    def __init__(self, value_of: Callable[[int], int | None]) -> None:
        self._value_of = value_of  # e.g. a read of the signal context: only when needed

    @classmethod
    def of(cls, values: Sequence[int]) -> Registers:
        """From all general registers by DWARF number (``values[n]`` is register n)."""
        return cls(values.__getitem__)

    def get(self, reg: int) -> int | None:
        if reg > 15 or reg in (6, 7):  # not a general register, or RSP/RBP (known anyway)
            return None
        return self._value_of(reg)


def evaluate(
    expression: bytes,
    rsp: int,
    rbp: int | None,
    rip: int,
    read: Callable[[int], int | None],
    initial: int | None = None,
    others: Registers | None = None,
) -> int | None:
    """The value ``expression`` leaves on top of its stack, or None if it fails.

    ``rsp``, ``rbp`` (None: not known) and ``rip`` are the frame's registers, and
    ``others`` the rest when they are known; ``read(address)`` returns the 8-byte
    word there or None. ``initial`` is pushed first (the CFA, for register rules:
    DWARF 5 section 6.4.2).
    """
    try:
        return _run(expression, (rsp, rbp, rip, others), read, initial)
    except (IndexError, struct.error, _Invalid):  # an operand runs past the end, or is huge
        return None


def _run(
    code: bytes,
    regs: tuple[int, int | None, int, Registers | None],
    read: Callable[[int], int | None],
    initial: int | None,
) -> int | None:
    stack: list[int] = [] if initial is None else [initial & _MASK]
    pos, end, steps = 0, len(code), 0
    while pos < end:
        steps += 1
        if steps > MAX_STEPS or len(stack) > MAX_DEPTH:
            return None
        op = code[pos]
        pos += 1
        if 0x30 <= op <= 0x4F:  # lit0..lit31
            stack.append(op - 0x30)
        elif 0x70 <= op <= 0x8F or op == 0x92:  # breg0..breg31, bregx
            if op == 0x92:
                reg, pos = _uleb(code, pos)
            else:
                reg = op - 0x70
            offset, pos = _sleb(code, pos)
            value = _register(regs, reg)
            if value is None:
                return None
            stack.append((value + offset) & _MASK)
        elif op in _BINARY_OPS:
            if len(stack) < 2:
                return None
            b = stack.pop()
            result = _binary(op, stack.pop(), b)
            if result is None:
                return None
            stack.append(result)
        elif op == 0x06 or op == 0x94:  # deref, deref_size
            size = 8
            if op == 0x94:
                size = code[pos]
                pos += 1
                if size not in (1, 2, 4, 8):
                    return None
            if not stack:
                return None
            value = read(stack.pop())
            if value is None:
                return None
            stack.append(value & ((1 << (8 * size)) - 1))
        elif op == 0x23:  # plus_uconst
            addend, pos = _uleb(code, pos)
            if not stack:
                return None
            stack.append((stack.pop() + addend) & _MASK)
        elif op in _CONSTS:
            fmt, size = _CONSTS[op]
            stack.append(struct.unpack_from(fmt, code, pos)[0] & _MASK)
            pos += size
        elif op == 0x10 or op == 0x11:  # constu, consts
            value, pos = (_uleb if op == 0x10 else _sleb)(code, pos)
            stack.append(value & _MASK)
        elif op == 0x2F or op == 0x28:  # skip, bra
            (delta,) = struct.unpack_from("<h", code, pos)
            pos += 2
            if op == 0x28:
                if not stack:
                    return None
                if stack.pop() == 0:
                    continue
            pos += delta
            if not 0 <= pos <= end:
                return None
        elif op == 0x15:  # pick
            index = code[pos]
            pos += 1
            if index >= len(stack):
                return None
            stack.append(stack[-1 - index])
        elif op != 0x96 and not _stack_op(op, stack):  # 0x96: nop
            return None
    return stack[-1] if stack else None


# Stack and unary operations: opcode -> entries they need.
_NEEDED = {0x12: 1, 0x13: 1, 0x14: 2, 0x16: 2, 0x17: 3, 0x19: 1, 0x1F: 1, 0x20: 1}


def _stack_op(op: int, stack: list[int]) -> bool:
    """A stack or unary operation, in place; False for an underflow or an unknown opcode."""
    needed = _NEEDED.get(op)
    if needed is None or len(stack) < needed:
        return False  # an unknown opcode (DW_OP_addr, DW_OP_regN, ...) or an underflow
    if op == 0x12:  # dup
        stack.append(stack[-1])
    elif op == 0x13:  # drop
        stack.pop()
    elif op == 0x14:  # over
        stack.append(stack[-2])
    elif op == 0x16:  # swap
        stack[-1], stack[-2] = stack[-2], stack[-1]
    elif op == 0x17:  # rot: the top entry goes third, the others move up
        stack[-3], stack[-2], stack[-1] = stack[-1], stack[-3], stack[-2]
    elif op == 0x19:  # abs
        stack[-1] = abs(_signed(stack[-1])) & _MASK
    elif op == 0x1F:  # neg
        stack[-1] = -stack[-1] & _MASK
    else:  # 0x20 not
        stack[-1] = ~stack[-1] & _MASK
    return True


def _register(regs: tuple[int, int | None, int, Registers | None], reg: int) -> int | None:
    if reg == _RSP:
        return regs[0]
    if reg == _RBP:
        return regs[1]
    if reg == _RIP:
        return regs[2]
    others = regs[3]
    return None if others is None else others.get(reg)


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = uleb(data, pos)
    if value >> 64:
        raise _Invalid
    return value, pos


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = sleb(data, pos)
    if not -(1 << 63) <= value < 1 << 64:
        raise _Invalid
    return value, pos
