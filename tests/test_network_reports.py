"""Network reports: meters (spec 8.5-8.7), logs (8.9), span events (8.10) and sending (8.11)."""

from __future__ import annotations

import gzip
import json
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from fake_oap import (
    LOG_COLLECT,
    SPAN_EVENT_COLLECT,
    FakeOAP,
    fake_oap_fixture,  # noqa: F401 - the fixture
)

from rover.backend import BackendClient
from rover.backend.network import (
    NetworkReportSender,
    event_to_proto,
    log_to_proto,
    meter_collections,
    meter_to_proto,
)
from rover.backend.proto.language_agent import Tracing_pb2
from rover.config import BackendConfig
from rover.network.content import bytes_size, data_content
from rover.network.http_stats import DURATION_BUCKETS_MS as HTTP_DURATION_BOUNDS_MS
from rover.network.http_stats import PACKAGE_SIZE_BUCKETS as HTTP_SIZE_BOUNDS
from rover.network.http_stats import HttpStats, bucket_index
from rover.network.meters import (
    L4_BOUNDS_NS,
    L4_BOUNDS_US,
    NetworkMeter,
    traffic_meters,
)
from rover.network.model import (
    L4_BUCKETS_NS,
    DataSyscall,
    Direction,
    HttpExchange,
    HttpMessage,
    L4Delta,
    PeerLabel,
    Protocol,
    Role,
    SampledExchange,
    SamplingRule,
    SamplingSettings,
    TraceContext,
    Traffic,
)
from rover.network.report import TrafficReport, traffic_report
from rover.network.traces import sampled_logs, span_events, uri_path
from rover.process.model import Entity

PREFIX = "rover_net_p"
ENTITY = Entity("K8S_SERVICE", "prod::checkout", "checkout-7d9f", "app")
OWN_ID = "a" * 64
PEER_ID = "b" * 64


def _traffic(
    role: Role = Role.CLIENT,
    peer: PeerLabel | None = None,
    protocol: Protocol = Protocol.HTTP1,
    ssl: bool = False,
    entity: Entity = ENTITY,
    exchanges: tuple[HttpExchange, ...] | list[HttpExchange] = (),
    **kwargs: Any,
) -> Traffic:
    """A traffic whose HTTP statistics are those of the given exchanges on its side (the
    connection tracker keeps client and server statistics apart, spec 8.7)."""
    statistics_side = Role.SERVER if role is Role.SERVER else Role.CLIENT
    mine = [e for e in exchanges if e.side is statistics_side]
    if mine:
        stats = HttpStats()
        for exchange in mine:
            stats.add(exchange)
        kwargs["http"] = stats
    return Traffic(
        entity=entity,
        process_id=OWN_ID,
        role=role,
        peer=peer or PeerLabel("address", "10.96.0.12:8080"),
        protocol=protocol,
        ssl=ssl,
        **kwargs,
    )


def _l4(**values: Any) -> L4Delta:
    return L4Delta(**values)


def _labels(meter: NetworkMeter) -> dict[str, str]:
    return dict(meter.labels)


def _singles(meters: list[NetworkMeter]) -> dict[str, float | None]:
    return {m.name: m.value for m in meters if m.buckets is None}


