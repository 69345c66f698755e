"""NETWORK tasks through the whole agent: a client calling an nginx that proxies to an
upstream, all three discovered; meters, sampled-trace logs and span events at the test
backend built from the official protocol files (spec section 8)."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict

import pytest
from agent_process import scanner_env
from backend_data import reported
from network_workloads import python, sw8, write_scripts
from nginx_server import free_port, nginx
from test_network_tls import make_certificate

pytestmark = pytest.mark.bpf

FAST = {
    "ROVER_PROFILING_TASK_NETWORK_TOPOLOGY_REPORT_INTERVAL": "1s",
    # the two Python processes need names of their own to be two processes
    "ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_PROCESS_NAME": "{{.Process.ExeName}}-{{.Process.Pid}}",
}
SERVICE = "net-svc"
SLOW_TRACE = "trace-slow-{}"
RULES = {
    "NetworkSamplings": [
        {
            "URIRegex": "/slow",
            "MinDuration": 200,
            "When4xx": False,
            "When5xx": True,
            "Settings": {
                "RequireCompleteRequest": True,
                "MaxRequestSize": 2048,
                "RequireCompleteResponse": True,
                "MaxResponseSize": 2048,
            },
        }
    ]
}


def meters(fake_oap) -> list[tuple[str, dict[str, str], object, str]]:
    """(name, labels, single value or histogram, service) of every MeterData received."""
    found = []
    for stream in fake_oap.requests("collectBatch"):
        for collection in stream:
            service = ""
            for data in collection.meterData:
                service = data.service or service
                if data.HasField("singleValue"):
                    value = data.singleValue
                    found.append(
                        (
                            value.name,
                            {lb.name: lb.value for lb in value.labels},
                            value.value,
                            service,
                        )
                    )
                else:
                    value = data.histogram
                    buckets = {b.bucket: b.count for b in value.values}
                    found.append(
                        (value.name, {lb.name: lb.value for lb in value.labels}, buckets, service)
                    )
    return found


def total(found, name: str, **labels: str) -> float:
    return sum(
        value
        for n, ls, value, _ in found
        if n == name and all(ls.get(k) == v for k, v in labels.items())
    )


@pytest.fixture
def proxied(tmp_path, spawn):
    """(client, nginx, upstream) processes and the client's start file."""
    yield from _proxied(tmp_path, spawn, https=False)


@pytest.fixture
def proxied_https(tmp_path, spawn):
    """The same with HTTPS between the client and nginx (nginx's libssl.so.3 and the
    client's, Python's ssl), plain HTTP from nginx to the upstream."""
    yield from _proxied(tmp_path, spawn, https=True)


def _proxied(tmp_path, spawn, https):
    directory = tmp_path / f"netdemo-{uuid.uuid4().hex[:8]}"
    upstream_script, client_script = write_scripts(directory)
    upstream_port = free_port()
    upstream = spawn([python(), upstream_script, str(upstream_port)])
    tls = make_certificate(directory) if https else None
    with nginx(directory / "nginx", proxy_to=upstream_port, tls=tls) as (server, port):
        start_file = directory / "go"
        plan = [
            ["/ok", 200, {}],
            ["/fail", 20, {}],
            ["/missing", 5, {}],
            ["/slow", 2, {"sw8": sw8(SLOW_TRACE.format(1))}],
            ["/slow", 1, {"sw8": sw8(SLOW_TRACE.format(2))}],
            ["/slow", 2, {}],  # slow but untraced: never sampled
            ["/ok", 3, {"sw8": sw8("trace-fast")}],  # traced but fast: not sampled
        ]
        argv = [python(), client_script, str(port), str(start_file), json.dumps(plan)]
        client = spawn(argv + (["https"] if https else []))
        yield client, server, upstream, start_file, directory.name, sum(n for _, n, _ in plan)


def test_network_task_reports_both_relations_with_the_specs_names(fake_oap, start_agent, proxied):
    run_network_task(fake_oap, start_agent, proxied, https=False)


def test_https_relation_is_ssl_with_plaintext_http_meters_and_traces(
    fake_oap, start_agent, proxied_https
):
    """HTTPS client -> nginx (TLS plaintext from uprobes on both ends), HTTP nginx ->
    upstream: the same HTTP counts and sampled traces; is_ssl on the TLS relation only."""
    run_network_task(fake_oap, start_agent, proxied_https, https=True)


