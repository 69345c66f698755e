"""The meters of one traffic over one report interval (spec 8.5-8.7), as plain values.

``prefix`` is the configured meter prefix without its trailing underscore
(``rover_net_p``), as for continuous profiling's meters; names are
``<prefix>_<rest>``, e.g. ``rover_net_p_client_write_counts_counter``.
``rover/backend/network.py`` turns them into ``MeterData``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rover.network.model import L4_BUCKETS_NS, Protocol, Role, Traffic

Labels = tuple[tuple[str, str], ...]  # (name, value), in the order sent
Buckets = tuple[tuple[float, int], ...]  # (lower bound, count), ascending

# Layer-4 histogram bounds (spec 8.6): ns for syscall times, the same numbers ÷ 1000 (µs)
# for RTT, whose kernel-side buckets are chosen comparing µs × 1000 against the ns table.
L4_BOUNDS_NS: tuple[float, ...] = tuple(float(b) for b in L4_BUCKETS_NS)
L4_BOUNDS_US: tuple[float, ...] = tuple(b / 1000 for b in L4_BUCKETS_NS)

# HTTP/1 histogram bounds (spec 8.7 rules 10 and 11); the third size is 1048 in Rover.
HTTP_SIZE_BOUNDS: tuple[int, ...] = (
    256, 512, 1048, 1536, 2048, 3072, 5120, 8192, 10240, 15360, 20480, 35840, 51200, 76800,
    102400, 204800, 512000, 819200, 1048576, 1572864, 2097152, 5242880, 10485760, 20971520,
    52428800,
)  # fmt: skip
HTTP_DURATION_BOUNDS_MS: tuple[int, ...] = (
    1, 2, 5, 10, 15, 20, 25, 30, 40, 45, 50, 60, 65, 70, 80, 90, 100, 110, 130, 150, 170, 200,
    230, 260, 290, 330, 380, 430, 480, 500, 600, 700, 800, 900, 1000, 1100, 1300, 1500, 1800,
    2000, 5000, 10000, 15000, 20000, 30000,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class NetworkMeter:
    """One meter: a single value (``value``) or a histogram (``buckets``), never both."""

    name: str
    labels: Labels
    value: float | None = None
    buckets: Buckets | None = None


def side(role: Role) -> str:
    """The meters' role: ``server`` or ``client`` (unknown counts as client, spec 8.5)."""
    return "server" if role is Role.SERVER else "client"


def other_side(role: Role) -> str:
    return "client" if role is Role.SERVER else "server"


def common_labels(traffic: Traffic) -> Labels:
    """Spec 8.5: own process id, the one peer label, side, protocol, is_ssl.

    Never ``service`` or ``instance``: the OAP adds those and fails on duplicates.
    """
    own = side(traffic.role)
    protocol = "http" if traffic.protocol in (Protocol.HTTP1, Protocol.HTTP2) else "unknown"
    return (
        (f"{own}_process_id", traffic.process_id),
        (f"{other_side(traffic.role)}_{traffic.peer.kind}", traffic.peer.value),
        ("side", own),
        ("protocol", protocol),
        ("is_ssl", "true" if traffic.ssl else "false"),
    )


def bucket_index(bounds: Sequence[float], value: float) -> int:
    """The highest bucket whose lower bound is <= ``value``; below the first: the first."""
    return max(0, bisect.bisect_right(bounds, value) - 1)


def histogram(bounds: Sequence[float], values: Iterable[float]) -> list[int]:
    counts = [0] * len(bounds)
    for value in values:
        counts[bucket_index(bounds, value)] += 1
    return counts


def traffic_meters(traffic: Traffic, prefix: str) -> list[NetworkMeter]:
    """Every meter of the traffic this interval: layer 4 (8.6), then HTTP/1 (8.7)."""
    labels = common_labels(traffic)
    return _l4_meters(traffic, prefix, labels) + _http_meters(traffic, prefix, labels)


