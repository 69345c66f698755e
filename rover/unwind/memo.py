"""Off-CPU switch-out memos: unwinding each place a thread blocks at once.

After a thread's SWITCH_OUT sample is unwound, its registers and the stack
words the unwind read (``UnwindResult.reads``) go into the BPF map ``memos``
(``bpf/offcpu_dwarf.c``) under (thread id, RIP, RSP), with a fresh memo id. A
thread usually blocks at a few places in turn (a read, then a write; an
epoll_wait, then a futex), so each place has its own memo, up to
``PLACES_PER_THREAD`` per thread (the oldest goes first). When the thread next
switches out at a place with equal registers and equal words, the program
counts the switch in the kernel under the memo id (no stack copy), and
:meth:`SwitchMemos.frames` gives the frames unwound for it at the drain.

An unwind depends on the registers, the words it read and the process's
mappings; a memo ignores a change of mappings (a library unloaded and another
loaded at the same address, with the same words on the stack), as a symbol
cache would.

A memo that is replaced (or evicted) may still be referenced: by repeat
records queued in the ring buffer (the consumer may lag by many samples, e.g.
while it builds a big table) and by the thread itself if it switched out on
the old memo before user space replaced it (counted when it comes back, maybe
much later). So its frames are kept until a whole drain has passed, and longer
while the thread is still switched out on it.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
from collections import OrderedDict

from rover.unwind.unwinder import Status, UnwindResult

log = logging.getLogger(__name__)

MEMO_WORDS = 64  # stack words a memo checks: two per frame (return address, saved RBP)
MEMO_ENTRIES = 32768  # memos at once, over all threads
PLACES_PER_THREAD = 8
_NOT_MEMOIZED = (Status.NO_STACK, Status.NO_MAPS)


class SwitchMemos:
    """The user-space side of the ``memos`` map: installs memos and resolves repeats."""

    def __init__(self, table) -> None:
        self._table = table  # the bcc table "memos"
        self._frames: dict[int, tuple[int, ...]] = {}  # memo id -> frames
        # tid -> (ip, sp) -> memo id, oldest first; and each thread's process.
        self._places: dict[int, OrderedDict[tuple[int, int], int]] = {}
        self._owner: dict[int, int] = {}
        # (tid, id) of memos replaced since the last drain, and before it (dropped at the next
        # drain unless the thread is still switched out on it).
        self._retiring: list[tuple[int, int]] = []
        self._retired: list[tuple[int, int]] = []
        self._next_id = 1
        self.installed = 0
        self.repeats = 0  # switches counted as repeats of a memo
        self.too_deep = 0  # unwinds that read more than MEMO_WORDS words
        self._full_logged = False

    def remember(
        self, tgid: int, tid: int, ip: int, sp: int, bp: int, result: UnwindResult
    ) -> None:
        """Install a memo for ``tid`` at (``ip``, ``sp``) from the unwind of its full sample."""
        if result.status in _NOT_MEMOIZED or result.other_registers_used:
            return  # the program checks RIP, RSP, RBP and stack words, not other registers
        words = dict(result.reads)  # an address read twice holds one value
        if len(words) > MEMO_WORDS:
            self.too_deep += 1
            return
        leaf = self._table.Leaf()
        leaf.ip, leaf.sp, leaf.bp, leaf.tgid, leaf.words = ip, sp, bp, tgid, len(words)
        leaf.check_bp = int(result.bp_used)
        for i, (address, value) in enumerate(words.items()):
            offset = address - sp
            if not 0 <= offset <= 0xFFFF:
                return  # cannot happen: reads lie in the copied window above sp
            leaf.offset[i], leaf.value[i] = offset, value
        if self._owner.get(tid) != tgid:  # a new thread, or a tid reused by another process
            self.forget_threads([tid])
            self._owner[tid] = tgid
        memo_id = leaf.id = self._next_id
        try:
            self._table[self._key(tid, ip, sp)] = leaf
        except Exception as exc:  # noqa: BLE001 - the map is full: full copies go on
            if not self._full_logged:
                self._full_logged = True
                log.info("off-CPU memo map full (%s): more stack copies for new threads", exc)
            return
        self._next_id += 1
        self.installed += 1
        self._frames[memo_id] = result.addresses
        places = self._places.setdefault(tid, OrderedDict())
        replaced = places.pop((ip, sp), None)
        if replaced is not None:
            self._retiring.append((tid, replaced))
        places[(ip, sp)] = memo_id
        if len(places) > PLACES_PER_THREAD:
            (old_ip, old_sp), old_id = places.popitem(last=False)
            self._retiring.append((tid, old_id))
            with contextlib.suppress(KeyError):
                del self._table[self._key(tid, old_ip, old_sp)]

    def frames(self, memo_id: int, switches: int = 1) -> tuple[int, ...] | None:
        """The frames of memo ``memo_id``, or None when it is unknown (counted by the caller)."""
        found = self._frames.get(memo_id)
        if found is None:
            return None
        self.repeats += switches
        return found

    def forget_threads(self, tids: list[int]) -> None:
        """Drop the memos of threads that exited (or of a process no longer profiled)."""
        for tid in tids:
            self._owner.pop(tid, None)
            for (ip, sp), memo_id in self._places.pop(tid, {}).items():
                self._retiring.append((tid, memo_id))
                with contextlib.suppress(KeyError):
                    del self._table[self._key(tid, ip, sp)]

    def still_switched_out(self, start) -> set[int]:
        """Retired memos a thread is switched out on right now (``start``: the BPF map).

        Called before a drain swaps the counts: a thread that matched a memo just before
        user space replaced it is counted under it when it comes back, maybe much later.
        """
        kept = set()
        for tid, memo_id in self._retired:
            rec = start.get(ct.c_uint32(tid))
            if rec is not None and rec.memo_id == memo_id:
                kept.add(memo_id)
        return kept

    def after_drain(self, kept: set[int]) -> None:
        """Called after each drain consumed the ring buffer and the counts: frees memos
        retired before the previous drain, except ``kept`` (see still_switched_out)."""
        still = []
        for tid, memo_id in self._retired:
            if memo_id in kept:
                still.append((tid, memo_id))
            else:
                self._frames.pop(memo_id, None)
        self._retired, self._retiring = self._retiring + still, []

    def owners(self) -> dict[int, int]:
        """The threads with memos, and the process of each."""
        return dict(self._owner)

    def _key(self, tid: int, ip: int, sp: int):
        key = self._table.Key()
        key.tid, key.ip, key.sp = tid, ip, sp
        return key