# -- labels (8.5) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "peer", "protocol", "ssl", "expected"),
    [
        (
            Role.CLIENT,
            PeerLabel("process_id", PEER_ID),
            Protocol.HTTP1,
            False,
            [
                ("client_process_id", OWN_ID),
                ("server_process_id", PEER_ID),
                ("side", "client"),
                ("protocol", "http"),
                ("is_ssl", "false"),
            ],
        ),
        (
            Role.SERVER,
            PeerLabel("address", "10.1.2.3:41000"),
            Protocol.HTTP2,
            True,
            [
                ("server_process_id", OWN_ID),
                ("client_address", "10.1.2.3:41000"),
                ("side", "server"),
                ("protocol", "http"),
                ("is_ssl", "true"),
            ],
        ),
        (
            Role.UNKNOWN,
            PeerLabel("local", "true"),
            Protocol.UNKNOWN,
            False,
            [
                ("client_process_id", OWN_ID),
                ("server_local", "true"),
                ("side", "client"),
                ("protocol", "unknown"),
                ("is_ssl", "false"),
            ],
        ),
    ],
    ids=["client-process", "server-address-tls-http2", "unknown-local"],
)
def test_common_labels(
    role: Role, peer: PeerLabel, protocol: Protocol, ssl: bool, expected: list
) -> None:
    traffic = _traffic(role, peer, protocol, ssl, l4=_l4(write_count=1))
    (meter,) = traffic_meters(traffic, PREFIX)
    side = "server" if role is Role.SERVER else "client"
    assert meter.name == f"rover_net_p_{side}_write_counts_counter"
    assert list(meter.labels) == expected
    assert not {"service", "instance"} & set(_labels(meter))


# -- layer 4 (8.6) -----------------------------------------------------------------------------


def test_layer4_catalogue_names_values_and_units() -> None:
    l4 = _l4(
        write_count=4, write_bytes=4096, write_ns=4000,
        read_count=2, read_bytes=100, read_ns=3000,
        rtt_count=3, rtt_sum_us=300,
        connect_count=2, connect_ns=5000,
        close_count=1, close_ns=700,
        retransmits=5, drops=6,
    )  # fmt: skip
    meters = traffic_meters(_traffic(Role.SERVER, l4=l4, protocol=Protocol.UNKNOWN), PREFIX)
    assert _singles(meters) == {
        "rover_net_p_server_write_counts_counter": 4.0,
        "rover_net_p_server_write_bytes_counter": 4096.0,
        "rover_net_p_server_write_exe_time_counter": 1000.0,  # ns, average
        "rover_net_p_server_read_counts_counter": 2.0,
        "rover_net_p_server_read_bytes_counter": 100.0,
        "rover_net_p_server_read_exe_time_counter": 1500.0,
        "rover_net_p_server_write_rtt_counts_counter": 3.0,
        "rover_net_p_server_write_rtt_exe_time_counter": 100.0,  # µs, average
        "rover_net_p_server_connect_counts_counter": 2.0,
        "rover_net_p_server_connect_exe_time_counter": 2500.0,
        "rover_net_p_server_close_counts_counter": 1.0,
        "rover_net_p_server_close_exe_time_counter": 700.0,
        "rover_net_p_server_retransmit_counts_counter": 5.0,
        "rover_net_p_server_drop_counts_counter": 6.0,
    }
    assert [m.name for m in meters] == list(_singles(meters))  # catalogue order, no histogram


def test_layer4_zero_values_are_not_sent() -> None:
    assert traffic_meters(_traffic(), PREFIX) == []
    # counts without time: no average
    meters = traffic_meters(_traffic(l4=_l4(write_count=3, connect_count=1)), PREFIX)
    assert list(_singles(meters)) == [
        "rover_net_p_client_write_counts_counter",
        "rover_net_p_client_connect_counts_counter",
    ]


def test_layer4_histograms_send_every_bucket_with_lower_bounds() -> None:
    n = len(L4_BUCKETS_NS)
    rtt = [0] * n
    rtt[2] = 7
    write = [0] * n
    write[0], write[-1] = 1, 2
    close = [0] * n
    close[5] = 1
    traffic = _traffic(l4=_l4(rtt_hist=rtt, write_hist=write, close_hist=close))
    meters = {m.name: m for m in traffic_meters(traffic, PREFIX)}
    assert list(meters) == [
        "rover_net_p_client_write_rtt_histogram",
        "rover_net_p_client_write_exe_time_histogram",
        "rover_net_p_client_close_exe_time_histogram",
    ]
    rtt_buckets = meters["rover_net_p_client_write_rtt_histogram"].buckets
    assert rtt_buckets is not None and len(rtt_buckets) == 34
    assert [b for b, _ in rtt_buckets] == list(L4_BOUNDS_US)
    assert rtt_buckets[:4] == ((0.0, 0), (10.0, 0), (50.0, 7), (100.0, 0))  # µs table
    assert rtt_buckets[-1] == (5_000_000.0, 0)
    write_buckets = meters["rover_net_p_client_write_exe_time_histogram"].buckets
    assert write_buckets is not None
    assert [b for b, _ in write_buckets] == list(L4_BOUNDS_NS)  # ns table, ascending
    assert write_buckets[0] == (0.0, 1) and write_buckets[-1] == (5e9, 2)
    assert meters["rover_net_p_client_write_exe_time_histogram"].value is None


