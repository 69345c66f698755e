"""The agent's HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics``.

Served only when ``core.health.address`` is set (``host:port``; ``:port`` listens
on every address). Kubernetes probes and Prometheus read it:

* ``/healthz``: 200 while every loop of the agent keeps running (its run count
  moved within its stall window); 503 naming the stalled loops otherwise.
* ``/readyz``: 200 once BPF programs are known to load here (a one-time probe at
  start, which the agent runs in a short-lived child process so that its compiles
  do not add to the agent's memory; or an engine a task loaded) and the backend
  has answered at least one call; 503 with the reasons until then. A later backend
  outage does not make the agent unready: it buffers and retries, and a restart
  would not help.
* ``/metrics``: the Prometheus text format (rover.metrics).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socket import AF_INET6

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from rover.periodic import PeriodicLoop

log = logging.getLogger(__name__)

# A loop is stalled when it has not finished a run for this long: a few periods plus
# room for a slow backend call (call_timeout) or a BPF compile in the same run.
STALL_PERIODS = 3
STALL_SLACK = 120.0  # seconds


class HealthAddressError(Exception):
    """The configured address cannot be listened on; the message says why."""


class Liveness:
    """Every loop makes progress: its runs + failures changed within its stall window."""

    def __init__(
        self,
        loops: Callable[[], Sequence[PeriodicLoop]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loops = loops
        self._clock = clock
        self._lock = threading.Lock()
        self._progress: dict[str, tuple[int, float]] = {}  # loop -> (count, when it changed)

    def state(self) -> tuple[bool, str]:
        now = self._clock()
        stalled = []
        with self._lock:
            for loop in self._loops():
                count = loop.runs + loop.failures
                seen = self._progress.get(loop.name)
                if seen is None or seen[0] != count:
                    self._progress[loop.name] = (count, now)
                    continue
                idle = now - seen[1]
                if idle > STALL_PERIODS * loop.period + STALL_SLACK:
                    stalled.append(f"{loop.name} has not completed a run for {idle:.0f}s")
        if stalled:
            return False, "; ".join(stalled)
        return True, "ok"


class Readiness:
    """BPF loads here (when profiling is on) and the backend has answered once."""

    def __init__(
        self,
        backend_answered: Callable[[], bool],
        backend_addr: str,
        bpf_needed: bool = True,
        bpf_loaded: Callable[[], bool] = lambda: False,
    ) -> None:
        self._backend_answered = backend_answered
        self._backend_addr = backend_addr
        self._bpf_needed = bpf_needed
        self._bpf_loaded = bpf_loaded  # e.g. a task already loaded an engine
        self._bpf_error: str | None = "checking that the BPF programs load"
        self._probe_done = threading.Event()

    def probe_bpf(self, probe: Callable[[], bool | None]) -> threading.Thread:
        """Run ``probe`` once, in the background. It raises when BPF cannot work and
        returns False when it could not tell (cancelled at shutdown)."""

        def run() -> None:
            try:
                if probe() is False:
                    return
                self._bpf_error = None
                log.info("readiness: BPF programs load")
            except Exception as exc:  # noqa: BLE001 - any failure means not ready; say why
                first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
                self._bpf_error = f"BPF programs cannot load: {first_line}"
                log.error("readiness: %s (run `rover check` for details)", self._bpf_error)
            finally:
                self._probe_done.set()

        thread = threading.Thread(target=run, name="bpf-probe", daemon=True)
        thread.start()
        return thread

    def wait_for_probe(self, timeout: float | None = None) -> bool:
        return self._probe_done.wait(timeout)

    def state(self) -> tuple[bool, str]:
        reasons = []
        if self._bpf_needed and self._bpf_error is not None and not self._bpf_loaded():
            reasons.append(self._bpf_error)
        if not self._backend_answered():
            reasons.append(f"backend {self._backend_addr} has not answered yet")
        if reasons:
            return False, "; ".join(reasons)
        return True, "ok"


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (every address) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise HealthAddressError(f"health address {address!r}: expected host:port or :port")
    return host.strip("[]"), int(port)


class HealthServer:
    """Serves the three endpoints from one daemon thread (one more per open request)."""

    def __init__(
        self,
        address: str,
        liveness: Liveness,
        readiness: Readiness,
        registry: CollectorRegistry,
    ) -> None:
        host, port = parse_address(address)
        handler = _handler(liveness, readiness, registry)
        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        try:
            self._server = server_class((host, port), handler)
        except OSError as exc:
            raise HealthAddressError(f"health address {address!r}: cannot listen: {exc}") from None
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-http", daemon=True
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        log.info("health endpoint on http://%s:%d (/healthz /readyz /metrics)", host, port)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()


class _IPv6Server(ThreadingHTTPServer):
    address_family = AF_INET6


def _handler(
    liveness: Liveness, readiness: Readiness, registry: CollectorRegistry
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server hook name
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._probe(*liveness.state())
            elif path == "/readyz":
                self._probe(*readiness.state())
            elif path == "/metrics":
                self._send(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                body = b"not found: try /healthz, /readyz or /metrics\n"
                self._send(HTTPStatus.NOT_FOUND, body)

        def _probe(self, ok: bool, reason: str) -> None:
            status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
            self._send(status, (reason + "\n").encode())

        def _send(
            self, status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8"
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("health: " + format, *args)  # probes every few seconds: not at INFO

    return Handler
