"""Continuous profiling's HTTP monitors through the whole agent (spec 8.13): a Python
upstream serving /ok, /fail and /slow to a client looping requests; policies from the
test backend, triggers reported to it, the triggered tasks' data and the monitors'
meters received by it."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from agent_process import scanner_env
from backend_data import of_task, reported
from network_workloads import python, write_scripts
from nginx_server import free_port
from test_agent_network import meters, total

pytestmark = pytest.mark.bpf

FAST = {
    "ROVER_PROFILING_CONTINUOUS_FETCH_INTERVAL": "1s",
    "ROVER_PROFILING_CONTINUOUS_CHECK_INTERVAL": "1s",
    "ROVER_PROFILING_CONTINUOUS_TRIGGER_EXECUTE_DURATION": "20s",
    "ROVER_PROFILING_CONTINUOUS_TRIGGER_SILENCE_DURATION": "10m",
    "ROVER_PROFILING_TASK_NETWORK_TOPOLOGY_REPORT_INTERVAL": "1s",
}

# Loops over the paths on one keep-alive connection until killed (reconnects on errors).
LOOP_CLIENT = """
import http.client, json, sys, time

port, paths = int(sys.argv[1]), json.loads(sys.argv[2])
print("ready", flush=True)
connection = None
while True:
    for path in paths:
        try:
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path)
            connection.getresponse().read()
        except OSError:
            connection = None
            time.sleep(0.2)
        time.sleep(0.02)
"""


@pytest.fixture
def upstream(tmp_path, spawn):
    """start(paths) -> (upstream process, its scanner marker); the client loops ``paths``."""

    def start(paths: list[str]):
        marker = f"conthttp-{uuid.uuid4().hex[:8]}"
        script, _ = write_scripts(tmp_path / marker)
        port = free_port()
        server = spawn([python(), script, str(port)])
        client_script = tmp_path / "loop_client.py"  # outside the marker's directory
        client_script.write_text(LOOP_CLIENT)
        spawn([python(), client_script, str(port), json.dumps(paths)])
        return server, marker

    return start


def reports(fake_oap, service):
    return [r for r in fake_oap.requests("reportProfilingTask") if r.serviceName == service]


def start_agent_for(fake_oap, start_agent, marker, service):
    agent = start_agent({**scanner_env(fake_oap.addr, marker, service), **FAST})
    fake_oap.wait_for(lambda _: reported(fake_oap, service), timeout=30, what=service)
    return agent, reported(fake_oap, service)[0]


def test_error_rate_triggers_one_network_task_whose_meters_flow(fake_oap, start_agent, upstream):
    service = "http-err-svc"
    fake_oap.set_policy(
        service, {"NETWORK": {"HTTP_ERROR_RATE": {"Threshold": "20", "Period": 5, "Count": 2}}}
    )
    server, marker = upstream(["/fail", "/ok", "/ok"])  # 33 % errors
    agent, proc = start_agent_for(fake_oap, start_agent, marker, service)
    fake_oap.wait_for(lambda _: reports(fake_oap, service), timeout=90, what="a trigger")
    [report] = reports(fake_oap, service)
    assert report.WhichOneof("targetTask") == "network"
    assert list(report.network.samplingURIRegexes) == [""]
    [cause] = report.causes
    assert cause.type == 3 and cause.WhichOneof("cause") == "uri"  # HTTPErrorRate
    assert cause.uri.WhichOneof("uri") == "path" and cause.uri.path == ""
    assert cause.uri.threshold == 20 and cause.uri.current >= 20
    assert report.processName == proc.entity.processName and report.duration == 20
    # the monitor's meters: per-second error rates of the global series
    found = meters(fake_oap)
    rates = [v for n, ls, v, _ in found if n == "rover_con_p_http_error_rate"]
    assert rates and all(0 <= v <= 100 for v in rates)
    labels = [ls for n, ls, _, _ in found if n == "rover_con_p_http_error_rate"]
    assert all(ls["uri"] == "global" and ls["process_name"] and ls["layer"] for ls in labels)
    # the triggered NETWORK task: traffic meters of the served requests reach the backend
    fake_oap.wait_for(
        lambda _: (
            total(
                meters(fake_oap),
                "rover_net_p_http1_request_counter",
                server_process_id=proc.process_id,
                side="server",
            )
            > 10
        ),
        timeout=90,
        what="the NETWORK task's meters",
    )
    # still failing, but silenced: exactly one trigger
    time.sleep(6)
    assert len(reports(fake_oap, service)) == 1
    assert agent.running()


def test_avg_response_time_counts_only_the_listed_paths(fake_oap, start_agent, upstream):
    service = "http-slow-svc"
    slow = {"Threshold": "200", "Period": 5, "Count": 2}
    fake_oap.set_policy(
        service,
        {
            # /ok is listed with the same threshold: never fires although /slow is slow
            "ON_CPU": {"HTTP_AVG_RESPONSE_TIME": {**slow, "URIList": ["/ok"]}},
            "OFF_CPU": {"HTTP_AVG_RESPONSE_TIME": {**slow, "URIList": ["/slow"]}},
        },
    )
    server, marker = upstream(["/slow", "/ok", "/ok", "/ok"])  # the mean of all < 100 ms
    agent, proc = start_agent_for(fake_oap, start_agent, marker, service)
    fake_oap.wait_for(lambda _: reports(fake_oap, service), timeout=90, what="a trigger")
    [report] = reports(fake_oap, service)
    assert report.WhichOneof("targetTask") == "offCPU"
    [cause] = report.causes
    assert cause.type == 4 and cause.uri.path == "/slow"  # HTTPAvgResponseTime
    assert cause.uri.current >= 250
    # the OFF_CPU task profiles the upstream under the returned task id
    task_id = fake_oap.continuous_task_ids[-1]
    fake_oap.wait_for(
        lambda _: of_task(fake_oap, task_id), timeout=60, what="off-CPU data of the task"
    )
    assert {s.process_id for s in of_task(fake_oap, task_id)} == {proc.process_id}
    # meters per listed path only, about 300 ms for /slow and a few ms for /ok
    time.sleep(3)
    found = [
        (ls["uri"], v) for n, ls, v, _ in meters(fake_oap)
        if n == "rover_con_p_http_avg_response_time"
    ]  # fmt: skip
    assert {uri for uri, _ in found} == {"/slow", "/ok"}
    assert all(250 <= v < 1000 for uri, v in found if uri == "/slow")
    assert all(v < 100 for uri, v in found if uri == "/ok")
    # no ON_CPU trigger, and the OFF_CPU one is silenced
    assert len(reports(fake_oap, service)) == 1
    assert agent.running()
