"""The byte-budgeted LRU every growing cache of the agent is built on."""

from __future__ import annotations

import threading

import pytest

from rover.byte_cache import ENTRY_OVERHEAD_BYTES, ByteLru

ENTRY = 100 + ENTRY_OVERHEAD_BYTES  # what a put of size 100 is charged


def test_put_evicts_the_least_recently_used_entries_to_stay_within_the_budget() -> None:
    evicted: list[tuple[str, int]] = []
    cache = ByteLru[str, int]("test", 3 * ENTRY, lambda k, v: evicted.append((k, v)))
    for i, key in enumerate("abc"):
        assert cache.put(key, i, 100)
    assert cache.bytes == 3 * ENTRY and len(cache) == 3
    assert cache.get("a") == 0  # "a" is now the most recent: "b" is the oldest
    assert cache.put("d", 3, 100)
    assert evicted == [("b", 1)]
    assert cache.keys_by_age() == ["c", "a", "d"]
    assert cache.put("e", 4, 250)  # needs the room of two entries
    assert evicted == [("b", 1), ("c", 2), ("a", 0)]
    assert cache.keys_by_age() == ["d", "e"]
    assert cache.bytes == ENTRY + 250 + ENTRY_OVERHEAD_BYTES <= cache.budget_bytes
    stats = cache.stats()
    assert (stats.name, stats.entries, stats.bytes, stats.evictions) == ("test", 2, cache.bytes, 3)
    assert (stats.refused, stats.hits) == (0, 1)


def test_an_entry_bigger_than_the_whole_budget_is_refused_and_counted() -> None:
    evicted: list[str] = []
    cache = ByteLru[str, str]("test", 1000, lambda k, v: evicted.append(v))
    assert cache.put("small", "kept", 10)
    assert not cache.put("huge", "not kept", 1000)  # the overhead makes it too big
    assert "huge" not in cache and cache.get("small") == "kept"
    assert cache.stats().refused == 1 and cache.stats().evictions == 0
    # A key whose value grows beyond the budget loses its old value too.
    assert not cache.put("small", "bigger", 5000)
    assert "small" not in cache and cache.bytes == 0 and evicted == ["kept"]
    assert cache.stats().refused == 2


def test_putting_a_key_again_replaces_its_value_and_size() -> None:
    cache = ByteLru[str, list[int]]("test", 4 * ENTRY)
    grows: list[int] = []
    cache.put("grows", grows, 100)
    cache.put("other", [], 100)
    grows.extend(range(10))
    cache.put("grows", grows, 300)  # the same value, charged again now that it grew
    assert cache.size_of("grows") == 300 + ENTRY_OVERHEAD_BYTES
    assert cache.bytes == 300 + ENTRY_OVERHEAD_BYTES + ENTRY
    assert cache.keys_by_age() == ["other", "grows"]
    assert cache.stats().evictions == 0


def test_misses_hits_peek_and_pop() -> None:
    cache = ByteLru[int, str]("test", 10 * ENTRY)
    assert cache.get(1) is None
    cache.put(1, "one", 100)
    cache.put(2, "two", 100)
    assert cache.peek(1) == "one"  # neither recent nor a hit
    assert cache.keys_by_age() == [1, 2]
    assert cache.pop(1) == "one" and cache.pop(1) is None
    assert cache.bytes == ENTRY
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions) == (0, 1, 0)


def test_a_smaller_budget_evicts_at_once() -> None:
    cache = ByteLru[int, int]("test", 10 * ENTRY)
    for i in range(10):
        cache.put(i, i, 100)
    cache.set_budget(3 * ENTRY)
    assert cache.keys_by_age() == [7, 8, 9]
    assert cache.stats().evictions == 7 and cache.bytes == 3 * ENTRY
    with pytest.raises(ValueError, match="budget must be >= 0"):
        cache.set_budget(-1)
    with pytest.raises(ValueError, match="budget must be >= 0"):
        ByteLru("bad", -5)


def test_eviction_callbacks_may_use_the_cache() -> None:
    seen: list[int] = []

    def on_evict(key: int, value: int) -> None:
        seen.append(key)
        assert key not in cache  # called once the entry is gone and the lock released
        assert cache.peek(key) is None

    cache: ByteLru[int, int] = ByteLru("test", 2 * ENTRY, on_evict)
    for i in range(4):
        cache.put(i, i, 100)
    assert seen == [0, 1]


def test_threads_never_see_the_budget_exceeded() -> None:
    cache = ByteLru[tuple[int, int], int]("test", 50 * ENTRY)
    over: list[int] = []

    def work(thread: int) -> None:
        for i in range(2000):
            cache.put((thread, i), i, 100)
            cache.get((thread, i - 1))
            held = cache.stats().bytes
            if held > cache.budget_bytes:
                over.append(held)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert not over and stats.entries == 50 and stats.bytes == 50 * ENTRY
    assert stats.evictions == 4 * 2000 - 50
