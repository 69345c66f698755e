"""The records the .eh_frame BPF programs send through their ring buffer.

Layouts match ``struct sample_header`` and ``struct switch_in`` in
``bpf/unwind_common.h``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SAMPLE_ON_CPU = 1
SAMPLE_SWITCH_OUT = 2
SAMPLE_SWITCH_IN = 3
SAMPLE_SWITCH_OUT_REPEAT = 4  # a switch-out without a stack: it unwinds like memo ``memo_id``

FLAG_STACK_FAILED = 1
FLAG_NO_USER_REGS = 2

KSTACK_DEPTH = 127
USER_REGS = 17  # rax rdx rcx rbx rsi rdi rbp rsp r8-r15 rip: DWARF register numbers
_HEADER = struct.Struct(f"<IIIIQQQQQII{USER_REGS}Q")
HEADER_BYTES = _HEADER.size + 8 * KSTACK_DEPTH
_SWITCH_IN = struct.Struct("<IIIIQQ")
_KIND = struct.Struct("<I")


class RecordError(ValueError):
    """A record too short for its kind (never expected from our own programs)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """A SAMPLE_ON_CPU, SAMPLE_SWITCH_OUT or SAMPLE_SWITCH_OUT_REPEAT record."""

    kind: int
    tgid: int
    tid: int
    flags: int
    ip: int
    sp: int
    bp: int
    seq: int
    memo_id: int
    kernel: tuple[int, ...]  # leaf first
    stack: bytes  # the user stack from ``sp`` upward (empty in a repeat)
    regs: tuple[int, ...] = ()  # all USER_REGS registers, by DWARF number


@dataclass(frozen=True, slots=True)
class SwitchIn:
    tgid: int
    tid: int
    seq: int
    ns: int


def parse_record(data: bytes) -> Sample | SwitchIn:
    if len(data) < _KIND.size:
        raise RecordError(f"record of {len(data)} bytes")
    (kind,) = _KIND.unpack_from(data)
    if kind == SAMPLE_SWITCH_IN:
        if len(data) < _SWITCH_IN.size:
            raise RecordError(f"switch-in record of {len(data)} bytes")
        _, tgid, tid, _, seq, ns = _SWITCH_IN.unpack_from(data)
        return SwitchIn(tgid, tid, seq, ns)
    if len(data) < _HEADER.size:
        raise RecordError(f"sample record of {len(data)} bytes")
    fields = _HEADER.unpack_from(data)
    kind, tgid, tid, flags, ip, sp, bp, seq, memo_id, kstack_bytes, stack_bytes = fields[:11]
    regs = fields[11:]
    depth = min(kstack_bytes // 8, KSTACK_DEPTH)
    # A repeat carries only the used part of kstack; the others the whole header.
    needed = _HEADER.size + 8 * depth if kind == SAMPLE_SWITCH_OUT_REPEAT else HEADER_BYTES
    if len(data) < needed:
        raise RecordError(f"sample record of {len(data)} bytes, {needed} expected")
    kernel = tuple(a for a in struct.unpack_from(f"<{depth}Q", data, _HEADER.size) if a)
    stack = b""
    if kind != SAMPLE_SWITCH_OUT_REPEAT:
        stack = data[HEADER_BYTES : HEADER_BYTES + stack_bytes]
    return Sample(kind, tgid, tid, flags, ip, sp, bp, seq, memo_id, kernel, stack, regs)