def _l4_meters(traffic: Traffic, prefix: str, labels: Labels) -> list[NetworkMeter]:
    l4 = traffic.l4
    p = f"{prefix}_{side(traffic.role)}_"
    meters: list[NetworkMeter] = []

    def single(name: str, value: float) -> None:
        if value > 0:
            meters.append(NetworkMeter(p + name, labels, value=float(value)))

    def average(name: str, total: int, count: int) -> None:
        if total > 0 and count > 0:
            meters.append(NetworkMeter(p + name, labels, value=total / count))

    single("write_counts_counter", l4.write_count)
    single("write_bytes_counter", l4.write_bytes)
    average("write_exe_time_counter", l4.write_ns, l4.write_count)
    single("read_counts_counter", l4.read_count)
    single("read_bytes_counter", l4.read_bytes)
    average("read_exe_time_counter", l4.read_ns, l4.read_count)
    single("write_rtt_counts_counter", l4.rtt_count)
    average("write_rtt_exe_time_counter", l4.rtt_sum_us, l4.rtt_count)  # µs
    single("connect_counts_counter", l4.connect_count)
    average("connect_exe_time_counter", l4.connect_ns, l4.connect_count)
    single("close_counts_counter", l4.close_count)
    average("close_exe_time_counter", l4.close_ns, l4.close_count)
    single("retransmit_counts_counter", l4.retransmits)
    single("drop_counts_counter", l4.drops)
    for name, bounds, counts in (
        ("write_rtt_histogram", L4_BOUNDS_US, l4.rtt_hist),
        ("write_exe_time_histogram", L4_BOUNDS_NS, l4.write_hist),
        ("read_exe_time_histogram", L4_BOUNDS_NS, l4.read_hist),
        ("connect_exe_time_histogram", L4_BOUNDS_NS, l4.connect_hist),
        ("close_exe_time_histogram", L4_BOUNDS_NS, l4.close_hist),
    ):
        buckets = _buckets(bounds, counts)
        if buckets is not None:
            meters.append(NetworkMeter(p + name, labels, buckets=buckets))
    return meters


def _buckets(bounds: Sequence[float], counts: Sequence[int]) -> Buckets | None:
    """All buckets, ascending, zeros included; None when every count is 0."""
    if not any(counts):
        return None
    padded = list(counts[: len(bounds)]) + [0] * (len(bounds) - len(counts))
    return tuple((float(b), int(c)) for b, c in zip(bounds, padded, strict=True))


def _http_meters(traffic: Traffic, prefix: str, labels: Labels) -> list[NetworkMeter]:
    """Spec 8.7, from the exchanges of the statistics side the traffic role selects."""
    role = Role.SERVER if traffic.role is Role.SERVER else Role.CLIENT
    exchanges = [e for e in traffic.exchanges if e.side is role]
    if not exchanges:
        return []
    p = f"{prefix}_http1_"
    meters: list[NetworkMeter] = []

    def single(name: str, value: float, extra: Labels = ()) -> None:
        if value > 0:  # rule 8: counters and averages accumulating 0 are not sent
            meters.append(NetworkMeter(p + name, labels + extra, value=float(value)))

    def average(name: str, values: list[int]) -> None:
        if sum(values) > 0:
            meters.append(NetworkMeter(p + name, labels, value=sum(values) / len(values)))

    def hist(name: str, bounds: Sequence[int], values: list[int]) -> None:
        buckets = _buckets([float(b) for b in bounds], histogram(bounds, values))
        if buckets is not None:
            meters.append(NetworkMeter(p + name, labels, buckets=buckets))

    single("request_counter", len(exchanges))
    codes: dict[int, int] = {}
    for exchange in exchanges:
        codes[exchange.response.status] = codes.get(exchange.response.status, 0) + 1
    for code in sorted(codes):
        single("response_status_counter", codes[code], (("code", str(code)),))

    request_sizes = [e.request.size for e in exchanges]
    response_sizes = [e.response.size for e in exchanges]
    durations = [e.duration_ms for e in exchanges]
    own = side(traffic.role)
    average("request_package_size_avg", request_sizes)
    average("response_package_size_avg", response_sizes)
    hist("request_package_size_histogram", HTTP_SIZE_BOUNDS, request_sizes)
    hist("response_package_size_histogram", HTTP_SIZE_BOUNDS, response_sizes)
    average(f"{own}_duration_avg", durations)
    hist(f"{own}_duration_histogram", HTTP_DURATION_BOUNDS_MS, durations)
    return meters