def test_bounds_tables() -> None:
    assert len(L4_BOUNDS_NS) == 34 and L4_BOUNDS_US[1] == 10.0 and L4_BOUNDS_US[-1] == 5e6
    assert len(HTTP_SIZE_BOUNDS) == 25 and HTTP_SIZE_BOUNDS[:3] == (256, 512, 1048)
    assert HTTP_SIZE_BOUNDS[-1] == 52428800
    assert len(HTTP_DURATION_BOUNDS_MS) == 45
    assert HTTP_DURATION_BOUNDS_MS[:3] == (1, 2, 5) and HTTP_DURATION_BOUNDS_MS[-1] == 30000


@pytest.mark.parametrize(
    ("value", "index"),
    [(0, 0), (255, 0), (256, 0), (511, 0), (512, 1), (1047, 1), (1048, 2), (52428800, 24),
     (10**12, 24)],
)  # fmt: skip
def test_bucket_choice_highest_bound_at_most_the_value(value: int, index: int) -> None:
    assert bucket_index(HTTP_SIZE_BOUNDS, value) == index


# -- HTTP/1 (8.7) ------------------------------------------------------------------------------


def _message(
    is_request: bool,
    direction: Direction,
    start_ns: int,
    end_ns: int,
    *,
    status: int = 0,
    target: str = "/api/orders?id=1",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    body_size: int | None = None,
    header_syscalls: list[DataSyscall] | None = None,
    body_syscalls: list[DataSyscall] | None = None,
) -> HttpMessage:
    if is_request:
        head = f"GET {target} HTTP/1.1\r\nHost: shop\r\n\r\n".encode()
    else:
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    return HttpMessage(
        is_request=is_request,
        method="GET" if is_request else "",
        target=target if is_request else "",
        status=status,
        version="HTTP/1.1",
        headers=headers or {},
        header_bytes=head,
        body=body,
        body_size=len(body) if body_size is None else body_size,
        direction=direction,
        start_ns=start_ns,
        end_ns=end_ns,
        header_syscalls=header_syscalls or [],
        body_syscalls=body_syscalls or [],
    )


def _exchange(
    status: int = 200,
    duration_ms: float = 10,
    *,
    client: bool = True,
    request_body_size: int = 0,
    response_body: bytes = b"ok",
    response_headers: dict[str, str] | None = None,
) -> HttpExchange:
    sent, received = Direction.SEND, Direction.RECV
    request_direction = sent if client else received
    response_direction = received if client else sent
    start = 1_000_000_000
    end = start + int(duration_ms * 1_000_000)
    request = _message(True, request_direction, start, start, body_size=request_body_size)
    response = _message(
        False, response_direction, end - 1000, end,
        status=status, body=response_body, headers=response_headers,
    )  # fmt: skip
    return HttpExchange(conn_id=1, pid=10, request=request, response=response)


