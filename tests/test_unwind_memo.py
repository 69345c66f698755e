"""Off-CPU switch-out memos (rover/unwind/memo.py) against a stand-in for the BPF map.

The BPF side (bpf/offcpu_dwarf.c) is tested for real in tests/test_unwind_engine.py;
these tests pin down the bookkeeping: places per thread, when a replaced memo's
frames may be freed, and bad input.
"""

from __future__ import annotations

import ctypes as ct
import logging
import struct

import pytest

from rover.unwind.memo import MEMO_WORDS, PLACES_PER_THREAD, SwitchMemos
from rover.unwind.records import (
    SAMPLE_SWITCH_OUT_REPEAT,
    USER_REGS,
    RecordError,
    parse_record,
)
from rover.unwind.unwinder import Status, UnwindResult


class MemoKey(ct.Structure):
    _fields_ = [("tid", ct.c_uint32), ("pad", ct.c_uint32), ("ip", ct.c_uint64),
                ("sp", ct.c_uint64)]  # fmt: skip


class Memo(ct.Structure):
    _fields_ = [("ip", ct.c_uint64), ("sp", ct.c_uint64), ("bp", ct.c_uint64),
                ("id", ct.c_uint64), ("tgid", ct.c_uint32), ("words", ct.c_uint32),
                ("check_bp", ct.c_uint32), ("pad", ct.c_uint32),
                ("offset", ct.c_uint16 * MEMO_WORDS),
                ("value", ct.c_uint64 * MEMO_WORDS)]  # fmt: skip


class StartRec(ct.Structure):
    _fields_ = [("ts", ct.c_uint64), ("memo_id", ct.c_uint64), ("tgid", ct.c_uint32),
                ("kstack_id", ct.c_int32)]  # fmt: skip


class FakeTable(dict):
    """Keys and leaves like a bcc table; ``capacity`` makes updates fail like a full map."""

    Key, Leaf = MemoKey, Memo

    def __init__(self, capacity: int = 1 << 20) -> None:
        super().__init__()
        self.capacity = capacity

    def __setitem__(self, key, leaf) -> None:
        k = (key.tid, key.ip, key.sp)
        if k not in self and len(self) >= self.capacity:
            raise Exception("Could not update table: [Errno 7] Argument list too long")
        super().__setitem__(k, leaf)

    def __delitem__(self, key) -> None:
        super().__delitem__((key.tid, key.ip, key.sp))


class FakeStart(dict):
    def get(self, key, default=None):
        return super().get(key.value, default)


def result(frames=(0x401000, 0x401100), reads=((0x7000, 0x401100),), bp_used=False):
    return UnwindResult(tuple(frames), Status.COMPLETE, reads=tuple(reads), bp_used=bp_used)


SP = 0x7000 - 8


def test_memo_holds_registers_and_words_read():
    table = FakeTable()
    memos = SwitchMemos(table)
    memos.remember(10, 11, 0xAAA, SP, 0x55, result(reads=[(0x7000, 7), (0x7010, 9), (0x7000, 7)]))
    leaf = table[(11, 0xAAA, SP)]
    assert (leaf.ip, leaf.sp, leaf.bp, leaf.tgid, leaf.check_bp) == (0xAAA, SP, 0x55, 10, 0)
    assert leaf.words == 2  # an address read twice is checked once
    assert list(leaf.offset[:2]) == [8, 0x18] and list(leaf.value[:2]) == [7, 9]
    assert memos.frames(leaf.id) == (0x401000, 0x401100)
    memos.remember(10, 11, 0xBBB, SP, 0x55, result(bp_used=True))
    assert table[(11, 0xBBB, SP)].check_bp == 1


def test_each_place_of_a_thread_has_its_memo_and_the_oldest_goes_first():
    table = FakeTable()
    memos = SwitchMemos(table)
    for place in range(PLACES_PER_THREAD + 2):
        memos.remember(10, 11, 0x1000 + place, SP, 0, result())
    assert len(table) == PLACES_PER_THREAD
    assert (11, 0x1000, SP) not in table and (11, 0x1001, SP) not in table
    assert memos.installed == PLACES_PER_THREAD + 2


def test_unwinds_that_cannot_be_checked_are_not_memoized():
    leaf_registers = result()
    leaf_registers.other_registers_used = True  # e.g. a leaf whose CFA is RAX + 8
    table = FakeTable()
    memos = SwitchMemos(table)
    memos.remember(10, 11, 0xAAA, SP, 0, leaf_registers)
    memos.remember(10, 11, 0xAAA, SP, 0, UnwindResult((0xAAA,), Status.NO_MAPS))
    memos.remember(10, 11, 0xAAA, SP, 0, UnwindResult((0xAAA,), Status.NO_STACK))
    too_deep = [(0x7000 + 8 * i, i) for i in range(MEMO_WORDS + 1)]
    memos.remember(10, 11, 0xAAA, SP, 0, result(reads=too_deep))
    assert not table and memos.too_deep == 1


