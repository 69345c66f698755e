"""The meters of one traffic over one report interval (spec 8.5-8.7), as plain values.

``prefix`` is the configured meter prefix without its trailing underscore
(``rover_net_p``), as for continuous profiling's meters; names are
``<prefix>_<rest>``, e.g. ``rover_net_p_client_write_counts_counter``.
``rover/backend/network.py`` turns them into ``MeterData``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rover.network.http_stats import DURATION_BUCKETS_MS, PACKAGE_SIZE_BUCKETS
from rover.network.model import L4_BUCKETS_NS, Protocol, Role, Traffic

Labels = tuple[tuple[str, str], ...]  # (name, value), in the order sent
Buckets = tuple[tuple[float, int], ...]  # (lower bound, count), ascending

# Layer-4 histogram bounds (spec 8.6): ns for syscall times, the same numbers ÷ 1000 (µs)
# for RTT, whose kernel-side buckets are chosen comparing µs × 1000 against the ns table.
L4_BOUNDS_NS: tuple[float, ...] = tuple(float(b) for b in L4_BUCKETS_NS)
L4_BOUNDS_US: tuple[float, ...] = tuple(b / 1000 for b in L4_BUCKETS_NS)


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
    """Spec 8.7, from the statistics of the side the traffic role selects."""
    stats = traffic.http
    if stats is None or not stats.requests:
        return []
    p = f"{prefix}_http1_"
    meters: list[NetworkMeter] = []

    def single(name: str, value: float, extra: Labels = ()) -> None:
        if value > 0:  # rule 8: counters and averages accumulating 0 are not sent
            meters.append(NetworkMeter(p + name, labels + extra, value=float(value)))

    def hist(name: str, bounds: Sequence[int], counts: Sequence[int]) -> None:
        buckets = _buckets([float(b) for b in bounds], counts)
        if buckets is not None:
            meters.append(NetworkMeter(p + name, labels, buckets=buckets))

    single("request_counter", stats.requests)
    for code in sorted(stats.statuses):
        single("response_status_counter", stats.statuses[code], (("code", str(code)),))
    own = side(traffic.role)
    single("request_package_size_avg", stats.request_bytes / stats.requests)
    single("response_package_size_avg", stats.response_bytes / stats.requests)
    hist("request_package_size_histogram", PACKAGE_SIZE_BUCKETS, stats.request_size_hist)
    hist("response_package_size_histogram", PACKAGE_SIZE_BUCKETS, stats.response_size_hist)
    single(f"{own}_duration_avg", stats.duration_ms / stats.requests)
    hist(f"{own}_duration_histogram", DURATION_BUCKETS_MS, stats.duration_hist)
    return meters