def test_http_meters_by_status_code_and_side() -> None:
    exchanges = [
        _exchange(200, 10, request_body_size=300),
        _exchange(200, 30, request_body_size=1100),
        _exchange(404, 3),
        _exchange(500, 0.5),
        _exchange(200, 10, client=False),  # server statistics: not this client traffic's
    ]
    meters = traffic_meters(_traffic(exchanges=exchanges), PREFIX)
    http = [m for m in meters if "_http1_" in m.name]
    names = [m.name for m in http]
    assert names == [
        "rover_net_p_http1_request_counter",
        "rover_net_p_http1_response_status_counter",
        "rover_net_p_http1_response_status_counter",
        "rover_net_p_http1_response_status_counter",
        "rover_net_p_http1_request_package_size_avg",
        "rover_net_p_http1_response_package_size_avg",
        "rover_net_p_http1_request_package_size_histogram",
        "rover_net_p_http1_response_package_size_histogram",
        "rover_net_p_http1_client_duration_avg",
        "rover_net_p_http1_client_duration_histogram",
    ]
    assert http[0].value == 4.0
    codes = {_labels(m)["code"]: m.value for m in http[1:4]}
    assert codes == {"200": 2.0, "404": 1.0, "500": 1.0}
    assert "code" not in _labels(http[0])
    head = len(b"GET /api/orders?id=1 HTTP/1.1\r\nHost: shop\r\n\r\n")  # 45
    assert http[4].value == (4 * head + 1400) / 4
    request_sizes = http[6].buckets
    assert request_sizes is not None and len(request_sizes) == 25
    assert [b for b, _ in request_sizes] == [float(b) for b in HTTP_SIZE_BOUNDS]
    # 45, 45 (below the first bound) and 345 -> [256, 512); 1145 -> [1048, 1536)
    assert [c for _, c in request_sizes][:4] == [3, 0, 1, 0]
    assert http[8].value == (10 + 30 + 3 + 0) / 4  # whole ms, truncated
    durations = dict(http[9].buckets or ())
    assert len(durations) == 45
    assert durations[1.0] == 1  # 0 ms: below the first bound
    assert durations[2.0] == 1 and durations[10.0] == 1 and durations[30.0] == 1
    assert sum(durations.values()) == 4


def test_http_server_role_uses_server_statistics() -> None:
    exchanges = [_exchange(200, 10), _exchange(201, 20, client=False)]
    meters = traffic_meters(_traffic(Role.SERVER, exchanges=exchanges), PREFIX)
    singles = _singles(meters)
    assert singles["rover_net_p_http1_request_counter"] == 1.0
    assert singles["rover_net_p_http1_server_duration_avg"] == 20.0
    statuses = [m for m in meters if m.name.endswith("response_status_counter")]
    assert [_labels(m)["code"] for m in statuses] == ["201"]
    assert all(_labels(m)["side"] == "server" for m in meters)


def test_http_average_of_zero_is_not_sent_but_the_histogram_is() -> None:
    meters = traffic_meters(_traffic(exchanges=[_exchange(200, 0.4), _exchange(200, 0.9)]), PREFIX)
    names = {m.name for m in meters}
    assert "rover_net_p_http1_client_duration_avg" not in names
    (histogram,) = [m for m in meters if m.name == "rover_net_p_http1_client_duration_histogram"]
    assert histogram.buckets is not None and histogram.buckets[0] == (1.0, 2)


def test_unknown_role_exchanges_count_as_client() -> None:
    meters = traffic_meters(_traffic(Role.UNKNOWN, exchanges=[_exchange()]), PREFIX)
    assert _singles(meters)["rover_net_p_http1_client_duration_avg"] == 10.0


# -- sampled-trace logs (8.9) ------------------------------------------------------------------

SW_TRACE = TraceContext("skywalking", "trace-1", "segment-1", "3")
ZIPKIN_TRACE = TraceContext("zipkin", "80f198ee56343ba8", "", "e457b5a2e4d86bd1")


def _sampled(
    exchange: HttpExchange,
    trace: TraceContext = SW_TRACE,
    settings: SamplingSettings | None = None,
    reason: str = "slow",
) -> SampledExchange:
    return SampledExchange(exchange, reason, trace, SamplingRule(None, 5, settings=settings))


