"""The kernel's ceiling on perf sampling rates, read from the host's /proc.

``kernel.perf_event_max_sample_rate`` caps the frequency of a perf event: above it
``perf_event_open`` fails with EINVAL, which bcc reports as a bare failure to attach.
The kernel also lowers the value by itself when sampling interrupts take too long
(``perf: interrupt took too long ... lowering kernel.perf_event_max_sample_rate``), so
it is read when a rate is chosen, never assumed.
"""

from __future__ import annotations

import logging

from rover.hostfs import HostFS

log = logging.getLogger(__name__)

MAX_SAMPLE_RATE_FILE = "/proc/sys/kernel/perf_event_max_sample_rate"


def max_sample_rate(hostfs: HostFS) -> int | None:
    """Samples per second the kernel allows a perf event, or None when it cannot be read."""
    path = hostfs.host_path(MAX_SAMPLE_RATE_FILE)
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        log.debug("cannot read %s: %s", path, exc)
        return None


class SampleRateTooHigh(ValueError):
    """A rate above the kernel's limit; ``shortest_period`` is the limit as a period."""

    def __init__(self, frequency: int, limit: int) -> None:
        super().__init__(
            f"{frequency} samples per second, above the kernel's limit of {limit} "
            "(kernel.perf_event_max_sample_rate)"
        )
        self.frequency = frequency
        self.limit = limit

    @property
    def shortest_period(self) -> str:
        """The shortest sampling period the limit allows, e.g. ``10us``."""
        ns = -(-1_000_000_000 // max(1, self.limit))  # rounded up: at most `limit` a second
        for unit, size in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
            if ns % size == 0:
                return f"{ns // size}{unit}"
        return f"{ns}ns"


def check_sample_rate(frequency: int, hostfs: HostFS) -> None:
    """Raise :class:`SampleRateTooHigh` when the host kernel refuses ``frequency``.

    An unreadable limit (an old kernel, a /proc without it) passes: the attach then
    says what it can.
    """
    limit = max_sample_rate(hostfs)
    if limit is not None and frequency > limit:
        raise SampleRateTooHigh(frequency, limit)
