"""rover.bpf.ringbuf against a real BPF ring buffer (a tiny program writes records of
varying sizes on getppid() of this process). Needs root and bcc: fails without them."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rover.bpf.headers import HeaderSearch
from rover.bpf.program import LoadedProgram, ProgramSpec, load_program
from rover.bpf.ringbuf import RingBuffer

pytestmark = pytest.mark.bpf

PROGRAM = r"""
struct rec {
    u64 seq;
    u8 fill[256];
};
BPF_RINGBUF_OUTPUT(out, 1); /* one page: wraps around often */
BPF_ARRAY(seq, u64, 1);
BPF_ARRAY(dropped, u64, 1);
BPF_PERCPU_ARRAY(scratch, struct rec, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET)
        return 0;
    u32 zero = 0;
    u64 *n = seq.lookup(&zero);
    struct rec *r = scratch.lookup(&zero);
    if (!n || !r)
        return 0;
    u64 i = __sync_fetch_and_add(n, 1);
    r->seq = i;
    for (int k = 0; k < 256; k++)
        r->fill[k] = (u8)(i + k);
    u64 size = 8 + (i & 7) * 25; /* 8..183 bytes: rarely a multiple of 8 */
    if (out.ringbuf_output(r, size, 0) != 0) {
        u64 *d = dropped.lookup(&zero);
        if (d)
            __sync_fetch_and_add(d, 1);
    }
    return 0;
}
"""


def expected(i: int) -> bytes:
    size = 8 + (i & 7) * 25
    return (struct.pack("<Q", i) + bytes((i + k) & 0xFF for k in range(256)))[:size]


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedProgram]:
    directory: Path = tmp_path_factory.mktemp("bpf")
    (directory / "ringbuf_probe.c").write_text(PROGRAM)
    saved = os.environ.get("ROVER_BPF_DIR")
    os.environ["ROVER_BPF_DIR"] = str(directory)
    try:
        spec = ProgramSpec(
            "ringbuf_probe", {"TARGET": os.getpid()}, "tracepoint__syscalls__sys_enter_getppid",
            "tracepoint",
        )  # fmt: skip
        loaded = load_program(spec, HeaderSearch().find())
    finally:
        if saved is None:
            os.environ.pop("ROVER_BPF_DIR", None)
        else:
            os.environ["ROVER_BPF_DIR"] = saved
    loaded.attach_tracepoint(
        "tracepoint__syscalls__sys_enter_getppid", "syscalls", "sys_enter_getppid"
    )
    yield loaded
    loaded.close()


def test_records_in_order_across_wrap_arounds(program: LoadedProgram) -> None:
    ring = RingBuffer(program.handover.maps["out"])
    try:
        assert ring.size == 4096
        got: list[bytes] = []
        for _ in range(60):  # ~60 * 7 * 115 bytes: the one-page ring wraps ~12 times
            for _ in range(7):
                os.getppid()
            got += ring.poll(1000)
        assert bytes(program.map("dropped").get(0)) == bytes(8)
        assert [r[:8] for r in got] == [struct.pack("<Q", i) for i in range(420)]
        assert got == [expected(i) for i in range(420)]
        # with a callback: memoryviews, same records
        seen: list[bytes] = []
        for _ in range(3):
            os.getppid()
        ring.poll(1000, lambda record: seen.append(bytes(record)))
        assert seen == [expected(i) for i in range(420, 423)]
    finally:
        ring.close()


def test_full_ring_drops_and_recovers(program: LoadedProgram) -> None:
    ring = RingBuffer(program.handover.maps["out"])
    try:
        ring.consume()
        dropped = program.map("dropped", None, None)
        before = int.from_bytes(bytes(dropped.get(0)), "little")
        for _ in range(200):  # far more than one page holds
            os.getppid()
        kept = ring.consume()
        lost = int.from_bytes(bytes(dropped.get(0)), "little") - before
        assert 10 < len(kept) < 200 and len(kept) + lost == 200
        seqs = [struct.unpack_from("<Q", r)[0] for r in kept]
        assert seqs == sorted(seqs) and kept == [expected(i) for i in seqs]
        os.getppid()
        after = ring.poll(1000)
        assert len(after) == 1 and struct.unpack_from("<Q", after[0])[0] == seqs[0] + 200
    finally:
        ring.close()


def test_a_limit_bounds_one_read_and_the_rest_waits_in_order(program: LoadedProgram) -> None:
    ring = RingBuffer(program.handover.maps["out"])
    try:
        ring.consume()
        for _ in range(9):
            os.getppid()
        first = ring.consume(limit=4)
        second = ring.poll(1000, limit=4)
        rest = ring.consume()
        seqs = [struct.unpack_from("<Q", r)[0] for r in first + second + rest]
        assert (len(first), len(second), len(rest)) == (4, 4, 1)
        assert seqs == list(range(seqs[0], seqs[0] + 9))
    finally:
        ring.close()


def test_poll_times_out_empty(program: LoadedProgram) -> None:
    ring = RingBuffer(program.handover.maps["out"])
    try:
        ring.consume()
        started = time.monotonic()
        assert ring.poll(100) == []
        assert 0.08 < time.monotonic() - started < 2
    finally:
        ring.close()


def test_not_a_ring_buffer(program: LoadedProgram) -> None:
    with pytest.raises(ValueError, match="not a ring buffer"):
        RingBuffer(program.handover.maps["seq"])