def test_log_json_keys_and_values_for_a_client() -> None:
    traffic = _traffic(ssl=True, sampled=[_sampled(_exchange(200, 1204.7), reason="slow")])
    (record,) = sampled_logs(traffic, flush_ms=1_700_000_000_123)
    assert (record.service, record.instance, record.layer) == (
        "prod::checkout",
        "checkout-7d9f",
        "K8S_SERVICE",
    )
    assert record.timestamp_ms == 1_700_000_000_123
    assert record.trace_id == "trace-1"
    assert record.tags == (("LOG_KIND", "NET_PROFILING_SAMPLED_TRACE"),)
    body = json.loads(record.body)
    assert list(body) == [
        "uri", "reason", "latency", "trace_provider", "client_process", "server_process",
        "detect_point", "component", "ssl", "status",
    ]  # fmt: skip
    assert body == {
        "uri": "/api/orders",
        "reason": "slow",
        "latency": 1204,
        "trace_provider": "skywalking",
        "client_process": {"process_id": OWN_ID, "local": False, "address": ""},
        "server_process": {"process_id": "", "local": False, "address": "10.96.0.12:8080"},
        "detect_point": "client",
        "component": "http",
        "ssl": True,
        "status": 200,
    }


@pytest.mark.parametrize(
    ("role", "peer", "client_process", "server_process", "detect_point"),
    [
        (
            Role.SERVER,
            PeerLabel("process_id", PEER_ID),
            {"process_id": PEER_ID, "local": False, "address": ""},
            {"process_id": OWN_ID, "local": False, "address": ""},
            "server",
        ),
        (
            Role.UNKNOWN,
            PeerLabel("local", "true"),
            {"process_id": OWN_ID, "local": False, "address": ""},
            {"process_id": "", "local": True, "address": ""},
            "client",  # never "unknown": the OAP cannot store it (8.9 rule 1)
        ),
    ],
)
def test_log_process_objects_and_detect_point(
    role: Role, peer: PeerLabel, client_process: dict, server_process: dict, detect_point: str
) -> None:
    exchange = _exchange(503, 2, client=role is not Role.SERVER)
    traffic = _traffic(role, peer, sampled=[_sampled(exchange, ZIPKIN_TRACE, reason="status_5xx")])
    body = json.loads(sampled_logs(traffic, 1)[0].body)
    assert body["client_process"] == client_process
    assert body["server_process"] == server_process
    assert body["detect_point"] == detect_point
    assert (body["trace_provider"], body["reason"], body["status"]) == ("zipkin", "status_5xx", 503)


@pytest.mark.parametrize(
    ("target", "path"), [("/a?b=1", "/a"), ("/a", "/a"), ("?x", "?x"), ("/a?b?c", "/a")]
)
def test_uri_path_drops_the_query(target: str, path: str) -> None:
    assert uri_path(target) == path


# -- span attached events (8.10) ---------------------------------------------------------------


def _syscall(
    data_id: int, name: str, start: int, end: int, size: int, rtt: tuple[int, int] = (0, 0)
) -> DataSyscall:
    return DataSyscall(
        conn_id=1, pid=10, fd=5, tid=10, data_id=data_id, syscall=name,
        direction=Direction.RECV if name.startswith("R") else Direction.SEND,
        start_ns=start, end_ns=end, size=size, payload=b"",
        rtt_count=rtt[0], rtt_sum_us=rtt[1],
    )  # fmt: skip


BOOT = 1_700_000_000_000_000_000  # epoch ns of boot


