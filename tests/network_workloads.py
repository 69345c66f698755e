"""An HTTP upstream and a client for network profiling tests: real processes on loopback.

The upstream answers ``/ok`` (200), ``/fail`` (500), ``/missing`` (404) and ``/slow``
(200 after 300 ms) over HTTP/1.1 keep-alive. The client sends a given plan of requests
over one keep-alive connection (HTTPS when its fourth argument is ``https``, the
certificate not checked) once a start file appears, prints ``done N`` and waits.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

UPSTREAM = """
import http.server, socketserver, sys, time

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/slow":
            time.sleep(0.3)
        status = {"/fail": 500, "/missing": 404}.get(path, 200)
        body = (f'{{"path": "{path}", "status": {status}}}').encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True

server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
print("ready", flush=True)
server.serve_forever()
"""

CLIENT = """
import http.client, json, os, ssl, sys, time

port, start_file, plan = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
https = sys.argv[4:] == ["https"]
print("ready", flush=True)
while not os.path.exists(start_file):
    time.sleep(0.05)
if https:  # a test certificate: not verified
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, context=ssl._create_unverified_context()
    )
else:
    connection = http.client.HTTPConnection("127.0.0.1", port)
sent = 0
for path, count, headers in plan:
    for _ in range(count):
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        sent += 1
print(f"done {sent}", flush=True)
time.sleep(3600)
"""


def sw8(trace_id: str, segment_id: str = "segment-1", span_id: int = 3) -> str:
    """A SkyWalking ``sw8`` header value (8 parts, base64 where the protocol says so)."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return "-".join(
        ["1", b64(trace_id), b64(segment_id), str(span_id), b64("client-svc"),
         b64("client-instance"), b64("/entry"), b64("127.0.0.1:1")]
    )  # fmt: skip


def write_scripts(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    upstream, client = directory / "upstream.py", directory / "client.py"
    upstream.write_text(UPSTREAM)
    client.write_text(CLIENT)
    return upstream, client


def python() -> str:
    return sys.executable
