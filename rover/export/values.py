"""Which number of a profile an export shows, and in which unit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rover.profile import Profile, ProfileType

# What a bare export shows: samples for on-CPU, blocked time for off-CPU.
DEFAULT_VALUE = {ProfileType.ON_CPU: "samples", ProfileType.OFF_CPU: "off_cpu"}

# value type -> (unit label, raw units per shown unit). Off-CPU time is shown
# in microseconds: nanoseconds of blocking are noise and make huge numbers.
_DISPLAY = {
    "samples": ("samples", 1),
    "cpu": ("ns", 1),
    "switches": ("switches", 1),
    "off_cpu": ("µs", 1000),
}

# nanoseconds per shown unit, for units that are durations
_NS_PER_UNIT = {"ns": 1, "µs": 1000}


@dataclass(frozen=True, slots=True)
class ValueView:
    """One column of a profile's values, scaled for display."""

    name: str
    index: int
    unit: str
    divisor: int

    def of(self, values: list[int]) -> int:
        """The shown value of one stack's raw values."""
        return values[self.index] // self.divisor

    def total(self, column: Iterable[int]) -> int:
        """The shown total of a column of raw values: each stack rounded down on its own."""
        if self.divisor == 1:
            return sum(column)
        return sum(value // self.divisor for value in column)

    @property
    def ns_per_unit(self) -> int:
        """Nanoseconds per shown unit, or 0 when the value is not a duration."""
        return _NS_PER_UNIT.get(self.unit, 0)


def select_value(profile: Profile, value: str | None = None) -> ValueView:
    """The view of ``value`` (None: the profile type's default) in ``profile``.

    Raises ValueError naming the valid choices when the profile has no such value.
    """
    name = value if value is not None else _default_value(profile)
    for index, value_type in enumerate(profile.value_types):
        if value_type.type == name:
            unit, divisor = _DISPLAY.get(name, _fallback_display(value_type.type, value_type.unit))
            return ValueView(name, index, unit, divisor)
    choices = ", ".join(vt.type for vt in profile.value_types)
    raise ValueError(
        f"unknown value {name!r} for an {profile.type.value} profile; choose one of: {choices}"
    )


def _default_value(profile: Profile) -> str:
    """The type's usual value; else (profiles read from other tools' files) the first one."""
    names = [vt.type for vt in profile.value_types]
    default = DEFAULT_VALUE[profile.type]
    return default if default in names or not names else names[0]


def _fallback_display(type_name: str, unit: str) -> tuple[str, int]:
    if unit == "nanoseconds":
        return "ns", 1
    return type_name, 1
