"""The one gRPC channel to the backend: credentials, authentication, connectivity.

gRPC reconnects a channel by itself, with exponential backoff (options below).
What this module adds: it follows the channel's connectivity into a
:class:`ConnectionState` (call results feed it too, in the client), and a
monitor thread nudges a channel that is not ready to reconnect every
``check_period`` seconds, so a recovered backend is noticed without waiting for
the next call.
"""

from __future__ import annotations

import functools
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from rover.backend.auth import AuthenticationInterceptor
from rover.backend.connection_state import ConnectionState
from rover.backend.errors import BackendUnavailable
from rover.backend.proto.ebpf.profiling import (
    Continuous_pb2_grpc,
    Process_pb2_grpc,
    Profile_pb2_grpc,
)
from rover.backend.proto.language_agent import Meter_pb2_grpc, Tracing_pb2_grpc
from rover.backend.proto.logging import Logging_pb2_grpc
from rover.backend.tls import PinnedServer, channel_credentials, fetch_server_certificate
from rover.config import BackendConfig

log = logging.getLogger(__name__)

# gRPC's own reconnect backoff: starts at 1 s, grows x1.6 up to 30 s.
_RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 1000),
    ("grpc.min_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 30_000),
]


@dataclass(frozen=True)
class Stubs:
    """The service stubs bound to one channel."""

    process: Process_pb2_grpc.EBPFProcessServiceStub
    profiling: Profile_pb2_grpc.EBPFProfilingServiceStub
    continuous: Continuous_pb2_grpc.ContinuousProfilingServiceStub
    meter: Meter_pb2_grpc.MeterReportServiceStub
    log: Logging_pb2_grpc.LogReportServiceStub
    span_event: Tracing_pb2_grpc.SpanAttachedEventReportServiceStub


