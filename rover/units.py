"""Parsing of human-written durations, frequencies and sizes (``500ms``, ``20m``, ``400KB``)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | int | float) -> float:
    """Seconds from ``"500ms"``, ``"5s"``, ``"20m"``, ``"1h"`` or a bare number of seconds.

    Raises ValueError with the offending text for anything else, including
    negative values.
    """
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"invalid duration {text!r}: must not be negative")
        return float(text)
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit, e.g. 500ms, 30s, 20m, 1h"
        )
    return float(m.group(1)) * _SECONDS[m.group(2) or "s"]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_byte_size(text: str | int) -> int:
    """Bytes from ``"400KB"``, ``"4MiB"``, ``"512"``: units are binary whatever their
    spelling (``KB`` = ``KiB`` = 1024), as Rover's ``RAMInBytes`` reads them."""
    if isinstance(text, bool):
        raise ValueError(f"invalid size {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"invalid size {text!r}: must not be negative")
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"invalid size {text!r}: use a number with a unit, e.g. 400KB, 4MiB")
    return int(float(m.group(1)) * _SIZE_FACTORS[m.group(2).lower()])


def frequency_from_period(period: str) -> int:
    """Samples per second for a sampling period such as Rover's ``dump_period: 9ms``."""
    seconds = parse_duration(period)
    if seconds <= 0:
        raise ValueError(f"invalid period {period!r}: must be greater than zero")
    return max(1, int(1.0 / seconds))