def test_a_full_map_means_more_copies_not_an_error(caplog):
    caplog.set_level(logging.INFO, "rover.unwind.memo")
    memos = SwitchMemos(FakeTable(capacity=1))
    memos.remember(10, 11, 0xAAA, SP, 0, result())
    memos.remember(10, 12, 0xAAA, SP, 0, result())
    memos.remember(10, 13, 0xAAA, SP, 0, result())
    assert memos.installed == 1
    assert sum("memo map full" in r.message for r in caplog.records) == 1


def test_replaced_memo_lives_one_whole_drain():
    table = FakeTable()
    memos = SwitchMemos(table)
    memos.remember(10, 11, 0xAAA, SP, 0, result(frames=(1,)))
    old = table[(11, 0xAAA, SP)].id
    memos.remember(10, 11, 0xAAA, SP, 0, result(frames=(2,)))  # the same place, new words
    assert table[(11, 0xAAA, SP)].id != old
    start = FakeStart()
    memos.after_drain(memos.still_switched_out(start))  # repeats of it may still be queued
    assert memos.frames(old) == (1,)
    memos.after_drain(memos.still_switched_out(start))
    assert memos.frames(old) is None


def test_replaced_memo_lives_while_its_thread_is_switched_out_on_it():
    table = FakeTable()
    memos = SwitchMemos(table)
    memos.remember(10, 11, 0xAAA, SP, 0, result(frames=(1,)))
    old = table[(11, 0xAAA, SP)].id
    memos.remember(10, 11, 0xAAA, SP, 0, result(frames=(2,)))
    start = FakeStart({11: StartRec(ts=1, memo_id=old, tgid=10)})
    for _ in range(3):  # asleep across drains
        memos.after_drain(memos.still_switched_out(start))
        assert memos.frames(old) == (1,)
    del start[11]  # it came back: counted at the drain that follows
    memos.after_drain(memos.still_switched_out(start))
    assert memos.frames(old) is None


def test_forgetting_threads_and_reused_thread_ids():
    table = FakeTable()
    memos = SwitchMemos(table)
    memos.remember(10, 11, 0xAAA, SP, 0, result())
    memos.remember(10, 11, 0xBBB, SP, 0, result())
    memos.remember(10, 12, 0xAAA, SP, 0, result())
    assert memos.owners() == {11: 10, 12: 10}
    memos.forget_threads([12])
    assert set(table) == {(11, 0xAAA, SP), (11, 0xBBB, SP)}
    memos.remember(20, 11, 0xCCC, SP, 0, result())  # tid 11 now belongs to process 20
    assert set(table) == {(11, 0xCCC, SP)}
    assert memos.owners() == {11: 20}


@pytest.mark.parametrize("memo_id", [0, 999, -1])
def test_unknown_memo_ids_resolve_to_none(memo_id):
    memos = SwitchMemos(FakeTable())
    assert memos.frames(memo_id) is None
    assert memos.repeats == 0


def _repeat_record(kstack: list[int], declared_bytes: int | None = None) -> bytes:
    regs = [100 + n for n in range(USER_REGS)]
    header = struct.pack(
        f"<IIIIQQQQQII{USER_REGS}Q", SAMPLE_SWITCH_OUT_REPEAT, 10, 11, 0, 0xAAA, SP, 0, 5, 42,
        8 * len(kstack) if declared_bytes is None else declared_bytes, 0, *regs,
    )  # fmt: skip
    return header + struct.pack(f"<{len(kstack)}Q", *kstack)


def test_repeat_records_carry_only_the_used_kernel_stack():
    sample = parse_record(_repeat_record([0xFFFF1, 0xFFFF2]))
    assert (sample.kind, sample.tid, sample.memo_id) == (SAMPLE_SWITCH_OUT_REPEAT, 11, 42)
    assert sample.kernel == (0xFFFF1, 0xFFFF2) and sample.stack == b""
    assert sample.regs[16] == 116  # rip
    assert sample.regs == tuple(100 + n for n in range(USER_REGS))  # by DWARF number


def test_short_repeat_records_are_errors_not_crashes():
    with pytest.raises(RecordError):
        parse_record(_repeat_record([0xFFFF1], declared_bytes=64))
    with pytest.raises(RecordError):
        parse_record(_repeat_record([])[:20])
