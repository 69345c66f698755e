"""Sampled-trace logs (spec 8.9) and span attached events (spec 8.10), as plain values.

``rover/backend/network.py`` turns them into ``LogData`` and ``SpanAttachedEvent``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rover.network.content import bytes_size, data_content
from rover.network.meters import side
from rover.network.model import (
    DataSyscall,
    Direction,
    HttpMessage,
    PeerLabel,
    Role,
    SampledExchange,
    TraceContext,
    Traffic,
)

LOG_KIND = ("LOG_KIND", "NET_PROFILING_SAMPLED_TRACE")
DEFAULT_ENCODING = "UTF-8"

Tags = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SampledLog:
    """One sampled-trace log record: a ``LogData`` with a JSON body."""

    timestamp_ms: int  # the flush's, the same for every log of a flush
    service: str
    instance: str
    layer: str
    trace_id: str
    body: str  # the JSON text
    tags: Tags = (LOG_KIND,)


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """One span attached event; times are Unix epoch ns."""

    event: str
    start_ns: int
    end_ns: int
    tags: Tags
    trace: TraceContext


def uri_path(target: str) -> str:
    """The request target without its query (from the first ``?`` not at position 0)."""
    cut = target.find("?")
    return target[:cut] if cut > 0 else target


def _process(process_id: str = "", peer: PeerLabel | None = None) -> dict[str, object]:
    if peer is not None:
        return {
            "process_id": peer.value if peer.kind == "process_id" else "",
            "local": peer.kind == "local",
            "address": peer.value if peer.kind == "address" else "",
        }
    return {"process_id": process_id, "local": False, "address": ""}


def log_body(traffic: Traffic, sampled: SampledExchange) -> str:
    """The JSON body of spec 8.9, every key present, in the spec's order.

    An unknown role is reported as ``client`` in ``detect_point`` (the OAP has no
    ``unknown`` detect point, rule 1), and the local process then fills
    ``client_process``, consistently with the meters.
    """
    own = side(traffic.role)
    exchange = sampled.exchange
    local = _process(traffic.process_id)
    peer = _process(peer=traffic.peer)
    body = {
        "uri": uri_path(exchange.request.target),
        "reason": sampled.reason,
        "latency": exchange.duration_ms,
        "trace_provider": sampled.trace.provider,
        "client_process": local if own == "client" else peer,
        "server_process": local if own == "server" else peer,
        "detect_point": own,
        "component": "http",
        "ssl": traffic.ssl,
        "status": exchange.response.status,
    }
    return json.dumps(body, separators=(",", ":"))


def sampled_logs(traffic: Traffic, flush_ms: int) -> list[SampledLog]:
    """One log per sampled exchange of the traffic, stamped with the flush time."""
    entity = traffic.entity
    return [
        SampledLog(
            timestamp_ms=flush_ms,
            service=entity.service_name,
            instance=entity.instance_name,
            layer=entity.layer,
            trace_id=sampled.trace.trace_id,
            body=log_body(traffic, sampled),
        )
        for sampled in traffic.sampled
    ]


def span_events(
    traffic: Traffic,
    boot_ns_wall: int,
    *,
    request_encoding: str = DEFAULT_ENCODING,
    response_encoding: str = DEFAULT_ENCODING,
) -> list[SpanEvent]:
    """The events of spec 8.10 for the sampled exchanges whose rule has settings.

    ``boot_ns_wall`` is the wall-clock time of boot in epoch ns (now − CLOCK_MONOTONIC),
    added to the monotonic times of messages and syscalls.
    """
    events: list[SpanEvent] = []
    for sampled in traffic.sampled:
        settings = sampled.rule.settings
        if settings is None:
            continue
        exchange = sampled.exchange
        if settings.require_complete_request:
            events += _message_events(
                traffic,
                sampled.trace,
                exchange.request,
                "request",
                settings.max_request_size,
                request_encoding,
                boot_ns_wall,
            )
        if settings.require_complete_response:
            events += _message_events(
                traffic,
                sampled.trace,
                exchange.response,
                "response",
                settings.max_response_size,
                response_encoding,
                boot_ns_wall,
            )
    return events


def _entity_tags(traffic: Traffic) -> Tags:
    return (
        ("service_name", traffic.entity.service_name),
        ("service_instance_name", traffic.entity.instance_name),
        ("process_name", traffic.entity.process_name),
    )


def _role_name(role: Role) -> str:
    return {Role.CLIENT: "client", Role.SERVER: "server"}.get(role, "unknown")


def _message_events(
    traffic: Traffic,
    trace: TraceContext,
    message: HttpMessage,
    data_type: str,
    cap: int,
    encoding: str,
    boot_ns_wall: int,
) -> list[SpanEvent]:
    """The message's event, then one per syscall; none when its body cannot be decoded."""
    content = data_content(message, cap, encoding)
    if content is None:
        return []
    tags: Tags = (
        ("data_size", bytes_size(message.size)),
        ("data_content", content),
        ("data_direction", "inbound" if message.direction is Direction.RECV else "outbound"),
        ("data_type", data_type),
        ("connection_role", _role_name(traffic.role)),
        *_entity_tags(traffic),
    )
    end = message.end_ns or message.start_ns
    event = f"HTTP {data_type.capitalize()} Sampling"
    events = [SpanEvent(event, boot_ns_wall + message.start_ns, boot_ns_wall + end, tags, trace)]
    seen: set[int] = set()
    for syscall in (*message.header_syscalls, *message.body_syscalls):
        if syscall.data_id in seen or syscall.syscall.startswith("SSL_"):
            continue  # TLS-library calls produce no syscall event
        seen.add(syscall.data_id)
        events.append(_syscall_event(traffic, trace, syscall, boot_ns_wall))
    return events


def _syscall_event(
    traffic: Traffic, trace: TraceContext, syscall: DataSyscall, boot_ns_wall: int
) -> SpanEvent:
    """A ``Syscall <Name>`` event.

    Rover counts the packets a call handled (skb lengths, their count and the
    interface) from kprobes we do not have. We send what we know and mark the rest
    as not observed: ``package_size`` is the bytes the call transferred (what
    Rover's ingress side measures too; egress skbs would add the TCP/IP headers),
    ``package_count`` is ``0``, ``network_name`` is ``""`` and ``network_index`` is
    ``0`` (Rover's own values for an unknown interface).
    """
    tags: Tags = (
        ("package_size", bytes_size(syscall.size)),
        ("package_count", "0"),
        ("network_name", ""),
        ("network_index", "0"),
        *_entity_tags(traffic),
    )
    if syscall.rtt_count > 0:  # says ns, carries µs: Rover's quirk, kept on the wire
        tags += (("avg_rtt_time", f"{syscall.rtt_sum_us // syscall.rtt_count}ns"),)
    return SpanEvent(
        f"Syscall {syscall.syscall}",
        boot_ns_wall + syscall.start_ns,
        boot_ns_wall + syscall.end_ns,
        tags,
        trace,
    )
