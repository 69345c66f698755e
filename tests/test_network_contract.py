"""bpf/network.h as Python reads it (no root): layouts, counters, enums, and the C
histogram's bucket choice against the model's bounds (spec 8.6)."""

from __future__ import annotations

import ctypes
import re

from rover._data import data_dir
from rover.bpf.contract import header
from rover.network.model import L4_BUCKETS_NS, Direction, Protocol, Role
from rover.network.observer import CALL_NAMES, Decoder

H = header("network.h")


def test_struct_layouts() -> None:
    sizes = {
        "net_addr": 24,
        "conn_rec": 592,
        "data_event": 88,
        "close_event": 616,
        "retransmit_event": 64,
        "fd_event": 16,
    }
    for name, size in sizes.items():
        assert ctypes.sizeof(H.structs[name]) == size, name
        Decoder(H.structs[name])  # its struct format agrees with the ctypes layout
    conn = H.structs["conn_rec"]
    assert conn.remote.offset == 32 and conn.local.offset == 56 and conn.write_hist.offset == 160
    assert conn.start_bytes.offset == 568 and conn.start_len.offset == 584
    assert H.structs["close_event"].conn.offset == 24
    assert H.defines["NET_BUCKETS"] == len(L4_BUCKETS_NS)
    slots = H.defines["NET_PID_SLOTS"]  # the kernel masks pids with slots - 1
    assert slots & (slots - 1) == 0


def test_every_struct_is_8_byte_aligned_for_the_ring() -> None:
    for name in ("data_event", "close_event", "retransmit_event", "fd_event"):
        assert ctypes.sizeof(H.structs[name]) % 8 == 0, name


def test_counters() -> None:
    counters = H.counters("net_stat")
    names = [c.name for c in counters]
    assert len(set(names)) == len(names)
    assert "fd_unresolved_calls" in names and "dropped_data_events" in names
    assert {c.name for c in counters if not c.loss} >= {"data_calls", "connects", "closes"}


def test_enums_match_the_model() -> None:
    enums = {name: {s: v for s, v, _ in values} for name, values in H.enums.items()}
    assert enums["net_role"] == {f"ROLE_{r.name}": r.value for r in Role}
    assert enums["net_protocol"] == {f"PROTO_{p.name}": p.value for p in Protocol}
    calls = enums["net_call"]
    data_calls = {s for s in calls if calls[s] <= calls["CALL_RECVMMSG"]}
    tls_calls = {"CALL_SSL_WRITE", "CALL_SSL_READ"}  # data events only, never in flight
    assert data_calls | tls_calls == set(CALL_NAMES)
    assert all(calls["CALL_RECVMMSG"] < calls[s] < calls["CALL_SOCKET"] for s in tls_calls)
    assert {CALL_NAMES[s] for s in tls_calls} == {"SSL_write", "SSL_read"}
    sends = {s for s in data_calls if calls[s] <= calls["CALL_SENDFILE"]}
    assert sends == {s for s in data_calls if s.startswith(("CALL_SEND", "CALL_WRITE"))}
    assert (Direction.SEND.value, Direction.RECV.value) == (1, 2)  # DIR_SEND, DIR_RECV


def test_bucket_choice_in_c_follows_the_spec() -> None:
    source = (data_dir("bpf") / "network.c").read_text()
    body = source[source.index("bucket_of(u64 v)") :]
    body = body[: body.index("\n}\n")]

    def spec_bucket(v: int) -> int:
        if v >= L4_BUCKETS_NS[-2]:
            return len(L4_BUCKETS_NS) - 1
        return max(i for i, bound in enumerate(L4_BUCKETS_NS) if bound <= v)

    values = sorted({max(0, b + d) for b in L4_BUCKETS_NS for d in (-1, 0, 1)} | {10**10})
    assert [_run_chain(body, v) for v in values] == [spec_bucket(v) for v in values]


def _run_chain(body: str, v: int) -> int:
    """The C function's answer: nested ``if (v < N) {`` blocks and ``if (v < N) return i;``."""
    lines = [line.strip() for line in body.splitlines()[1:]]
    depth_skip = 0
    for line in lines:
        if depth_skip:
            depth_skip += line.count("{") - line.count("}")
            continue
        block = re.fullmatch(r"if \(v < (\d+)ULL\) \{", line)
        if block:
            if v >= int(block.group(1)):
                depth_skip = 1
            continue
        ret = re.fullmatch(r"if \(v < (\d+)ULL\) return (\d+);", line)
        if ret:
            if v < int(ret.group(1)):
                return int(ret.group(2))
            continue
        final = re.fullmatch(r"return (\d+);", line)
        if final:
            return int(final.group(1))
    raise AssertionError("the chain did not return")
