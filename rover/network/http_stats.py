"""HTTP/1 statistics of one side of a connection or traffic over a report interval.

Exchanges are folded in as they complete, so an interval of a busy server costs a few
counters per connection, not a list of every request (spec 8.7 meters).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from rover.network.model import HttpExchange

# spec 8.7 rule 10: the third bound is 1048, not 1024, in Rover.
PACKAGE_SIZE_BUCKETS: tuple[int, ...] = (
    256, 512, 1048, 1536, 2048, 3072, 5120, 8192, 10240, 15360, 20480, 35840, 51200,
    76800, 102400, 204800, 512000, 819200, 1048576, 1572864, 2097152, 5242880,
    10485760, 20971520, 52428800,
)  # fmt: skip
# spec 8.7 rule 11, in ms.
DURATION_BUCKETS_MS: tuple[int, ...] = (
    1, 2, 5, 10, 15, 20, 25, 30, 40, 45, 50, 60, 65, 70, 80, 90, 100, 110, 130, 150, 170,
    200, 230, 260, 290, 330, 380, 430, 480, 500, 600, 700, 800, 900, 1000, 1100, 1300,
    1500, 1800, 2000, 5000, 10000, 15000, 20000, 30000,
)  # fmt: skip


def bucket_index(bounds: Sequence[float], value: float) -> int:
    """The highest bucket whose lower bound is <= value; below the first bound, the first
    (spec 8.6 "bucket choice")."""
    return max(0, bisect.bisect_right(bounds, value) - 1)


def _zeros(n: int) -> list[int]:
    return [0] * n


@dataclass(slots=True)
class HttpStats:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    request_bytes: int = 0
    response_bytes: int = 0
    duration_ms: int = 0
    request_size_hist: list[int] = field(default_factory=lambda: _zeros(len(PACKAGE_SIZE_BUCKETS)))
    response_size_hist: list[int] = field(default_factory=lambda: _zeros(len(PACKAGE_SIZE_BUCKETS)))
    duration_hist: list[int] = field(default_factory=lambda: _zeros(len(DURATION_BUCKETS_MS)))

    def add(self, exchange: HttpExchange) -> None:
        request_size = exchange.request.size
        response_size = exchange.response.size
        duration = exchange.duration_ms
        self.requests += 1
        self.statuses[exchange.response.status] += 1
        self.request_bytes += request_size
        self.response_bytes += response_size
        self.duration_ms += duration
        self.request_size_hist[bucket_index(PACKAGE_SIZE_BUCKETS, request_size)] += 1
        self.response_size_hist[bucket_index(PACKAGE_SIZE_BUCKETS, response_size)] += 1
        self.duration_hist[bucket_index(DURATION_BUCKETS_MS, duration)] += 1

    def merge(self, other: HttpStats) -> None:
        self.requests += other.requests
        self.statuses.update(other.statuses)
        self.request_bytes += other.request_bytes
        self.response_bytes += other.response_bytes
        self.duration_ms += other.duration_ms
        for mine, theirs in (
            (self.request_size_hist, other.request_size_hist),
            (self.response_size_hist, other.response_size_hist),
            (self.duration_hist, other.duration_hist),
        ):
            for i, count in enumerate(theirs):
                mine[i] += count