class BackendChannel:
    """Owns the channel; builds it lazily and rebuilds it when a pinned certificate changes.

    TLS files are checked here, at construction, so a bad path fails start-up
    with :class:`~rover.backend.errors.BackendConfigError`.
    """

    def __init__(self, config: BackendConfig, state: ConnectionState) -> None:
        self.config = config
        self.state = state
        if config.enable_tls:
            channel_credentials(config)  # fail early on unreadable or empty files
        self._interceptors = (
            [AuthenticationInterceptor(config.authentication)] if config.authentication else []
        )
        self._lock = threading.Lock()
        self._raw: grpc.Channel | None = None
        self._stubs: Stubs | None = None
        self._pinned: PinnedServer | None = None
        self._was_ready = False
        self._ready: grpc.Future | None = None
        self._on_raw_connectivity: Callable[[grpc.ChannelConnectivity], None] = lambda c: None
        self._closed = threading.Event()
        self._monitor = threading.Thread(
            target=self._monitor_loop, name="backend-connection", daemon=True
        )
        self._monitor.start()

    def stubs(self) -> Stubs:
        """Stubs on the current channel; raises BackendUnavailable if it cannot be built."""
        with self._lock:
            if self._closed.is_set():
                raise BackendUnavailable("", "", "backend client is closed")
            if self._stubs is None:
                self._build_locked()
            assert self._stubs is not None
            return self._stubs

    def call_failed(self) -> None:
        """A call failed as unreachable: with a pinned certificate, check whether it changed."""
        if not (self.config.enable_tls and self.config.insecure_skip_verify):
            return
        with self._lock:
            if self._pinned is None or self._closed.is_set():
                return
            try:
                current = fetch_server_certificate(self.config, self.config.call_timeout)
            except OSError:
                return  # still unreachable; nothing to learn
            if current != self._pinned:
                log.info("backend %s presents a new certificate; re-pinning it", self.config.addr)
                self._close_channel_locked()

    def close(self, timeout: float = 5.0) -> None:
        """Close the channel (calls in flight are cancelled), within ``timeout`` seconds:
        a pinned-certificate check holding the channel past it leaves the channel to
        the process's exit."""
        deadline = time.monotonic() + timeout
        self._closed.set()
        if self._lock.acquire(timeout=timeout):
            try:
                self._close_channel_locked(wait=max(0.0, deadline - time.monotonic()))
            finally:
                self._lock.release()
        else:
            log.debug("backend channel busy for %.1fs; not closed", timeout)
        self._monitor.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- building ----------------------------------------------------------------

    def _build_locked(self) -> None:
        config = self.config
        options: list[tuple[str, object]] = list(_RECONNECT_OPTIONS)
        if config.enable_tls:
            pinned = None
            if config.insecure_skip_verify:
                pinned = self._pinned = self._pin_server_locked()
            credentials, tls_options = channel_credentials(config, pinned)
            options += tls_options
            raw = grpc.secure_channel(config.addr, credentials, options=options)
        else:
            raw = grpc.insecure_channel(config.addr, options=options)
        channel = grpc.intercept_channel(raw, *self._interceptors) if self._interceptors else raw
        self._raw = raw
        self._was_ready = False
        self._stubs = Stubs(
            process=Process_pb2_grpc.EBPFProcessServiceStub(channel),
            profiling=Profile_pb2_grpc.EBPFProfilingServiceStub(channel),
            continuous=Continuous_pb2_grpc.ContinuousProfilingServiceStub(channel),
            meter=Meter_pb2_grpc.MeterReportServiceStub(channel),
            log=Logging_pb2_grpc.LogReportServiceStub(channel),
            span_event=Tracing_pb2_grpc.SpanAttachedEventReportServiceStub(channel),
        )
        self._on_raw_connectivity = functools.partial(self._on_connectivity, raw)
        raw.subscribe(self._on_raw_connectivity, try_to_connect=False)

    def _pin_server_locked(self) -> PinnedServer:
        try:
            pinned = fetch_server_certificate(self.config, self.config.call_timeout)
        except (OSError, ssl.SSLError) as e:
            reason = f"cannot fetch the server certificate to skip verification: {e}"
            self.state.mark_disconnected(reason)
            raise BackendUnavailable("", "UNAVAILABLE", reason) from e
        log.warning(
            "backend %s: insecure_skip_verify is set, trusting its certificate for %r unverified",
            self.config.addr,
            pinned.name,
        )
        return pinned

    def _close_channel_locked(self, wait: float = 1.0) -> None:
        raw, self._raw, self._stubs = self._raw, None, None
        if raw is None:
            return
        self._cancel_ready_locked()
        raw.unsubscribe(self._on_raw_connectivity)
        _wait_for_connectivity_polling_to_end(raw, min(1.0, wait))
        raw.close()

    # -- connectivity --------------------------------------------------------------

    def _on_connectivity(self, raw: grpc.Channel, connectivity: grpc.ChannelConnectivity) -> None:
        if raw is not self._raw:
            return  # a replaced channel
        if connectivity is grpc.ChannelConnectivity.READY:
            self._was_ready = True
            self.state.mark_connected()
        elif connectivity is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            self._was_ready = False
            self.state.mark_disconnected("cannot connect")
        elif self._was_ready and connectivity is not grpc.ChannelConnectivity.SHUTDOWN:
            # READY -> IDLE/CONNECTING: the connection dropped (e.g. the backend went away)
            self._was_ready = False
            self.state.mark_disconnected("connection closed by the backend")

    def _monitor_loop(self) -> None:
        while not self._closed.is_set():
            if not self.state.connected:
                self._nudge()
            self._closed.wait(self.config.check_period)

    def _nudge(self) -> None:
        """Ask a channel that is not ready to connect; the subscription sees the outcome."""
        try:
            self.stubs()
        except BackendUnavailable:
            return  # already recorded in the state
        with self._lock:
            if self._raw is None or self._closed.is_set():
                return
            self._cancel_ready_locked()
            # a ready-future subscribes with try_to_connect, which starts a connection attempt
            self._ready = grpc.channel_ready_future(self._raw)

    def _cancel_ready_locked(self) -> None:
        ready, self._ready = self._ready, None  # grpcio fails on a second cancel()
        if ready is not None:
            ready.cancel()


def _wait_for_connectivity_polling_to_end(raw: grpc.Channel, timeout: float = 1.0) -> None:
    """Let grpcio's connectivity-polling thread exit before the channel closes.

    With no subscriber left that thread stops at its next 0.2 s wake-up; closing
    the channel while it is still watching makes it die with "Channel closed!"
    (a traceback on stderr). grpcio has no public way to wait for it, hence the
    private attribute, read defensively.
    """
    state = getattr(raw, "_connectivity_state", None)
    deadline = time.monotonic() + timeout
    while getattr(state, "polling", False) and time.monotonic() < deadline:
        time.sleep(0.02)
