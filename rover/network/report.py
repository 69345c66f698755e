"""What one traffic contributes to a flush's reports (spec 8.11), as plain values."""

from __future__ import annotations

from dataclasses import dataclass

from rover.network.meters import NetworkMeter, traffic_meters
from rover.network.model import Traffic
from rover.network.traces import DEFAULT_ENCODING, SampledLog, SpanEvent, sampled_logs, span_events
from rover.process.model import Entity


@dataclass(frozen=True, slots=True)
class TrafficReport:
    """The meters, sampled-trace logs and span events of one traffic's local entity."""

    entity: Entity
    meters: tuple[NetworkMeter, ...] = ()
    logs: tuple[SampledLog, ...] = ()
    events: tuple[SpanEvent, ...] = ()


def traffic_report(
    traffic: Traffic,
    *,
    prefix: str,
    flush_ms: int,
    boot_ns_wall: int,
    request_encoding: str = DEFAULT_ENCODING,
    response_encoding: str = DEFAULT_ENCODING,
) -> TrafficReport:
    return TrafficReport(
        entity=traffic.entity,
        meters=tuple(traffic_meters(traffic, prefix)),
        logs=tuple(sampled_logs(traffic, flush_ms)),
        events=tuple(
            span_events(
                traffic,
                boot_ns_wall,
                request_encoding=request_encoding,
                response_encoding=response_encoding,
            )
        ),
    )
