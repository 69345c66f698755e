"""One-second slot windows on synthetic series (spec 4.7.2, documented intent)."""

from rover.continuous.windows import SlotWindow, WindowStore


def window_of(series: dict[int, float], capacity: int = 60) -> SlotWindow:
    window = SlotWindow(capacity)
    for slot in sorted(series):
        window.add(slot, series[slot])
    return window


def test_fires_at_exactly_count_slots_and_not_one_less():
    window = window_of({1: 90, 2: 90, 3: 10, 4: 90, 5: 10})
    assert window.match(80, period=5, count=3, anchor=5) == 90
    assert window.match(80, period=5, count=4, anchor=5) is None


def test_a_value_equal_to_the_threshold_counts():
    window = window_of({1: 80.0, 2: 79.999})
    assert window.match(80, period=2, count=1, anchor=2) == 80.0
    assert window.match(80, period=2, count=2, anchor=2) is None


def test_current_is_the_most_recent_matching_slot():
    window = window_of({1: 91, 2: 92, 3: 93, 4: 10})
    assert window.match(90, period=4, count=2, anchor=4) == 93


def test_slots_age_out_of_the_items_own_period():
    window = window_of({1: 99, 2: 99, 3: 99, 4: 1, 5: 1, 6: 1})
    assert window.match(50, period=6, count=3, anchor=6) == 99
    assert window.match(50, period=5, count=3, anchor=6) is None  # slot 1 is out: only 2 left
    assert window.match(50, period=5, count=2, anchor=6) == 99
    # the window follows the anchor: one second later slot 2 is out too
    window.add(7, 1)
    assert window.match(50, period=5, count=2, anchor=7) is None


def test_counts_over_the_items_period_not_the_whole_ring():
    # Rover's quirk would count all 60 slots of a ring sized by another item's period.
    window = window_of({s: 99 for s in range(1, 51)} | {s: 0 for s in range(51, 61)}, capacity=60)
    assert window.match(50, period=10, count=1, anchor=60) is None
    assert window.match(50, period=60, count=50, anchor=60) == 99


def test_empty_slots_never_count_even_for_a_zero_threshold():
    window = window_of({1: 5, 4: 5})  # 2, 3, 5 are gaps
    assert window.match(0, period=5, count=2, anchor=5) == 5
    assert window.match(0, period=5, count=3, anchor=5) is None
    assert SlotWindow(10).match(0, period=10, count=1, anchor=10) is None


def test_period_one_looks_at_the_anchor_slot_only():
    window = window_of({1: 99, 2: 10})
    assert window.match(50, period=1, count=1, anchor=2) is None
    assert window.match(50, period=1, count=1, anchor=1) == 99
    assert window.match(50, period=1, count=1, anchor=3) is None  # nothing fetched in slot 3


def test_slots_after_the_anchor_are_not_counted():
    window = window_of({1: 99, 2: 99, 3: 99})
    assert window.match(50, period=2, count=2, anchor=2) == 99
    assert window.match(50, period=2, count=3, anchor=3) is None


def test_the_last_sample_in_a_slot_wins():
    window = SlotWindow(10)
    window.add(3, 99)
    window.add(3, 10)
    assert window.latest() == (3, 10)
    assert window.match(50, period=10, count=1, anchor=3) is None
    window.add(3, 70)
    assert window.match(50, period=10, count=1, anchor=3) == 70
    assert len(window) == 1


def test_late_samples_are_ignored_and_history_is_bounded_by_capacity():
    window = SlotWindow(3)
    for slot in range(1, 11):
        window.add(slot, float(slot))
    window.add(5, 100.0)  # older than the newest slot
    assert len(window) == 3
    assert window.latest() == (10, 10.0)
    assert window.match(0, period=10, count=4, anchor=10) is None  # only 3 slots kept
    assert window.match(0, period=10, count=3, anchor=10) == 10.0


def test_store_keeps_only_retained_series_and_resizes_them():
    store = WindowStore()
    store.retain({"a": 5, "b": 5})
    store.add("a", 1, 1.0)
    store.add("zzz", 1, 1.0)  # not retained: ignored
    assert store.get("zzz") is None
    store.retain({"a": 2})
    assert store.get("b") is None
    window = store.get("a")
    assert window is not None and window.capacity == 2 and window.latest() == (1, 1.0)
    store.discard(["a"])
    assert len(store) == 0