def test_span_events_for_request_and_response_with_syscalls() -> None:
    exchange = _exchange(200, 10, response_body=b"hello")
    request = exchange.request
    request.header_syscalls = [_syscall(1, "Write", 100, 200, 44, rtt=(2, 90))]
    response = exchange.response
    response.headers = {"content-type": "text/plain"}
    response.header_syscalls = [_syscall(2, "Read", 300, 400, 40)]
    response.body_syscalls = [
        _syscall(2, "Read", 300, 400, 40),  # same data id as the header's: one event
        _syscall(3, "Recvfrom", 500, 600, 5),
        _syscall(4, "SSL_read", 500, 600, 5),  # TLS-library call: no event
    ]
    settings = SamplingSettings(
        require_complete_request=True, require_complete_response=True, max_response_size=0
    )
    traffic = _traffic(sampled=[_sampled(exchange, settings=settings)])
    events = span_events(traffic, BOOT)
    assert [e.event for e in events] == [
        "HTTP Request Sampling",
        "Syscall Write",
        "HTTP Response Sampling",
        "Syscall Read",
        "Syscall Recvfrom",
    ]
    request_event, write, response_event, read, recvfrom = events
    assert [k for k, _ in request_event.tags] == [
        "data_size", "data_content", "data_direction", "data_type", "connection_role",
        "service_name", "service_instance_name", "process_name",
    ]  # fmt: skip
    assert dict(request_event.tags) == {
        "data_size": f"{len(request.header_bytes)}B",  # 45 bytes
        "data_content": "GET /api/orders?id=1 HTTP/1.1\r\nHost: shop\r\n\r\n",
        "data_direction": "outbound",
        "data_type": "request",
        "connection_role": "client",
        "service_name": "prod::checkout",
        "service_instance_name": "checkout-7d9f",
        "process_name": "app",
    }
    assert request_event.start_ns == request_event.end_ns == BOOT + request.start_ns
    assert (response_event.start_ns, response_event.end_ns) == (
        BOOT + response.start_ns,
        BOOT + response.end_ns,
    )
    assert dict(response_event.tags)["data_direction"] == "inbound"
    assert dict(response_event.tags)["data_content"].endswith("\r\n\r\nhello")
    assert list(write.tags) == [
        ("package_size", "44B"),
        ("package_count", "0"),
        ("network_name", ""),
        ("network_index", "0"),
        ("service_name", "prod::checkout"),
        ("service_instance_name", "checkout-7d9f"),
        ("process_name", "app"),
        ("avg_rtt_time", "45ns"),  # µs, Rover's quirk
    ]
    assert "avg_rtt_time" not in dict(read.tags)
    assert (recvfrom.start_ns, recvfrom.end_ns) == (BOOT + 500, BOOT + 600)
    assert all(e.trace == SW_TRACE for e in events)


def test_span_events_only_for_rules_with_settings_and_only_what_they_ask() -> None:
    assert span_events(_traffic(sampled=[_sampled(_exchange())]), BOOT) == []
    only_response = SamplingSettings(require_complete_response=True)
    events = span_events(_traffic(sampled=[_sampled(_exchange(), settings=only_response)]), BOOT)
    assert [e.event for e in events] == ["HTTP Response Sampling"]


def test_span_events_dropped_when_the_body_does_not_decode() -> None:
    exchange = _exchange(
        200, 1, response_headers={"content-encoding": "gzip"}, response_body=b"not gzip"
    )
    settings = SamplingSettings(require_complete_request=True, require_complete_response=True)
    events = span_events(_traffic(sampled=[_sampled(exchange, settings=settings)]), BOOT)
    assert [e.event for e in events] == ["HTTP Request Sampling"]


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (512, "512B"), (1023, "1023B"), (1024, "1KiB"), (1536, "1.5KiB"),
     (100_000, "97.66KiB"), (5 * 1024**3, "5GiB")],
)  # fmt: skip
def test_bytes_size_like_go_units(size: int, text: str) -> None:
    assert bytes_size(size) == text


