"""Typed calls to the backend; the only code that invokes RPCs.

Every call has a deadline, and every failure surfaces as
:class:`BackendUnavailable`. Call results also feed the connection state: the
codes Rover treats as "disconnected" (plus DEADLINE_EXCEEDED, since Rover sets
no deadline) mark it disconnected; any answer, even an error like
UNIMPLEMENTED from an older OAP, proves the backend reachable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import grpc

from rover.backend.channel import BackendChannel, Stubs
from rover.backend.commands import CommandData, commands_from_proto
from rover.backend.connection_state import ConnectionState
from rover.backend.errors import BackendUnavailable
from rover.backend.process_messages import (
    ProcessKey,
    match_process_ids,
    ping_to_proto,
    process_to_proto,
)
from rover.backend.proto.common import Command_pb2
from rover.backend.proto.ebpf.profiling import Continuous_pb2, Process_pb2, Profile_pb2
from rover.backend.proto.language_agent import Meter_pb2, Tracing_pb2
from rover.backend.proto.logging import Logging_pb2
from rover.config import BackendConfig
from rover.process.model import DiscoveredProcess

log = logging.getLogger(__name__)

__all__ = ["BackendClient", "BackendUnavailable", "CommandData"]

_DISCONNECTING_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNKNOWN,
    }
)

# A stream's deadline grows with its length so a large backlog is not cut off.
STREAM_SECONDS_PER_MESSAGE = 0.0005

Response = TypeVar("Response")


class BackendClient:
    """Calls of EBPFProcessService, EBPFProfilingService, ContinuousProfilingService,
    MeterReportService, LogReportService and SpanAttachedEventReportService over one channel.

    Thread-safe. Raises :class:`~rover.backend.errors.BackendConfigError` at
    construction when TLS files are missing or empty.
    """

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.state = ConnectionState(config.addr)
        self._channel = BackendChannel(config, self.state)

    @property
    def connected(self) -> bool:
        return self.state.connected

    @property
    def connection_epoch(self) -> int:
        """Increases each time the backend becomes reachable again (see ConnectionState)."""
        return self.state.epoch

    # -- EBPFProcessService -----------------------------------------------------------

    def report_processes(
        self, processes: list[DiscoveredProcess], agent_id: str
    ) -> dict[ProcessKey, str]:
        """reportProcesses: ``DiscoveredProcess.key`` -> processId for each accepted process.

        Processes the backend did not accept (no matching entry in the reply) are absent.
        """
        request = Process_pb2.EBPFProcessReportList(
            processes=[process_to_proto(p) for p in processes], ebpfAgentID=agent_id
        )
        reply = self._unary("reportProcesses", lambda s: s.process.reportProcesses, request)
        return match_process_ids(processes, reply)

    def keep_alive(self, processes: list[DiscoveredProcess], agent_id: str) -> None:
        """keepAlive: entity + ``support_ebpf_profiling`` of each process."""
        request = Process_pb2.EBPFProcessPingPkgList(
            processes=[ping_to_proto(p) for p in processes], ebpfAgentID=agent_id
        )
        self._unary("keepAlive", lambda s: s.process.keepAlive, request)

    # -- EBPFProfilingService -----------------------------------------------------------

    def query_tasks(self, agent_id: str, latest_update_time: int) -> list[CommandData]:
        """queryTasks: tasks updated after ``latest_update_time`` (epoch ms; 0 = all)."""
        request = Profile_pb2.EBPFProfilingTaskQuery(
            roverInstanceId=agent_id, latestUpdateTime=latest_update_time
        )
        reply = self._unary("queryTasks", lambda s: s.profiling.queryTasks, request)
        return commands_from_proto(reply)

    def upload(
        self, messages: Iterable[Profile_pb2.EBPFProfilingData], timeout: float | None = None
    ) -> None:
        """collectProfilingData: one stream with every message, then wait for the reply.

        ``timeout`` shortens the stream's deadline (e.g. to what is left of a shutdown).
        """
        self._stream(
            "collectProfilingData", lambda s: s.profiling.collectProfilingData, messages, timeout
        )

    # -- ContinuousProfilingService -------------------------------------------------------

    def query_policies(self, services: list[tuple[str, str]]) -> list[CommandData]:
        """queryPolicies with one (service name, cached policy uuid or "") per service."""
        request = Continuous_pb2.ContinuousProfilingPolicyQuery(
            policies=[
                Continuous_pb2.ContinuousProfilingServicePolicyQuery(serviceName=name, uuid=uuid)
                for name, uuid in services
            ]
        )
        reply = self._unary("queryPolicies", lambda s: s.continuous.queryPolicies, request)
        return commands_from_proto(reply)

    def report_profiling_task(
        self, report: Continuous_pb2.ContinuousProfilingReport
    ) -> list[CommandData]:
        """reportProfilingTask; the reply should hold one ContinuousProfilingReportTask."""
        reply = self._unary(
            "reportProfilingTask", lambda s: s.continuous.reportProfilingTask, report
        )
        return commands_from_proto(reply)

    # -- MeterReportService ---------------------------------------------------------------

    def send_meters(self, collections: list[Meter_pb2.MeterDataCollection]) -> None:
        """collectBatch: one stream, one independent data set per collection."""
        self._stream("collectBatch", lambda s: s.meter.collectBatch, collections)

    # -- LogReportService, SpanAttachedEventReportService -----------------------------------

    def send_logs(self, logs: list[Logging_pb2.LogData]) -> None:
        """LogReportService/collect: one stream; the OAP copies its first service onto every
        element, so give it the logs of one service only."""
        self._stream("LogReportService/collect", lambda s: s.log.collect, logs)

    def send_span_events(self, events: list[Tracing_pb2.SpanAttachedEvent]) -> None:
        """SpanAttachedEventReportService/collect: one stream."""
        self._stream(
            "SpanAttachedEventReportService/collect", lambda s: s.span_event.collect, events
        )

    def close(self, timeout: float = 5.0) -> None:
        """Close the channel, cancelling calls in flight; bounded by ``timeout`` seconds."""
        self._channel.close(timeout)

    def __enter__(self) -> BackendClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _unary(
        self, method: str, rpc: Callable[[Stubs], Callable[..., Response]], request: Any
    ) -> Response:
        return self._call(method, rpc, request, self.config.call_timeout)

    def _stream(
        self,
        method: str,
        rpc: Callable[[Stubs], Callable[..., Command_pb2.Commands]],
        messages: Iterable[Any],
        timeout: float | None = None,
    ) -> None:
        batch = list(messages)
        deadline = self.config.call_timeout + len(batch) * STREAM_SECONDS_PER_MESSAGE
        if timeout is not None:
            deadline = min(deadline, timeout)
        self._call(method, rpc, iter(batch), deadline)

    def _call(
        self,
        method: str,
        rpc: Callable[[Stubs], Callable[..., Response]],
        request: Any,
        timeout: float,
    ) -> Response:
        try:
            stubs = self._channel.stubs()
        except BackendUnavailable as e:
            raise BackendUnavailable(method, e.code, e.reason) from e
        try:
            response = rpc(stubs)(request, timeout=timeout)
        except grpc.RpcError as e:
            code: grpc.StatusCode = e.code()
            details = e.details() or code.name
            if code in _DISCONNECTING_CODES:
                self.state.mark_disconnected(f"{method}: {code.name}: {details}")
                if code is grpc.StatusCode.UNAVAILABLE:
                    self._channel.call_failed()
            else:
                self.state.mark_connected()
            log.debug("backend call %s failed: %s: %s", method, code.name, details)
            raise BackendUnavailable(method, code.name, details) from None
        self.state.mark_connected()
        return response
