"""Bad traffic through the real observer and monitor: requests split into one-byte writes,
binary garbage on an HTTP connection, a connection closed mid-response, a process that
exits with connections open. Nothing crashes, what is skipped is counted, and the valid
requests around the bad ones are still counted (spec 8.3, 8.7)."""

from __future__ import annotations

import threading
import time

import pytest
from network_workloads import python, write_scripts
from nginx_server import free_port

from rover.bpf.headers import HeaderSearch
from rover.config.model import NetworkConfig
from rover.network.http1 import Http1Parser
from rover.network.model import Traffic
from rover.network.monitor import NetworkMonitor
from rover.network.observer import NetworkObserver, observer_config
from rover.network.sampling import sample
from rover.process.model import Entity

pytestmark = pytest.mark.bpf

BAD_CLIENT = """
import os, socket, sys, time

port = int(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()

def connect():
    return socket.create_connection(("127.0.0.1", port))

def response(s):
    data = b""
    while b"\\r\\n\\r\\n" not in data or not data.endswith(b"}"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data

# 1. a valid request written one byte at a time
s = connect()
for byte in b"GET /ok HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n":
    s.send(bytes([byte]))
    time.sleep(0.001)
response(s)
# 2. an HTTP start, then binary garbage on the same connection
s.send(b"GET /ok HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n")
response(s)
s.send(bytes(range(256)) * 8)
time.sleep(0.2)
s.close()
# 3. closed before the (slow) response comes
s = connect()
s.send(b"GET /slow HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n")
time.sleep(0.05)
s.close()
# 4. a request cut short, and the process exits with the connection open
s = connect()
s.send(b"GET /ok HTTP/1.1\\r\\nHo")
time.sleep(0.2)
print("done", flush=True)
os._exit(0)
"""

GOOD_CLIENT = """
import http.client, sys
port = int(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(10):
    c.request("GET", "/ok")
    c.getresponse().read()
print("done", flush=True)
sys.stdin.readline()
"""


class Collected:
    def __init__(self) -> None:
        self.traffics: list[Traffic] = []
        self.lock = threading.Lock()

    def send(self, traffics: list[Traffic], flush_ms: int) -> None:
        with self.lock:
            self.traffics.extend(traffics)

    def requests(self, process_id: str) -> int:
        with self.lock:
            return sum(
                t.http.requests for t in self.traffics if t.http and t.process_id == process_id
            )


def test_bad_traffic_is_counted_and_the_good_requests_around_it_still_count(tmp_path, spawn):
    upstream_script, _ = write_scripts(tmp_path / "w")
    (tmp_path / "bad.py").write_text(BAD_CLIENT)
    (tmp_path / "good.py").write_text(GOOD_CLIENT)
    port = free_port()
    server = spawn([python(), upstream_script, str(port)])
    bad = spawn([python(), tmp_path / "bad.py", str(port)])
    good = spawn([python(), tmp_path / "good.py", str(port)])

    config = NetworkConfig(report_interval=0.5)
    headers = HeaderSearch().find()

    def observer() -> NetworkObserver:
        made = NetworkObserver(headers, observer_config(config))
        made.start()
        return made

    collected = Collected()
    monitor = NetworkMonitor(config, observer, Http1Parser, sample, collected)
    entity = Entity(layer="GENERAL", service_name="s", instance_name="i", process_name="p")
    try:
        for pid, process_id in ((server.pid, "server"), (bad.pid, "bad"), (good.pid, "good")):
            monitor.watch("task", pid, process_id, entity, [])
        bad.send_line()
        assert bad.read_line(timeout=30) == "done"
        good.send_line()
        assert good.read_line(timeout=30) == "done"
        deadline = time.monotonic() + 20
        while collected.requests("good") < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        metrics = monitor.metrics()
    finally:
        monitor.stop()
    # the good client's requests, after all the bad traffic, are all there
    assert collected.requests("good") == 10
    # the one-byte writes made one request, and the HTTP start before the garbage another
    assert collected.requests("bad") == 2
    assert collected.requests("server") >= 12
    assert "analyzer_crashes" not in metrics and "events_failed" not in metrics
    # garbage after a message start is skipped and counted; closes mid-exchange too
    assert metrics.get("http_resyncs", 0) + metrics.get("http_bad_start_lines", 0) >= 1
    unanswered = metrics.get("http_requests_unanswered_at_close", 0) + metrics.get(
        "http_incomplete_at_close", 0
    )
    assert unanswered >= 1, metrics