def test_data_content_rules() -> None:
    head = b"HTTP/1.1 200 OK\r\n\r\n"

    def message(headers: dict[str, str], body: bytes) -> HttpMessage:
        return HttpMessage(False, headers=headers, header_bytes=head, body=body)

    plain = message({}, b"0123456789")  # no Content-Type: text/html, plain
    assert data_content(plain, 0, "UTF-8") == head.decode() + "0123456789"
    assert data_content(plain, len(head) + 4, "UTF-8") == head.decode() + "0123"
    assert data_content(plain, 5, "UTF-8") == "HTTP/"  # header longer than the cap
    binary = message({"content-type": "image/png"}, b"\x89PNG")
    assert data_content(binary, 0, "UTF-8") == (
        head.decode() + "[not plain, current content type: image/png]"
    )
    json_charset = message({"content-type": "application/json; charset=utf-8"}, b"{}")
    not_plain = "[not plain, current content type: application/json; charset=utf-8]"
    assert data_content(json_charset, 0, "UTF-8") == head.decode() + not_plain
    zipped = message(
        {"content-type": "application/json", "content-encoding": "gzip"}, gzip.compress(b"{}")
    )
    assert data_content(zipped, 0, "UTF-8") == head.decode() + "{}"


# -- protobuf and streams (8.11) ---------------------------------------------------------------


def _report(
    entity: Entity, *, meters: bool = True, logs: int = 0, events: int = 0
) -> TrafficReport:
    """A traffic's report: two meters (or none), ``logs`` logs, ``events`` request events."""
    l4 = _l4(write_count=1, read_count=2) if meters else _l4()
    plain = [_sampled(_exchange()) for _ in range(logs - events)]
    with_events = [_sampled(_exchange(), settings=SamplingSettings(True)) for _ in range(events)]
    traffic = _traffic(entity=entity, l4=l4, sampled=with_events + plain)
    return traffic_report(traffic, prefix=PREFIX, flush_ms=42, boot_ns_wall=BOOT)


A1 = Entity("K8S_SERVICE", "svc-a", "a-1", "app")
A2 = Entity("K8S_SERVICE", "svc-a", "a-2", "app")
B1 = Entity("K8S_SERVICE", "svc-b", "b-1", "envoy")


def test_meter_collections_split_per_service_and_instance() -> None:
    reports = [_report(A1), _report(B1), _report(A1), _report(A2), _report(B1, meters=False)]
    collections = meter_collections(reports, 1_700_000_000_123)
    assert len(collections) == 3
    a1, b1, a2 = collections
    assert len(a1.meterData) == 4 and len(b1.meterData) == 2 and len(a2.meterData) == 2
    for collection, (service, instance) in zip(
        collections, [("svc-a", "a-1"), ("svc-b", "b-1"), ("svc-a", "a-2")], strict=True
    ):
        first, *rest = collection.meterData
        assert (first.service, first.serviceInstance) == (service, instance)
        assert first.timestamp == 1_700_000_000_123
        assert all(not (m.service or m.serviceInstance or m.timestamp) for m in rest)


def test_meter_to_proto_single_and_histogram() -> None:
    single = meter_to_proto(NetworkMeter("m", (("side", "client"),), value=2.5))
    assert single.WhichOneof("metric") == "singleValue"
    assert single.singleValue.name == "m" and single.singleValue.value == 2.5
    assert [(lb.name, lb.value) for lb in single.singleValue.labels] == [("side", "client")]
    hist = meter_to_proto(NetworkMeter("h", (), buckets=((0.0, 1), (10.0, 0))))
    assert hist.WhichOneof("metric") == "histogram"
    assert [(v.bucket, v.count) for v in hist.histogram.values] == [(0.0, 1), (10.0, 0)]


