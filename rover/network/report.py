"""What one traffic contributes to a flush's reports (spec 8.11), as plain values."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rover.config.model import NetworkConfig
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


class ReportSink(Protocol):
    counters: dict[str, int]

    def send(self, reports: Sequence[TrafficReport], timestamp_ms: int) -> None: ...


class TrafficReporter:
    """The monitor's sender: each flush's traffics as reports, to the backend's sink."""

    def __init__(self, sink: ReportSink, config: NetworkConfig) -> None:
        self.sink = sink
        self.config = config
        # wall-clock time of boot, once (spec 8.10): monotonic event times -> epoch
        self.boot_ns_wall = time.time_ns() - time.monotonic_ns()

    def send(self, traffics: list[Traffic], flush_ms: int) -> None:
        http = self.config.protocol_analyze.sampling_http
        reports = [
            traffic_report(
                traffic,
                prefix=self.config.meter_prefix,
                flush_ms=flush_ms,
                boot_ns_wall=self.boot_ns_wall,
                request_encoding=http.default_request_encoding,
                response_encoding=http.default_response_encoding,
            )
            for traffic in traffics
        ]
        self.sink.send(reports, flush_ms)

    @property
    def counters(self) -> dict[str, int]:
        return {f"report_{name}": n for name, n in self.sink.counters.items()}
