"""Unwinding one user stack from its registers and a copy of its top.

The BPF program sends the user RIP, RSP and RBP of a thread and a copy of the
stack from RSP upward (``stack``). Each step finds the CFI rule of the current
pc, computes the CFA, reads the return address (and the caller's RBP, when
this frame saved it) from the copy, and moves up. Frames without CFI (JIT
code, anonymous mappings, files without tables) are stepped with the frame
pointer instead: the saved RBP and return address at ``[rbp]`` and ``[rbp+8]``.

The result is leaf first, like ``RawStack.user``: the leaf's exact pc, then
return addresses. A frame interrupted by a signal has an exact pc too; it is
given as ``pc + 1`` so a symbolizer's ``address - 1`` for return addresses
lands on the interrupted instruction.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from rover.unwind.cfi import (
    CFA_PLT,
    CFA_RBP,
    CFA_RSP,
    OUTERMOST,
    SAME_VALUE,
    SIGNAL_FRAME,
    UNKNOWN,
)
from rover.unwind.markers import TRUNCATED
from rover.unwind.process_space import ProcessSpace, ProcessSpaces

MAX_FRAMES = 127

# Where the kernel's rt_sigframe keeps the interrupted registers, from the RSP at
# __restore_rt (the handler's CFA): struct ucontext (uc_flags, uc_link, uc_stack: 40 bytes)
# then struct sigcontext (r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip).
_UC_RBP, _UC_RSP, _UC_RIP = 40 + 10 * 8, 40 + 15 * 8, 40 + 16 * 8

_U64 = struct.Struct("<Q")


class Status:
    """Why an unwind ended (each is a counter ``unwind_<status>``, except complete)."""

    COMPLETE = "complete"  # reached the outermost frame (or a zero return address)
    TRUNCATED = "truncated"  # the stack went on past the copied window: [truncated] added
    NO_STACK = "no_stack"  # the kernel could not copy the stack: the leaf alone
    NO_MAPS = "no_maps"  # the process's mappings were never readable
    UNMAPPED = "unmapped"  # a pc outside every executable mapping
    BAD_FRAME = "bad_frame"  # CFI or frame pointers led somewhere impossible
    DEPTH = "depth"  # MAX_FRAMES reached


@dataclass(slots=True)
class UnwindResult:
    addresses: tuple[int, ...]  # leaf first; may end with TRUNCATED
    status: str
    fp_frames: int = 0  # frames stepped by frame pointer (no CFI)
    signal_frames: int = 0
    # With ``record_reads``: every stack word the walk read, as (address, value). The
    # result is a function of the registers, these words and the mappings alone, so a
    # later stop with equal registers and equal words unwinds to the same frames.
    reads: tuple[tuple[int, int], ...] = ()


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
        record_reads: bool = False,
    ) -> UnwindResult:
        if not ip:
            return UnwindResult((), Status.NO_STACK)
        if not stack_copied:
            return UnwindResult((ip,), Status.NO_STACK)
        space = self.spaces.space(pid)
        if space is None:
            return UnwindResult((ip,), Status.NO_MAPS)
        return self._walk(pid, space, ip, sp, bp, stack, record_reads)

    def _walk(
        self,
        pid: int,
        space: ProcessSpace,
        ip: int,
        sp: int,
        bp: int | None,
        stack: bytes,
        record_reads: bool,
    ) -> UnwindResult:
        base, top = sp, sp + len(stack)
        unpack = _U64.unpack_from
        out = [ip]
        pc, exact = ip, True
        fp_frames = signal_frames = 0
        module_at = self.spaces.module_at
        reads: list[tuple[int, int]] = []

        def read(address: int) -> int | None:
            # Every stack access goes through here (see UnwindResult.reads).
            if address < base or address + 8 > top:
                return None
            value = unpack(stack, address - base)[0]
            if record_reads:
                reads.append((address, value))
            return value

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
                if rsp <= sp:  # not above the handler's frame (an alternate signal stack)
                    status = Status.BAD_FRAME
                    break
                signal_frames += 1
                if not rip:
                    status = Status.COMPLETE
                    break
                out.append(rip + 1)
                pc, exact, sp, bp = rip, True, rsp, rbp
                continue
            if kind in (CFA_RSP, CFA_RBP, CFA_PLT):
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
        if status == Status.TRUNCATED:
            out.append(TRUNCATED)
        return UnwindResult(tuple(out), status, fp_frames, signal_frames, tuple(reads))
