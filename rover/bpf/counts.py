"""Draining in-kernel counts exactly, resolving stack ids, and off-CPU bookkeeping.

Every counting program keeps its counts in two inner hash maps (``counts_a``,
``counts_b``) behind the one-slot ARRAY_OF_MAPS ``active_counts`` (see
``bpf/profile_common.h``). Pointing the slot at the other map is a map-in-map
update, on which the kernel runs synchronize_rcu(): when the syscall returns,
no program still writes the old map, so it is read and cleared with no writer
racing it, and every event lands in exactly one drain.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
import os

from rover.bpf.maps import BpfMap
from rover.bpf.program import LoadedProgram

log = logging.getLogger(__name__)


class DoubleBufferedCounts:
    """The ``counts_a``/``counts_b`` pair of a loaded program, behind ``active_counts``."""

    def __init__(self, program: LoadedProgram, key_type: type, leaf_type: type) -> None:
        self._maps = (
            program.map("counts_a", key_type, leaf_type),
            program.map("counts_b", key_type, leaf_type),
        )
        self._slot = program.map("active_counts", ct.c_int, ct.c_int)
        self._active = 0
        self._set_active(0)

    def take(self) -> list:
        """Swap maps, then read and clear the one no program writes any more."""
        drained = self._maps[self._active]
        self._set_active(1 - self._active)
        return drained.take_all()

    def active_keys(self) -> list:
        return self._maps[self._active].keys()

    def active_len(self) -> int:
        return len(self._maps[self._active])

    def _set_active(self, index: int) -> None:
        self._slot[0] = self._maps[index].get_fd()
        self._active = index


class StackMap:
    """A map of stacks by id, the ids counted events refer to; resolution, and collection
    of the stacks no count refers to any more.

    Two kinds: the kernel's BPF_STACK_TRACE map of frame-pointer (and kernel) stacks,
    ids from bpf_get_stackid, negative for none; and ``user_stacks`` of the CFI walk
    (``bpf/cfi_walk.h``), keyed by a hash of the addresses, 0 for none.
    """

    def __init__(self, table: BpfMap, size: int, gc_ratio: float, walked: bool = False) -> None:
        self._table = table
        self._limit = size * gc_ratio
        self._walked = walked
        self._key = ct.c_uint64 if walked else ct.c_int
        self._known: set[int] = set()

    def resolve(self, stack_id: int, cache: dict[int, tuple[int, ...] | None]):
        """Addresses for a stack id; () when none was captured; None when it is gone."""
        if (stack_id == 0) if self._walked else (stack_id < 0):
            return ()
        if stack_id not in cache:
            try:
                value = self._table[self._key(stack_id)]
                if self._walked:
                    cache[stack_id] = tuple(value.ips[: min(value.len, len(value.ips))])
                else:
                    cache[stack_id] = tuple(ip for ip in value if ip)
                self._known.add(stack_id)
            except KeyError:
                cache[stack_id] = None
        return cache[stack_id]

    def collect_if_full(self, referenced) -> None:
        """Delete stacks no longer referenced once the map fills up.

        ``referenced`` is called only then, for the ids still in use (the
        active counts map, threads switched out right now). A stack deleted in
        the instant a new event references it is reported as unresolved at the
        next drain, never silently.
        """
        if len(self._known) < self._limit:
            return
        keep: set[int] = set(referenced())
        deleted = 0
        for stack_id in self._known - keep:
            with contextlib.suppress(KeyError):
                del self._table[self._key(stack_id)]
                deleted += 1
        self._known &= keep
        log.debug("stack map collection: %d stacks deleted", deleted)

    @property
    def known(self) -> int:
        """Stack ids resolved and not collected since."""
        return len(self._known)


def thread_alive(tgid: int, tid: int) -> bool:
    return os.path.exists(f"/proc/{tgid}/task/{tid}")


def forget_exited_switch_outs(start: BpfMap) -> int:
    """Delete the switch-out records (the off-CPU programs' "start" map, by thread id) of
    threads that exited while switched out: they never come back to be counted."""
    gone = [k for k, rec in start.items() if not thread_alive(rec.tgid, k.value)]
    for k in gone:
        with contextlib.suppress(KeyError):
            del start[k]
    return len(gone)
