"""A file's unwind rules as sorted numpy arrays, looked up by address.

Built once per file from its decoded CFI rows (see ``cfi.py``); addresses are
the file's own (ELF virtual addresses): subtract the mapping's load bias from a
runtime address first. Gaps between FDEs are rows of kind ``NO_CFI``.

Rows whose rules are DWARF expressions refer to ``expressions`` by index (see
``cfi.py``): the arrays stay fixed-size, and a file's few distinct expressions
are stored once however many functions use them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from rover.unwind.cfi import NO_CFI, UNKNOWN

# What a lookup returns: (kind, cfa_offset, ra_offset, rbp_offset).
Rule = tuple[int, int, int, int]
NO_RULE: Rule = (NO_CFI, 0, 0, UNKNOWN)
_MEMO_LIMIT = 1 << 15
_TABLE_BYTES = 600  # the table object and its five arrays' headers


class CfiTable:
    """Rows sorted by pc; each holds until the next one."""

    __slots__ = (
        "pcs", "kinds", "cfa_offsets", "ra_offsets", "rbp_offsets", "source", "expressions",
        "_memo",
    )  # fmt: skip

    def __init__(
        self,
        pcs: np.ndarray,
        kinds: np.ndarray,
        cfa_offsets: np.ndarray,
        ra_offsets: np.ndarray,
        rbp_offsets: np.ndarray,
        source: str = "",
        expressions: tuple[bytes, ...] = (),
    ) -> None:
        self.pcs = pcs
        self.kinds = kinds
        self.cfa_offsets = cfa_offsets
        self.ra_offsets = ra_offsets
        self.rbp_offsets = rbp_offsets
        self.source = source  # ".eh_frame" or ".debug_frame"
        self.expressions = expressions  # what CFA_EXPR rows and expression rules index
        self._memo: dict[int, Rule] = {}

    @classmethod
    def from_rows(
        cls,
        rows: Sequence[tuple[int, int, tuple[int, int, int, int]]],
        source: str,
        expressions: tuple[bytes, ...] | None = None,
    ) -> CfiTable:
        """From ``(pc, fde_end, (kind, cfa, ra, rbp))`` rows in any order.

        ``expressions`` defaults to the rows' own (``cfi.CfiRows.expressions``).
        """
        if expressions is None:
            expressions = getattr(rows, "expressions", ())
        if not rows:
            return cls.empty(source)
        flat = np.array([(pc, end, *state) for pc, end, state in rows], dtype=np.int64)
        pcs, ends, states = flat[:, 0], flat[:, 1], flat[:, 2:]
        # An FDE's end becomes a NO_CFI row, unless a row of another FDE starts there:
        # sorting markers (priority 0) before rows (priority 1) at one pc and keeping
        # the last of each pc lets the real row win.
        marker_states = np.tile(np.array(NO_RULE, dtype=np.int64), (len(ends), 1))
        all_pcs = np.concatenate([ends, pcs])
        priority = np.concatenate([np.zeros(len(ends), np.int8), np.ones(len(pcs), np.int8)])
        all_states = np.concatenate([marker_states, states])
        order = np.lexsort((priority, all_pcs))
        all_pcs, all_states = all_pcs[order], all_states[order]
        last_of_pc = np.append(all_pcs[1:] != all_pcs[:-1], True)
        return cls.from_states(
            all_pcs[last_of_pc], all_states[last_of_pc], source, tuple(expressions)
        )

    @classmethod
    def from_states(
        cls, pcs: np.ndarray, states: np.ndarray, source: str, expressions: tuple[bytes, ...]
    ) -> CfiTable:
        """From sorted, distinct ``pcs`` and their (n, 4) ``states`` (kind, cfa, ra, rbp);
        a row equal to the one before it is dropped (it changes nothing)."""
        changed = np.ones(len(pcs), dtype=bool)
        changed[1:] = np.any(states[1:] != states[:-1], axis=1)
        pcs, states = pcs[changed], states[changed]
        return cls(
            pcs.astype(np.uint64),
            states[:, 0].astype(np.uint8),
            states[:, 1].astype(np.int32),
            states[:, 2].astype(np.int32),
            states[:, 3].astype(np.int32),
            source,
            expressions,
        )

    @classmethod
    def empty(cls, source: str = "") -> CfiTable:
        zeros = np.zeros(0, np.int32)
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint8), zeros, zeros, zeros, source)

    def __len__(self) -> int:
        return len(self.pcs)

    @property
    def nbytes(self) -> int:
        """Memory held: the arrays and the expressions (21 bytes a row). The lookup memo
        of the reference unwinder (:meth:`lookup`, which the agent never calls) is not
        counted."""
        arrays = (self.pcs, self.kinds, self.cfa_offsets, self.ra_offsets, self.rbp_offsets)
        expressions = sys.getsizeof(self.expressions) + sum(map(sys.getsizeof, self.expressions))
        return _TABLE_BYTES + sum(a.nbytes for a in arrays) + expressions

    def rules_at(self, pcs: np.ndarray) -> np.ndarray:
        """The rule in effect at each of ``pcs``, as an (n, 4) int64 array (:meth:`lookup`
        for many addresses at once)."""
        states = np.tile(np.array(NO_RULE, dtype=np.int64), (len(pcs), 1))
        index = np.searchsorted(self.pcs, pcs, side="right") - 1
        covered = index >= 0
        rows = index[covered]
        for column, values in enumerate(
            (self.kinds, self.cfa_offsets, self.ra_offsets, self.rbp_offsets)
        ):
            states[covered, column] = values[rows]
        return states

    def lookup(self, pc: int) -> Rule:
        """The rule in effect at ``pc`` (a file address)."""
        rule = self._memo.get(pc)
        if rule is not None:
            return rule
        i = int(np.searchsorted(self.pcs, pc, side="right")) - 1 if pc >= 0 else -1
        if i < 0:
            rule = NO_RULE
        else:
            rule = (
                int(self.kinds[i]),
                int(self.cfa_offsets[i]),
                int(self.ra_offsets[i]),
                int(self.rbp_offsets[i]),
            )
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[pc] = rule
        return rule
