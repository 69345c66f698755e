"""Shared pieces of the readers that turn files back into a :class:`Profile`.

Files name processes but often not their pids (folded stacks, speedscope), so
processes read back get stand-in pids: a process whose name is a number (how
exports show a process without a name) gets that number, any other name a
negative pid, which exports never show as a pid.
"""

from __future__ import annotations

from rover.profile import ProcessInfo, Profile, ProfileType, ValueType

# A single column of numbers, as folded stacks carry, means by convention:
FOLDED_VALUE = {
    # sample counts (bcc's profile -f, perf + stackcollapse, rover's default)
    ProfileType.ON_CPU: (ValueType("samples", "count"), 1),
    # microseconds blocked (bcc's offcputime -f, rover's default), kept as nanoseconds
    ProfileType.OFF_CPU: (ValueType("off_cpu", "nanoseconds"), 1000),
}

# Nanoseconds per unit, for units that are durations.
TIME_UNITS = {
    "nanoseconds": 1,
    "microseconds": 1_000,
    "milliseconds": 1_000_000,
    "seconds": 1_000_000_000,
}


class CorruptProfile(ValueError):
    """A file of a known format that cannot be read; the message says where and why."""


def count_or_time_value(profile_type: ProfileType, unit: str) -> tuple[ValueType, int]:
    """The value type of a single column in ``unit``, and the factor to our unit.

    Counts are samples (on-CPU) or switches (off-CPU); durations are CPU or
    blocked time, kept in nanoseconds.
    """
    on_cpu = profile_type is ProfileType.ON_CPU
    if unit in TIME_UNITS:
        name = "cpu" if on_cpu else "off_cpu"
        return ValueType(name, "nanoseconds"), TIME_UNITS[unit]
    if unit in ("none", "count", ""):
        return ValueType("samples" if on_cpu else "switches", "count"), 1
    return ValueType(unit, unit), 1  # bytes and the like: shown as they are


class ProcessNumbering:
    """Gives each process read from a file a pid, and records its name."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._by_name: dict[str, int] = {}

    def pid(self, name: str, pid: int = 0) -> int:
        if pid > 0:
            if name:
                self.profile.processes.setdefault(pid, ProcessInfo(pid, name))
            return pid
        known = self._by_name.get(name)
        if known is not None:
            return known
        if name.isdigit() and int(name) > 0:
            number = int(name)
        else:
            number = -(len(self._by_name) + 1)
            self.profile.processes[number] = ProcessInfo(number, name)
        self._by_name[name] = number
        return number
