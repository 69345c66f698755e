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

FLAG_STACK_FAILED = 1
FLAG_NO_USER_REGS = 2

KSTACK_DEPTH = 127
_HEADER = struct.Struct("<IIIIQQQQII")
HEADER_BYTES = _HEADER.size + 8 * KSTACK_DEPTH
_SWITCH_IN = struct.Struct("<IIIIQQ")
_KIND = struct.Struct("<I")


class RecordError(ValueError):
    """A record too short for its kind (never expected from our own programs)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """A SAMPLE_ON_CPU or SAMPLE_SWITCH_OUT record."""

    kind: int
    tgid: int
    tid: int
    flags: int
    ip: int
    sp: int
    bp: int
    seq: int
    kernel: tuple[int, ...]  # leaf first
    stack: bytes  # the user stack from ``sp`` upward


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
    if len(data) < HEADER_BYTES:
        raise RecordError(f"sample record of {len(data)} bytes")
    kind, tgid, tid, flags, ip, sp, bp, seq, kstack_bytes, stack_bytes = _HEADER.unpack_from(data)
    depth = min(kstack_bytes // 8, KSTACK_DEPTH)
    kernel = tuple(a for a in struct.unpack_from(f"<{depth}Q", data, _HEADER.size) if a)
    stack = data[HEADER_BYTES : HEADER_BYTES + stack_bytes]
    return Sample(kind, tgid, tid, flags, ip, sp, bp, seq, kernel, stack)
