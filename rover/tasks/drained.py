"""What one drain of an engine becomes: a :class:`Profile` of some of its processes.

The CLI run (``runner.py``) and the agent's tasks (``manager.py``) both build their profiles
here, so they report the same counters and weigh an on-CPU sample the same.
"""

from __future__ import annotations

from collections.abc import Mapping

from rover.bpf.engine import DrainResult
from rover.profile import ProcessInfo, Profile, ProfileType
from rover.symbols import Symbolizer
from rover.tasks.stacks import add_raw_stacks

# Not a loss: the total of events the kernel counted (progress and metrics read it).
_NOT_REPORTED = frozenset({"events"})


def reported_counters(counters: Mapping[str, int]) -> dict[str, int]:
    """The drain's counters a person should see: what was dropped or failed, when non-zero."""
    return {name: n for name, n in counters.items() if n and name not in _NOT_REPORTED}


def sample_period_ns(profile_type: ProfileType, frequency: int) -> int:
    """What one on-CPU sample stands for at ``frequency`` Hz; 0 for other types."""
    if profile_type is not ProfileType.ON_CPU:
        return 0
    return 1_000_000_000 // max(1, frequency)


def profile_from_drain(
    drained: DrainResult,
    profile_type: ProfileType,
    frequency: int,
    symbolizer: Symbolizer,
    processes: Mapping[int, ProcessInfo],
    start_time_ns: int = 0,
    duration_ns: int = 0,
) -> Profile:
    """The stacks of ``processes`` in ``drained``, symbolized, with the drain's reported
    counters and the symbolizer's (``unsymbolized_frames``, ``stacks_empty``) counted in it."""
    profile = Profile.new(
        profile_type,
        start_time_ns=start_time_ns,
        duration_ns=duration_ns,
        period_ns=sample_period_ns(profile_type, frequency),
        processes=dict(processes),
    )
    for name, n in reported_counters(drained.counters).items():
        profile.count(name, n)
    add_raw_stacks(profile, drained.stacks, symbolizer, frozenset(processes))
    return profile
