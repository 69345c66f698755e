"""Raw stacks to profile samples (rover/tasks/stacks.py): order, markers, filtering."""

from __future__ import annotations

import pytest

from rover.bpf.engine import RawStack
from rover.profile import Frame, FrameKind, Profile, ProfileType
from rover.tasks.stacks import add_raw_stacks
from rover.unwind.markers import SIGALTSTACK, TRUNCATED


class NameSymbolizer:
    """Names each address after itself; addresses >= 0x9000 are left unsymbolized."""

    def user_frames(self, pid: int, addresses) -> list[Frame]:
        return [Frame(f"f{a:x}", FrameKind.USER, "app", symbolized=a < 0x9000) for a in addresses]

    def kernel_frames(self, addresses) -> list[Frame]:
        return [Frame(f"k{a:x}", FrameKind.KERNEL, "[kernel]") for a in addresses]


@pytest.mark.parametrize(
    ("marker", "name"), [(TRUNCATED, "[truncated]"), (SIGALTSTACK, "[sigaltstack]")]
)
def test_marker_ends_the_user_stack_at_its_root_and_is_not_unsymbolized(marker, name):
    profile = Profile.new(ProfileType.OFF_CPU)
    raw = RawStack(7, (0x1000, 0x2000, marker), (0xF1,), (3, 300))
    add_raw_stacks(profile, [raw], NameSymbolizer(), {7})
    [(key, values)] = list(profile)
    assert [f.name for f in key.frames] == [name, "f2000", "f1000", "kf1"]
    assert values == [3, 300]
    assert profile.counters.get("unsymbolized_frames", 0) == 0


def test_unsymbolized_frames_are_counted_and_other_pids_skipped():
    profile = Profile.new(ProfileType.ON_CPU, period_ns=10)
    stacks = [RawStack(7, (0x9001, 0x1000), (), (2,)), RawStack(8, (0x1000,), (), (5,))]
    add_raw_stacks(profile, stacks, NameSymbolizer(), {7})
    [(key, values)] = list(profile)
    assert key.pid == 7 and values == [2, 20]
    assert profile.counters["unsymbolized_frames"] == 1


def test_a_stack_with_no_frames_is_counted_not_added():
    profile = Profile.new(ProfileType.ON_CPU, period_ns=10)
    add_raw_stacks(profile, [RawStack(7, (), (), (4,))], NameSymbolizer(), {7})
    assert len(profile) == 0 and profile.counters["stacks_empty"] == 1
