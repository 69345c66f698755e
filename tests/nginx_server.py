"""Debian's nginx (package nginx-core) on a loopback port with a temporary config, and load.

nginx is a Debian build: no frame pointers, its own symbols stripped except those
exported for dynamic modules (about 570 ``ngx_*`` functions in ``.dynsym``), which is
what makes its frames nameable. It runs as one process (``master_process off``) so
the profiled pid is the one serving requests.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NGINX = "/usr/sbin/nginx"
_CONFIG = """
worker_processes 1;
master_process off;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {access_log};
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} reuseport{ssl};
        {certificate}
        root {prefix}/html;
        {location}
    }}
}}
"""
_STATIC = "location / { index index.html; }"
# HTTP/1.1 with kept-alive upstream connections, as a production proxy runs
_PROXY = """
        location / {{
            proxy_pass http://upstream_server;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
    upstream upstream_server {{
        server 127.0.0.1:{upstream};
        keepalive 4;"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def nginx(
    prefix: Path,
    access_log: Path | None = None,
    proxy_to: int | None = None,
    tls: tuple[Path, Path] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A running nginx serving a 4 KiB page at http://127.0.0.1:PORT/; stopped at exit.

    ``proxy_to``: a port on 127.0.0.1 to proxy every request to instead (keep-alive).
    ``tls``: (certificate, key) files: HTTPS on the port instead (nginx's libssl.so.3).
    ``access_log``: where nginx writes a line per request (unbuffered: one write each);
    default none. A FIFO needs its reader running first: nginx blocks opening it.
    """
    port = free_port()
    (prefix / "html").mkdir(parents=True, exist_ok=True)
    (prefix / "html" / "index.html").write_text("<p>rover</p>\n" * 315)
    config = prefix / "nginx.conf"
    log = "off" if access_log is None else str(access_log)
    location = _STATIC if proxy_to is None else _PROXY.format(upstream=proxy_to)
    certificate = "" if tls is None else f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};"
    config.write_text(
        _CONFIG.format(
            prefix=prefix,
            port=port,
            access_log=log,
            location=location,
            ssl="" if tls is None else " ssl",
            certificate=certificate,
        )
    )
    process = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                stderr = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"nginx did not start: {stderr}")
            time.sleep(0.05)
        yield process, port
    finally:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class WrkResult:
    rate: float  # requests/s
    requests: int  # requests completed
    errors: str  # wrk's error lines, if any


def run_wrk(port: int, seconds: float, connections: int = 8) -> WrkResult:
    """``wrk`` (one thread) against http://127.0.0.1:PORT/ for ``seconds``."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (scripts/setup.sh installs it)")
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    if not rate or not done:
        raise RuntimeError(f"unexpected wrk output: {out}")
    errors = "; ".join(
        line.strip() for line in out.splitlines() if "errors" in line or "Non-2xx" in line
    )
    return WrkResult(float(rate.group(1)), int(done.group(1)), errors)


def load(port: int, seconds: float, connections: int = 8) -> float:
    """Requests per second that ``wrk`` (one thread) got over ``seconds``."""
    return run_wrk(port, seconds, connections).rate


def profile_under_load(engine, pid: int, port: int, seconds: float = 3.0):
    """(samples, samples with a named nginx frame, drain result) while wrk loads the server."""
    import threading

    from rover.symbols import Symbolizer

    symbolizer = Symbolizer()
    symbolizer.prepare(pid)
    engine.add_pid(pid)
    loader = threading.Thread(target=load, args=(port, seconds))
    loader.start()
    loader.join()
    engine.remove_pid(pid)
    result = engine.drain()
    total = named = 0
    for stack in result.stacks:
        frames = symbolizer.user_frames(pid, [a for a in stack.user if a < 1 << 63])
        total += stack.values[0]
        if any(f.module == "nginx" and f.symbolized for f in frames):
            named += stack.values[0]
    return total, named, result