def run_network_task(fake_oap, start_agent, proxied, https: bool) -> None:
    client, server, upstream, start_file, marker, sent = proxied
    agent = start_agent({**scanner_env(fake_oap.addr, marker, SERVICE), **FAST})
    fake_oap.wait_for(lambda _: len(reported(fake_oap, SERVICE)) == 3, timeout=30, what="3")
    by_pid = {p.pid: p.process_id for p in reported(fake_oap, SERVICE)}
    assert set(by_pid) == {client.pid, server.pid, upstream.pid}
    fake_oap.add_task(
        list(by_pid.values()), target_type="NETWORK", extension_config_json=json.dumps(RULES)
    )
    agent_log = agent.log_path
    fake_oap.wait_for(
        lambda _: "network profiling started" in agent_log.read_text(), timeout=60, what="start"
    )
    start_file.touch()
    assert client.read_line(timeout=60) == f"done {sent}"

    client_id, nginx_id, upstream_id = by_pid[client.pid], by_pid[server.pid], by_pid[upstream.pid]
    request_counter = "rover_net_p_http1_request_counter"

    def requests_seen(_) -> bool:
        found = meters(fake_oap)
        return (
            total(found, request_counter, server_process_id=nginx_id, side="server") >= sent
            and total(found, request_counter, server_process_id=upstream_id, side="server") >= sent
        )

    fake_oap.wait_for(requests_seen, timeout=30, what="HTTP request counts")
    found = meters(fake_oap)
    # one relation client -> nginx, one nginx -> upstream; each seen from both ends
    for client_side, server_side in ((client_id, nginx_id), (nginx_id, upstream_id)):
        server_view = dict(server_process_id=server_side, client_process_id=client_side)
        client_view = dict(client_process_id=client_side, server_process_id=server_side)
        assert total(found, request_counter, side="server", **server_view) == sent
        assert total(found, request_counter, side="client", **client_view) == sent
        status = "rover_net_p_http1_response_status_counter"
        assert total(found, status, side="server", code="500", **server_view) == 20
        assert total(found, status, side="server", code="404", **server_view) == 5
        assert total(found, "rover_net_p_server_read_counts_counter", **server_view) >= sent
        assert total(found, "rover_net_p_client_write_counts_counter", **client_view) >= sent
    # every meter carries the labels of spec 8.5 and nothing the OAP would reject
    tls_relation = {client_id, nginx_id}
    for name, labels, _, service in found:
        assert name.startswith("rover_net_p_")
        assert service == SERVICE
        assert labels["side"] in ("client", "server")
        ends = {labels.get("client_process_id"), labels.get("server_process_id")}
        ssl = https and ends == tls_relation
        assert labels["protocol"] == "http" and labels["is_ssl"] == str(ssl).lower(), labels
        assert "service" not in labels and "instance" not in labels
        peers = [k for k in labels if k.endswith(("_process_id", "_local", "_address"))]
        assert len(peers) == 2, labels  # its own process id and exactly one peer label

    # sampled traces: the slow traced requests, nothing for untraced or fast ones (a
    # report's log and span event streams may come after its meters)
    def traced(_) -> bool:
        seen = []
        for service in ("LogReportService/collect", "SpanAttachedEventReportService/collect"):
            items = [item for stream in fake_oap.requests(service) for item in stream]
            seen.append({item.traceContext.traceId for item in items} >= slow_traces)
        return all(seen)

    slow_traces = {SLOW_TRACE.format(1), SLOW_TRACE.format(2)}
    fake_oap.wait_for(traced, timeout=30, what="the sampled traces")
    logs = [log for stream in fake_oap.requests("LogReportService/collect") for log in stream]
    bodies = [json.loads(log.body.json.json) for log in logs]
    traces = Counter(log.traceContext.traceId for log in logs)
    assert set(traces) == {SLOW_TRACE.format(1), SLOW_TRACE.format(2)}
    assert {b["reason"] for b in bodies} == {"slow"}
    # from both relations; those of the TLS one (parsed from plaintext) say ssl
    assert {b["ssl"] for b in bodies} == ({True, False} if https else {False})
    assert all(b["uri"] == "/slow" and b["latency"] >= 200 for b in bodies)
    assert all(log.tags.data[0].key == "LOG_KIND" for log in logs)
    assert all(
        log.tags.data[0].value == "NET_PROFILING_SAMPLED_TRACE" and log.layer for log in logs
    )
    events = [e for stream in fake_oap.requests("SpanAttachedEventReportService/collect")
              for e in stream]  # fmt: skip
    by_trace: dict[str, list[str]] = defaultdict(list)
    for event in events:
        by_trace[event.traceContext.traceId].append(event.event)
    assert set(by_trace) == {SLOW_TRACE.format(1), SLOW_TRACE.format(2)}
    for names in by_trace.values():
        assert "HTTP Request Sampling" in names and "HTTP Response Sampling" in names