def test_log_and_event_to_proto() -> None:
    request_only = SamplingSettings(require_complete_request=True)
    traffic = _traffic(sampled=[_sampled(_exchange(), ZIPKIN_TRACE, request_only)])
    (record,) = sampled_logs(traffic, 99)
    data = log_to_proto(record)
    assert (data.timestamp, data.service, data.serviceInstance, data.layer) == (
        99,
        "prod::checkout",
        "checkout-7d9f",
        "K8S_SERVICE",
    )
    assert data.endpoint == ""
    assert data.body.type == "json" and data.body.WhichOneof("content") == "json"
    assert json.loads(data.body.json.json)["trace_provider"] == "zipkin"
    assert data.traceContext.traceId == ZIPKIN_TRACE.trace_id
    assert not data.traceContext.traceSegmentId and data.traceContext.spanId == 0
    assert [(t.key, t.value) for t in data.tags.data] == [
        ("LOG_KIND", "NET_PROFILING_SAMPLED_TRACE")
    ]
    (event,) = span_events(traffic, BOOT + 123)
    proto = event_to_proto(event)
    assert proto.event == "HTTP Request Sampling"
    assert proto.traceContext.type == Tracing_pb2.SpanAttachedEvent.ZIPKIN
    assert proto.traceContext.spanId == ZIPKIN_TRACE.span_id
    assert proto.traceContext.traceSegmentId == ""
    assert proto.startTime.seconds == 1_700_000_001 and proto.startTime.nanos == 123
    assert not proto.summary
    sw_traffic = _traffic(sampled=[_sampled(_exchange(), SW_TRACE, SamplingSettings(True))])
    sw = event_to_proto(span_events(sw_traffic, BOOT)[0])
    assert sw.traceContext.type == Tracing_pb2.SpanAttachedEvent.SKYWALKING
    assert (sw.traceContext.traceSegmentId, sw.traceContext.spanId) == ("segment-1", "3")


@pytest.fixture
def client(fake_oap: FakeOAP) -> Iterator[BackendClient]:
    with BackendClient(BackendConfig(addr=fake_oap.addr, check_period=0.2)) as c:
        yield c


def test_sender_streams_in_order_through_the_real_client(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    reports = [
        _report(A1, logs=1, events=1),
        _report(B1, logs=2),
        _report(A2, logs=1),
    ]
    sender = NetworkReportSender(client)
    sender.send(reports, 1_700_000_000_000)
    methods = [c.method for c in fake_oap.calls]
    assert methods == ["collectBatch", LOG_COLLECT, LOG_COLLECT, SPAN_EVENT_COLLECT]
    (batch,) = fake_oap.requests("collectBatch")
    assert [c.meterData[0].serviceInstance for c in batch] == ["a-1", "b-1", "a-2"]
    log_a, log_b = fake_oap.requests(LOG_COLLECT)
    assert [d.service for d in log_a] == ["svc-a", "svc-a"]
    assert [d.serviceInstance for d in log_a] == ["a-1", "a-2"]
    assert [d.service for d in log_b] == ["svc-b", "svc-b"]
    (events,) = fake_oap.requests(SPAN_EVENT_COLLECT)
    assert [e.event for e in events] == ["HTTP Request Sampling"]
    assert sender.counters == {
        "meter_streams": 1, "meters": 6, "meter_errors": 0,
        "log_streams": 2, "logs": 4, "log_errors": 0,
        "event_streams": 1, "events": 1, "event_errors": 0,
    }  # fmt: skip


def test_sender_sends_nothing_for_an_empty_flush(fake_oap: FakeOAP, client: BackendClient) -> None:
    sender = NetworkReportSender(client)
    sender.send([], 1)
    sender.send([_report(A1, meters=False)], 1)
    assert fake_oap.calls == []
    assert not any(sender.counters.values())


def test_sender_counts_a_failed_stream_and_tries_the_next(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    fake_oap.fail_with(grpc.StatusCode.INTERNAL, "collectBatch")
    sender = NetworkReportSender(client)
    sender.send([_report(A1, logs=1, events=1)], 1)
    assert sender.counters["meter_errors"] == 1 and sender.counters["meter_streams"] == 0
    assert sender.counters["log_streams"] == 1 and sender.counters["event_streams"] == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sender_with_the_backend_down_counts_errors_and_does_not_raise() -> None:
    config = BackendConfig(addr=f"127.0.0.1:{_closed_port()}", call_timeout=2.0)
    with BackendClient(config) as down:
        sender = NetworkReportSender(down)
        sender.send([_report(A1, logs=1, events=1)], 1)
    assert sender.counters["meter_errors"] == 1
    assert sender.counters["log_errors"] == 1
    assert sender.counters["event_errors"] == 1
    assert sender.counters["meter_streams"] == sender.counters["log_streams"] == 0
