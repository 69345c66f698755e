"""Unwinding one user stack from its registers and a copy of its top.

The BPF program sends the user RIP, RSP and RBP of a thread and a copy of the
stack from RSP upward (``stack``). Each step finds the CFI rule of the current
pc, computes the CFA, reads the return address (and the caller's RBP, when
this frame saved it) from the copy, and moves up. Rules given as DWARF
expressions (stack realignment, hand-written assembly) are evaluated by
``dwarf_expr.evaluate``, whose memory reads go through the same ``read``.
Frames without CFI (JIT code, anonymous mappings, files without tables, rules
that cannot be computed) are stepped with the frame pointer instead: the saved
RBP and return address at ``[rbp]`` and ``[rbp+8]``.

The result is leaf first, like ``RawStack.user``: the leaf's exact pc, then
return addresses. A frame interrupted by a signal has an exact pc too; it is
given as ``pc + 1`` so a symbolizer's ``address - 1`` for return addresses
lands on the interrupted instruction.

A signal handler running on an alternate signal stack (``sigaltstack``) cannot
be followed past the interrupted pc: the interrupted code's stack was not
copied. Such stacks end with that pc and a ``[sigaltstack]`` frame.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rover.unwind.cfi import (
    CFA_EXPR,
    CFA_PLT,
    CFA_RBP,
    CFA_RSP,
    EXPR_RULE,
    OUTERMOST,
    SAME_VALUE,
    SIGNAL_FRAME,
    UNKNOWN,
    VAL_EXPR_RULE,
)
from rover.unwind.cfi_table import CfiTable
from rover.unwind.dwarf_expr import Registers, evaluate
from rover.unwind.markers import SIGALTSTACK, TRUNCATED
from rover.unwind.process_space import ProcessSpace, ProcessSpaces

MAX_FRAMES = 127

# Where the kernel's rt_sigframe keeps the interrupted registers, from the RSP at
# __restore_rt (the handler's CFA): struct ucontext (uc_flags, uc_link, uc_stack: 40 bytes)
# then struct sigcontext (r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip).
_UC_RBP, _UC_RSP, _UC_RIP = 40 + 10 * 8, 40 + 15 * 8, 40 + 16 * 8
# The other general registers there, by DWARF number (rax=0 rdx rcx rbx rsi rdi, r8..r15).
_UC_OTHERS = {8 + i: 40 + i * 8 for i in range(8)}
_UC_OTHERS.update({5: 40 + 8 * 8, 4: 40 + 9 * 8, 3: 40 + 11 * 8, 1: 40 + 12 * 8,
                   0: 40 + 13 * 8, 2: 40 + 14 * 8})  # fmt: skip
# uc_stack (ss_sp, ss_flags, ss_size): the kernel saves the thread's sigaltstack there.
_UC_SS_SP, _UC_SS_SIZE = 16, 32
_OFFSET_KINDS = (CFA_RSP, CFA_RBP, CFA_PLT)
_RULE_KINDS = (CFA_RSP, CFA_RBP, CFA_PLT, CFA_EXPR)

_U64 = struct.Struct("<Q")

Read = Callable[[int], "int | None"]  # a stack word, None outside the copied window


class Status:
    """Why an unwind ended (each is a counter ``unwind_<status>``, except complete)."""

    COMPLETE = "complete"  # reached the outermost frame (or a zero return address)
    TRUNCATED = "truncated"  # the stack went on past the copied window: [truncated] added
    NO_STACK = "no_stack"  # the kernel could not copy the stack: the leaf alone
    NO_MAPS = "no_maps"  # the process's mappings were never readable
    UNMAPPED = "unmapped"  # a pc outside every executable mapping
    BAD_FRAME = "bad_frame"  # CFI or frame pointers led somewhere impossible
    DEPTH = "depth"  # MAX_FRAMES reached
    SIGALTSTACK = "sigaltstack"  # a handler on an alternate signal stack: [sigaltstack] added


@dataclass(slots=True)
class UnwindResult:
    addresses: tuple[int, ...]  # leaf first; may end with TRUNCATED
    status: str
    fp_frames: int = 0  # frames stepped by frame pointer (no CFI)
    signal_frames: int = 0


class Unwinder:
    """Unwinds samples of the processes known to ``spaces``."""

    def __init__(self, spaces: ProcessSpaces, max_frames: int = MAX_FRAMES) -> None:
        self.spaces = spaces
        self.max_frames = max_frames

    def unwind(
        self,
        pid: int,
        ip: int,
        sp: int,
        bp: int,
        stack: bytes,
        stack_copied: bool = True,
        registers: Sequence[int] = (),
    ) -> UnwindResult:
        """Unwind from ``ip``/``sp``/``bp`` and the stack copied from ``sp`` up.

        ``registers``: the leaf's general registers by DWARF number, when captured (a
        CFA at one of them is then computable in the leaf frame).
        """
        if not ip:
            return UnwindResult((), Status.NO_STACK)
        if not stack_copied:
            return UnwindResult((ip,), Status.NO_STACK)
        space = self.spaces.space(pid)
        if space is None:
            return UnwindResult((ip,), Status.NO_MAPS)
        leaf = Registers.of(registers) if registers else None
        return self._walk(pid, space, ip, sp, bp, stack, leaf)

    def _walk(
        self,
        pid: int,
        space: ProcessSpace,
        ip: int,
        sp: int,
        bp: int | None,
        stack: bytes,
        others: Registers | None,
    ) -> UnwindResult:
        base, top = sp, sp + len(stack)
        unpack = _U64.unpack_from
        out = [ip]
        pc, exact = ip, True
        fp_frames = signal_frames = 0
        module_at = self.spaces.module_at

        def read(address: int) -> int | None:
            if address < base or address + 8 > top:
                return None
            return unpack(stack, address - base)[0]

        def past_window(address: int) -> bool:
            return address + 8 > top

        status = Status.DEPTH
        while len(out) < self.max_frames:
            lookup = pc if exact else pc - 1
            module = module_at(pid, space, lookup)
            if module is None:
                status = Status.UNMAPPED
                break
            kind, cfa_offset, ra_offset, rbp_offset = module.rule(lookup)
            if kind == OUTERMOST:
                status = Status.COMPLETE
                break
            if kind == SIGNAL_FRAME:
                rip, rsp, rbp = read(sp + _UC_RIP), read(sp + _UC_RSP), read(sp + _UC_RBP)
                if rip is None or rsp is None or rbp is None:
                    status = Status.TRUNCATED if past_window(sp + _UC_RIP) else Status.BAD_FRAME
                    break
                altstack = not base <= rsp < top and _left_altstack(read, sp, rsp)
                if rsp <= sp and not altstack:  # not above the handler's frame
                    status = Status.BAD_FRAME
                    break
                signal_frames += 1
                if not rip:
                    status = Status.COMPLETE
                    break
                out.append(rip + 1)
                if altstack:  # the interrupted pc is known, its stack was not copied
                    status = Status.SIGALTSTACK
                    break
                others = Registers(functools.partial(_from_ucontext, read, sp))
                pc, exact, sp, bp = rip, True, rsp, rbp
                continue
            ra = None  # known here when an expression gave the value itself
            if kind in _OFFSET_KINDS and ra_offset < SAME_VALUE and rbp_offset <= UNKNOWN:
                if kind == CFA_RSP:
                    cfa = sp + cfa_offset
                elif kind == CFA_RBP:
                    if bp is None:
                        status = Status.BAD_FRAME
                        break
                    cfa = bp + cfa_offset
                else:  # PLT entry: 8, plus 8 once past the entry's push
                    cfa = sp + 8 + (8 if (pc & 15) >= cfa_offset else 0)
                ra_at = cfa + ra_offset
                if rbp_offset == SAME_VALUE:
                    caller_bp = bp
                elif rbp_offset == UNKNOWN:
                    caller_bp = None
                else:
                    caller_bp = read(cfa + rbp_offset)
                    if caller_bp is None and past_window(cfa + rbp_offset):
                        status = Status.TRUNCATED
                        break
                new_sp = cfa
            else:
                step = None
                if kind in _RULE_KINDS:  # a rule with an expression
                    rules = (kind, cfa_offset, ra_offset, rbp_offset)
                    step = _expression_step(
                        module.table, rules, pc, sp, bp, read, past_window, others
                    )
                    if isinstance(step, str):
                        status = step
                        break
                if isinstance(step, tuple):
                    ra, new_sp, caller_bp = step
                else:  # no CFI here, or a rule we cannot compute: frame pointers
                    if bp is None or bp < sp:
                        status = Status.BAD_FRAME
                        break
                    ra_at = bp + 8
                    caller_bp = read(bp)
                    if caller_bp is None:
                        status = Status.TRUNCATED if past_window(bp) else Status.BAD_FRAME
                        break
                    new_sp = bp + 16
                    fp_frames += 1
            if ra is None:
                ra = read(ra_at)
                if ra is None:
                    status = Status.TRUNCATED if past_window(ra_at) else Status.BAD_FRAME
                    break
            if ra == 0:
                status = Status.COMPLETE
                break
            if new_sp <= sp:  # the stack only grows down: anything else loops
                status = Status.BAD_FRAME
                break
            out.append(ra)
            pc, exact, sp, bp = ra, False, new_sp, caller_bp
            others = None  # a caller's other registers are not known
        if status == Status.TRUNCATED:
            out.append(TRUNCATED)
        elif status == Status.SIGALTSTACK:
            out.append(SIGALTSTACK)
        return UnwindResult(tuple(out), status, fp_frames, signal_frames)


def _from_ucontext(read: Read, sp: int, reg: int) -> int | None:
    """Register ``reg`` of the code a signal interrupted (``sp``: the handler's CFA)."""
    offset = _UC_OTHERS.get(reg)
    return None if offset is None else read(sp + offset)


def _left_altstack(read: Read, sp: int, rsp: int) -> bool:
    """Whether a handler whose frame is at ``sp`` ran on the alternate signal stack its
    ucontext records and the interrupted ``rsp`` lies off it (so it was not copied)."""
    ss_sp, ss_size = read(sp + _UC_SS_SP), read(sp + _UC_SS_SIZE)
    if not ss_sp or not ss_size:
        return False  # no alternate stack (or no ucontext to say so)
    return ss_sp <= sp < ss_sp + ss_size and not ss_sp <= rsp < ss_sp + ss_size


def _expression_step(
    table: CfiTable | None,
    rules: tuple[int, int, int, int],
    pc: int,
    sp: int,
    bp: int | None,
    read: Read,
    past_window: Callable[[int], bool],
    others: Registers | None,
) -> tuple[int, int, int | None] | str | None:
    """One frame whose rules include an expression: ``(return address, caller's sp,
    caller's bp)``, a status when a read failed, or None when the rules cannot be
    computed (the caller falls back to frame pointers)."""
    failed: list[int] = []  # addresses an expression could not read

    def deref(address: int) -> int | None:
        value = read(address)
        if value is None:
            failed.append(address)
        return value

    def read_failure() -> str | None:
        if not failed:
            return None
        return Status.TRUNCATED if past_window(failed[-1]) else Status.BAD_FRAME

    kind, cfa_offset, ra_rule, rbp_rule = rules
    expressions = table.expressions if table is not None else ()
    if kind == CFA_EXPR:
        expression = _expression(expressions, cfa_offset)
        cfa = None if expression is None else evaluate(expression, sp, bp, pc, deref, None, others)
    elif kind == CFA_RSP:
        cfa = sp + cfa_offset
    elif kind == CFA_RBP:
        if bp is None:
            return Status.BAD_FRAME
        cfa = bp + cfa_offset
    else:  # PLT entry
        cfa = sp + 8 + (8 if (pc & 15) >= cfa_offset else 0)
    if cfa is None:
        return read_failure()
    caller_bp = _register(expressions, rbp_rule, cfa, pc, sp, bp, deref, bp, others)
    if caller_bp is None and failed and past_window(failed[-1]):
        return Status.TRUNCATED
    failed.clear()  # a saved RBP that cannot be read is only unknown
    ra = _register(expressions, ra_rule, cfa, pc, sp, bp, deref, None, others)
    if ra is None:
        return read_failure()
    return ra, cfa, caller_bp


def _register(
    expressions: tuple[bytes, ...],
    rule: int,
    cfa: int,
    pc: int,
    sp: int,
    bp: int | None,
    read: Read,
    same: int | None,
    others: Registers | None,
) -> int | None:
    """The caller's value of a register under ``rule`` (``same``: its value now)."""
    if rule < SAME_VALUE:
        return read(cfa + rule)
    if rule == SAME_VALUE:
        return same
    if rule >= VAL_EXPR_RULE:
        expression = _expression(expressions, rule - VAL_EXPR_RULE)
        if expression is None:
            return None
        return evaluate(expression, sp, bp, pc, read, cfa, others)
    if rule >= EXPR_RULE:
        expression = _expression(expressions, rule - EXPR_RULE)
        if expression is None:
            return None
        address = evaluate(expression, sp, bp, pc, read, cfa, others)
        return None if address is None else read(address)
    return None  # UNKNOWN


def _expression(expressions: tuple[bytes, ...], index: int) -> bytes | None:
    return expressions[index] if 0 <= index < len(expressions) else None
