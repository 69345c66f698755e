"""A least-recently-used cache bounded in bytes: every cache that grows with the node's work.

Each entry carries an estimate of the memory it holds (its caller's: numpy buffers'
``nbytes``, string lengths, documented per-object estimates) plus
:data:`ENTRY_OVERHEAD_BYTES` for the cache's own bookkeeping. :meth:`ByteLru.put`
evicts least recently used entries until the total is within the budget; an entry
bigger than the whole budget is not kept (counted as ``refused``). Every cache counts
its entries, bytes, evictions, refusals, hits and misses (:class:`CacheStats`), which
``/metrics`` shows (``rover.metrics``).

Thread-safe: one lock per cache. ``on_evict`` is called after the lock is released, so
it may use the cache again.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, runtime_checkable

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# The cache's own cost per entry: the OrderedDict's slot and link node, the (value, size)
# tuple and the size's int object (measured with tracemalloc on CPython 3.11: ~190 bytes).
ENTRY_OVERHEAD_BYTES = 192
# A Python int beyond 2**30 (addresses, sizes, inodes): sys.getsizeof gives 32.
INT_BYTES = 32


def str_bytes(text: str | bytes) -> int:
    """Memory of one ``str`` or ``bytes`` object (header included)."""
    return sys.getsizeof(text)


@dataclass(frozen=True, slots=True)
class CacheStats:
    """One cache's numbers at one moment (what ``/metrics`` shows)."""

    name: str
    budget_bytes: int
    bytes: int
    entries: int
    evictions: int = 0  # entries dropped to make room for others
    refused: int = 0  # entries bigger than the whole budget, not kept
    hits: int = 0
    misses: int = 0


@runtime_checkable
class HasCaches(Protocol):
    """Something that owns caches and shows them (a finder, the symbolizer...)."""

    def caches(self) -> list[CacheStats]: ...


class ByteLru(Generic[K, V]):
    """A mapping that forgets its least recently used entries beyond ``budget_bytes``.

    ``on_evict(key, value)`` is called for each entry the cache drops on its own: evicted
    for room (or by a smaller budget), or the old entry of a key whose new value was
    refused. Not for :meth:`pop`, :meth:`clear` or a value replaced by :meth:`put`.
    """

    def __init__(
        self,
        name: str,
        budget_bytes: int,
        on_evict: Callable[[K, V], None] | None = None,
    ) -> None:
        if budget_bytes < 0:
            raise ValueError(f"cache {name}: budget must be >= 0 bytes, got {budget_bytes}")
        self.name = name
        self._budget = budget_bytes
        self._on_evict = on_evict
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()  # least recent first
        self._bytes = 0
        self.evictions = 0
        self.refused = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------
    def get(self, key: K) -> V | None:
        """The value under ``key`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def peek(self, key: K) -> V | None:
        """The value under ``key`` without making it recent or counting a hit."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[0]

    def size_of(self, key: K) -> int:
        """Bytes charged for ``key`` (overhead included), 0 when absent."""
        with self._lock:
            item = self._items.get(key)
            return 0 if item is None else item[1]

    def keys_by_age(self) -> list[K]:
        """The keys, least recently used first (a copy)."""
        with self._lock:
            return list(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def budget_bytes(self) -> int:
        return self._budget

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self.name,
                self._budget,
                self._bytes,
                len(self._items),
                self.evictions,
                self.refused,
                self.hits,
                self.misses,
            )

    # -- changing --------------------------------------------------------------
    def put(self, key: K, value: V, size: int) -> bool:
        """Keep ``value`` under ``key``, charged ``size`` bytes (plus the entry overhead),
        as the most recently used entry; evicts others to stay within the budget.

        Putting a key again replaces its value and size (a value that grew is put again
        with its new size). False when the entry alone exceeds the budget: it is not
        kept, and neither is the key's old entry.
        """
        charged = max(0, size) + ENTRY_OVERHEAD_BYTES
        evicted: list[tuple[K, V]] = []
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if charged > self._budget:
                self.refused += 1
                if old is not None and old[0] is not value:
                    evicted.append((key, old[0]))
                kept = False
            else:
                self._items[key] = (value, charged)
                self._bytes += charged
                evicted += self._shrink_locked()
                kept = True
        self._evicted(evicted)
        return kept

    def pop(self, key: K) -> V | None:
        """Remove ``key`` (not counted as an eviction); its value, or None."""
        with self._lock:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self._bytes -= item[1]
            return item[0]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def set_budget(self, budget_bytes: int) -> None:
        """A new budget; entries beyond it are evicted now."""
        if budget_bytes < 0:
            raise ValueError(f"cache {self.name}: budget must be >= 0 bytes, got {budget_bytes}")
        with self._lock:
            self._budget = budget_bytes
            evicted = self._shrink_locked()
        self._evicted(evicted)

    def _shrink_locked(self) -> list[tuple[K, V]]:
        evicted = []
        while self._bytes > self._budget and self._items:
            key, (value, charged) = self._items.popitem(last=False)
            self._bytes -= charged
            self.evictions += 1
            evicted.append((key, value))
        return evicted

    def _evicted(self, evicted: list[tuple[K, V]]) -> None:
        if self._on_evict is not None:
            for key, value in evicted:
                self._on_evict(key, value)
