"""Network profiling on the wire: meters, sampled-trace logs and span attached events.

Turns the plain values of :mod:`rover.network` into protobuf (spec 8.1, 8.9-8.11)
and sends one flush's worth in Rover's order with :class:`NetworkReportSender`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from rover.backend.errors import BackendUnavailable
from rover.backend.proto.common import Common_pb2
from rover.backend.proto.language_agent import Meter_pb2, Tracing_pb2
from rover.backend.proto.logging import Logging_pb2
from rover.network.meters import NetworkMeter
from rover.network.report import TrafficReport
from rover.network.traces import SampledLog, SpanEvent

log = logging.getLogger(__name__)

_REFERENCE_TYPES = {
    "skywalking": Tracing_pb2.SpanAttachedEvent.SKYWALKING,
    "zipkin": Tracing_pb2.SpanAttachedEvent.ZIPKIN,
}


class NetworkClient(Protocol):
    """The calls of :class:`rover.backend.client.BackendClient` used here."""

    def send_meters(self, collections: list[Meter_pb2.MeterDataCollection]) -> None: ...

    def send_logs(self, logs: list[Logging_pb2.LogData]) -> None: ...

    def send_span_events(self, events: list[Tracing_pb2.SpanAttachedEvent]) -> None: ...


def meter_to_proto(meter: NetworkMeter) -> Meter_pb2.MeterData:
    labels = [Meter_pb2.Label(name=n, value=v) for n, v in meter.labels]
    if meter.buckets is not None:
        return Meter_pb2.MeterData(
            histogram=Meter_pb2.MeterHistogram(
                name=meter.name,
                labels=labels,
                values=[Meter_pb2.MeterBucketValue(bucket=b, count=c) for b, c in meter.buckets],
            )
        )
    value = 0.0 if meter.value is None else meter.value
    return Meter_pb2.MeterData(
        singleValue=Meter_pb2.MeterSingleValue(name=meter.name, labels=labels, value=value)
    )


def meter_collections(
    reports: Iterable[TrafficReport], timestamp_ms: int
) -> list[Meter_pb2.MeterDataCollection]:
    """One collection per (service, instance), in order of first appearance; only the
    first ``MeterData`` of each carries service, instance and timestamp (spec 8.11)."""
    groups: dict[tuple[str, str], Meter_pb2.MeterDataCollection] = {}
    for report in reports:
        if not report.meters:
            continue
        key = (report.entity.service_name, report.entity.instance_name)
        collection = groups.get(key)
        if collection is None:
            collection = groups[key] = Meter_pb2.MeterDataCollection()
        for meter in report.meters:
            data = meter_to_proto(meter)
            if not collection.meterData:
                data.service, data.serviceInstance = key
                data.timestamp = timestamp_ms
            collection.meterData.append(data)
    return list(groups.values())


def log_to_proto(record: SampledLog) -> Logging_pb2.LogData:
    """A sampled-trace log (spec 8.9): JSON body, trace id only, no endpoint."""
    return Logging_pb2.LogData(
        timestamp=record.timestamp_ms,
        service=record.service,
        serviceInstance=record.instance,
        layer=record.layer,
        traceContext=Logging_pb2.TraceContext(traceId=record.trace_id),
        tags=Logging_pb2.LogTags(
            data=[Common_pb2.KeyStringValuePair(key=k, value=v) for k, v in record.tags]
        ),
        body=Logging_pb2.LogDataBody(type="json", json=Logging_pb2.JSONLog(json=record.body)),
    )


def _instant(epoch_ns: int) -> Common_pb2.Instant:
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    return Common_pb2.Instant(seconds=seconds, nanos=nanos)


def event_to_proto(event: SpanEvent) -> Tracing_pb2.SpanAttachedEvent:
    """A span attached event (spec 8.10); the summary stays empty."""
    trace = event.trace
    return Tracing_pb2.SpanAttachedEvent(
        startTime=_instant(event.start_ns),
        event=event.event,
        endTime=_instant(event.end_ns),
        tags=[Common_pb2.KeyStringValuePair(key=k, value=v) for k, v in event.tags],
        traceContext=Tracing_pb2.SpanAttachedEvent.SpanReference(
            type=_REFERENCE_TYPES.get(trace.provider, Tracing_pb2.SpanAttachedEvent.SKYWALKING),
            traceId=trace.trace_id,
            traceSegmentId=trace.segment_id,
            spanId=trace.span_id,
        ),
    )


def logs_per_service(reports: Iterable[TrafficReport]) -> dict[str, list[Logging_pb2.LogData]]:
    """The logs of each service, services in order of first appearance."""
    streams: dict[str, list[Logging_pb2.LogData]] = {}
    for report in reports:
        for record in report.logs:
            streams.setdefault(record.service, []).append(log_to_proto(record))
    return streams


class NetworkReportSender:
    """Sends one flush (spec 8.11): one ``collectBatch`` stream if any meter, one
    ``LogReportService/collect`` stream per service if any log, one
    ``SpanAttachedEventReportService/collect`` stream if any event.

    A failed stream is logged and counted and the next one still tried; nothing is
    retried (the interval's deltas are lost, as in Rover) and nothing raises.

    ``counters``: ``meter_streams``/``log_streams``/``event_streams`` (streams sent),
    ``meters``/``logs``/``events`` (items in them), ``meter_errors``/``log_errors``/
    ``event_errors`` (streams that failed, including items that could not be converted).
    """

    def __init__(self, client: NetworkClient) -> None:
        self._client = client
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "meter_streams", "meters", "meter_errors",
                "log_streams", "logs", "log_errors",
                "event_streams", "events", "event_errors",
            ),
            0,
        )  # fmt: skip

    def send(self, reports: Sequence[TrafficReport], timestamp_ms: int) -> None:
        """Send one flush's reports; ``timestamp_ms`` is the flush's epoch ms."""
        if any(r.meters for r in reports):
            self._guarded("meter", "meters", lambda: self._send_meters(reports, timestamp_ms))
        if any(r.logs for r in reports):
            try:
                streams = logs_per_service(reports)
            except Exception:  # noqa: BLE001 - a bad value must not stop the other streams
                log.exception("network profiling: cannot build the sampled-trace logs")
                self.counters["log_errors"] += 1
                streams = {}
            for service, logs in streams.items():
                send = functools.partial(self._send_logs, logs)
                self._guarded("log", f"logs of service {service!r}", send)
        if any(r.events for r in reports):
            self._guarded("event", "span attached events", lambda: self._send_events(reports))

    def _send_meters(self, reports: Sequence[TrafficReport], timestamp_ms: int) -> int:
        collections = meter_collections(reports, timestamp_ms)
        self._client.send_meters(collections)
        return sum(len(c.meterData) for c in collections)

    def _send_logs(self, logs: list[Logging_pb2.LogData]) -> int:
        self._client.send_logs(logs)
        return len(logs)

    def _send_events(self, reports: Sequence[TrafficReport]) -> int:
        events = [event_to_proto(e) for r in reports for e in r.events]
        self._client.send_span_events(events)
        return len(events)

    def _guarded(self, kind: str, what: str, send: Callable[[], int]) -> None:
        """Run one stream's ``send`` (returns the items sent); count it, log a failure."""
        try:
            sent = send()
        except BackendUnavailable as exc:
            self.counters[f"{kind}_errors"] += 1
            log.warning("network profiling: sending %s failed: %s", what, exc)
            return
        except Exception:  # noqa: BLE001 - never raise into the flush
            self.counters[f"{kind}_errors"] += 1
            log.exception("network profiling: sending %s failed", what)
            return
        self.counters[f"{kind}_streams"] += 1
        self.counters[f"{kind}s"] += sent
