"""A fake SkyWalking OAP for tests: a real gRPC server speaking our generated protocol.

It implements every service of the wire contract
(shared/spec/skywalking-ebpf-protocol.md, sections 1-3), answers like the OAP
does, and records every call. Use the ``fake_oap`` fixture (a started server,
stopped at teardown) or build one for special settings::

    oap = FakeOAP(authentication="secret", tls=ServerTLS(cert, key)).start()
    client = BackendClient(BackendConfig(addr=oap.addr, ...))
    ...
    oap.wait_for(lambda o: o.calls_of("keepAlive"))
    oap.stop()

Behaviour, per service:

* ``reportProcesses`` gives each process the OAP's id (SHA-256 hex of
  ``<processName>_<instance id>``, the instance id derived from service and
  instance name; the pid is not part of it) and echoes pid + entity in the
  oneof member that was sent. :meth:`ignore_processes` makes it leave some out.
* ``keepAlive``, ``collectProfilingData``, ``collect``, ``collectBatch``:
  recorded, answered with an empty ``Commands``. The ``collect`` of the log and
  span-attached-event services (spec 8.1) are recorded as
  ``"LogReportService/collect"`` and ``"SpanAttachedEventReportService/collect"``
  (plain ``"collect"`` stays MeterReportService's).
* ``queryTasks``: the tasks added with :meth:`add_task` whose update time is
  strictly greater than ``latestUpdateTime``; ON_CPU/OFF_CPU tasks yield one
  command per process that was reported under the querying agent id with
  ``support_ebpf_profiling=true``, NETWORK tasks one command listing all such
  processes. Args exactly as spec 3.2, ``SerialNumber`` first.
* ``queryPolicies``: policies set with :meth:`set_policy`, filtered by UUID as
  spec 3.4 says (empty reply when nothing changed).
* ``reportProfilingTask``: one ``ContinuousProfilingReportTask`` command with
  a fresh TaskId (spec 3.5), or what :meth:`set_report_reply` configured.

Faults: :meth:`fail_with` makes calls fail with a status (UNAVAILABLE by
default), :meth:`delay` makes handlers sleep, :meth:`hang` makes them never
answer (recorded with status ``"HUNG"``; released by :meth:`stop`), ``authentication`` makes calls
without the right ``authentication`` header fail with PERMISSION_DENIED, and
:meth:`stop` / :meth:`start` / :meth:`restart` take the server down and up on
the same port.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from rover.backend.commands import CommandData, command_to_proto
from rover.backend.proto.common import Command_pb2
from rover.backend.proto.ebpf.profiling import (
    Continuous_pb2_grpc,
    Process_pb2,
    Process_pb2_grpc,
    Profile_pb2,
    Profile_pb2_grpc,
)
from rover.backend.proto.language_agent import Meter_pb2_grpc, Tracing_pb2_grpc
from rover.backend.proto.logging import Logging_pb2_grpc
from rover.process.model import DiscoveredProcess, Entity, ProcessKind

LOG_COLLECT = "LogReportService/collect"
SPAN_EVENT_COLLECT = "SpanAttachedEventReportService/collect"
STREAMING_METHODS = frozenset(
    {"collectProfilingData", "collect", "collectBatch", LOG_COLLECT, SPAN_EVENT_COLLECT}
)


@dataclass(frozen=True)
class ServerTLS:
    """PEM server certificate and key; ``client_ca`` set = require client certificates."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None


@dataclass(frozen=True)
class RecordedCall:
    """One call as the server saw it.

    ``request`` is the request message, or for client streams the list of
    messages received. ``metadata`` maps lower-case keys to values. ``status``
    is ``"OK"`` or the status code name the call was answered with.
    """

    method: str
    request: Any
    metadata: dict[str, str | bytes]  # binary ("-bin") keys carry bytes
    status: str
    time: float


@dataclass
class ReportedProcess:
    """A process as the fake OAP stored it from ``reportProcesses``."""

    process_id: str
    kind: str  # "hostProcess" or "k8sProcess"
    pid: int
    entity: Process_pb2.EBPFProcessEntityMetadata
    properties: dict[str, str]
    agent_id: str


@dataclass
class FakeTask:
    """An eBPF profiling task as the OAP would send it (spec 3.2)."""

    task_id: str
    process_ids: list[str]
    target_type: str
    trigger_type: str
    start_time_ms: int
    update_time_ms: int
    duration_s: int
    extension_config_json: str = "null"


@dataclass
class _Faults:
    code: grpc.StatusCode | None = None
    details: str = ""
    methods: frozenset[str] | None = None  # None = every method
    delay_s: float = 0.0
    delay_methods: frozenset[str] | None = None
    hang: bool = False
    hang_methods: frozenset[str] | None = None


# an agent id as Rover makes them (a random UUID)
AGENT_ID = "4f9f6c36-2f37-4a57-9d8e-3a4b1b0b7a11"


def make_process(
    pid: int,
    name: str = "app",
    kind: ProcessKind = ProcessKind.HOST,
    labels: tuple[str, ...] = (),
    profilable: bool = True,
    service: str = "svc",
) -> DiscoveredProcess:
    """A DiscoveredProcess as discovery would produce it, for tests."""
    properties = {
        "host_ip": "10.0.0.1",
        "pid": str(pid),
        "command_line": f"/usr/bin/{name} --serve",
        "support_ebpf_profiling": "true" if profilable else "false",
    }
    entity = Entity("GENERAL", service, "host-1", name, labels)
    return DiscoveredProcess(pid, entity, kind, start_time=1000 + pid, properties=properties)


def oap_process_id(entity: Process_pb2.EBPFProcessEntityMetadata) -> str:
    """The id the OAP gives a process: no pid in it (spec 4.2)."""
    service_id = base64.b64encode(entity.serviceName.encode()).decode() + ".1"
    instance_id = service_id + "_" + base64.b64encode(entity.instanceName.encode()).decode()
    return hashlib.sha256(f"{entity.processName}_{instance_id}".encode()).hexdigest()


def policy_uuid(profiling: dict) -> str:
    """A policy version like the OAP's: SHA-512 hex of the policy JSON."""
    return hashlib.sha512(json.dumps(profiling, sort_keys=True).encode()).hexdigest()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _gson(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class FakeOAP:
    """The fake backend. Thread-safe; every public method may be called while it serves."""

    def __init__(
        self,
        *,
        authentication: str = "",
        tls: ServerTLS | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int = 16,
    ) -> None:
        self.authentication = authentication
        self.tls = tls
        self.host = host
        self.port = port
        self._workers = workers
        self._server: grpc.Server | None = None
        self._lock = threading.Condition()
        self._calls: list[RecordedCall] = []
        self._faults = _Faults()
        self._release_hung = threading.Event()
        self._ignore: Callable[[Process_pb2.EBPFProcessEntityMetadata], bool] = lambda e: False
        self.processes: dict[str, ReportedProcess] = {}
        self._tasks: dict[str, FakeTask] = {}
        self._raw_task_commands: list[CommandData] = []
        self._policies: dict[str, tuple[str, dict]] = {}  # service -> (uuid, Profiling)
        self._report_reply: list[CommandData] | None = None
        self.continuous_task_ids: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def addr(self) -> str:
        """``host:port`` to give the client."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeOAP:
        """Serve on ``port`` (a free one the first time if 0; the same one afterwards)."""
        if self._server is not None:
            return self
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._workers))
        Process_pb2_grpc.add_EBPFProcessServiceServicer_to_server(_ProcessService(self), server)
        Profile_pb2_grpc.add_EBPFProfilingServiceServicer_to_server(_ProfilingService(self), server)
        Continuous_pb2_grpc.add_ContinuousProfilingServiceServicer_to_server(
            _ContinuousService(self), server
        )
        Meter_pb2_grpc.add_MeterReportServiceServicer_to_server(_MeterService(self), server)
        Logging_pb2_grpc.add_LogReportServiceServicer_to_server(_LogService(self), server)
        Tracing_pb2_grpc.add_SpanAttachedEventReportServiceServicer_to_server(
            _SpanEventService(self), server
        )
        bind = f"{self.host}:{self.port}"
        if self.tls is None:
            port = server.add_insecure_port(bind)
        else:
            credentials = grpc.ssl_server_credentials(
                [(self.tls.key, self.tls.cert)],
                root_certificates=self.tls.client_ca,
                require_client_auth=self.tls.client_ca is not None,
            )
            port = server.add_secure_port(bind, credentials)
        if port == 0:
            raise RuntimeError(f"fake OAP cannot bind {bind}")
        self.port = port
        server.start()
        self._server = server
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop serving; open connections are closed (clients see the backend go away)."""
        self._release_hung.set()
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait()

    def restart(self, *, forget_processes: bool = False) -> None:
        """Stop and start on the same port. ``forget_processes`` drops the process registry,
        like an OAP restarted on empty storage; tasks, policies and recordings stay."""
        self.stop()
        if forget_processes:
            with self._lock:
                self.processes.clear()
        self.start()

    def __enter__(self) -> FakeOAP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- recordings ----------------------------------------------------------------------

    @property
    def calls(self) -> list[RecordedCall]:
        with self._lock:
            return list(self._calls)

    def calls_of(self, method: str, *, ok_only: bool = False) -> list[RecordedCall]:
        """Calls of one RPC (e.g. ``"keepAlive"``), oldest first."""
        return [c for c in self.calls if c.method == method and (not ok_only or c.status == "OK")]

    def requests(self, method: str) -> list[Any]:
        """Request messages of the successful calls of one RPC (lists for streams)."""
        return [c.request for c in self.calls_of(method, ok_only=True)]

    def profiling_data(self) -> list[Profile_pb2.EBPFProfilingData]:
        """Every EBPFProfilingData received by successful streams, in order."""
        return [m for stream in self.requests("collectProfilingData") for m in stream]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def wait_for(
        self, predicate: Callable[[FakeOAP], Any], timeout: float = 5.0, what: str = ""
    ) -> Any:
        """Wait until ``predicate(self)`` is truthy; return that value (AssertionError if not)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                value = predicate(self)
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    methods = [c.method for c in self._calls]
                    raise AssertionError(
                        f"fake OAP: timed out after {timeout} s waiting for "
                        f"{what or predicate}; calls so far: {methods}"
                    )
                self._lock.wait(min(remaining, 0.05))

    def wait_for_calls(
        self, method: str, count: int = 1, timeout: float = 5.0
    ) -> list[RecordedCall]:
        """Wait until at least ``count`` successful calls of ``method`` arrived."""
        return self.wait_for(
            lambda o: (calls := o.calls_of(method, ok_only=True)) and len(calls) >= count and calls,
            timeout,
            f"{count} {method} call(s)",
        )

    # -- faults ----------------------------------------------------------------------------

    def fail_with(
        self,
        code: grpc.StatusCode | None = grpc.StatusCode.UNAVAILABLE,
        *methods: str,
        details: str = "fake OAP: injected failure",
    ) -> None:
        """Answer calls (of ``methods``, default all) with ``code``; ``None`` heals."""
        with self._lock:
            self._faults.code = code
            self._faults.details = details
            self._faults.methods = frozenset(methods) if methods else None

    def delay(self, seconds: float, *methods: str) -> None:
        """Sleep ``seconds`` in handlers (of ``methods``, default all) before answering."""
        with self._lock:
            self._faults.delay_s = seconds
            self._faults.delay_methods = frozenset(methods) if methods else None

    def hang(self, *methods: str) -> None:
        """Accept calls (of ``methods``, default all) and never answer them, like a backend
        whose connections are up but whose threads are stuck; :meth:`stop` releases them."""
        with self._lock:
            self._faults.hang = True
            self._faults.hang_methods = frozenset(methods) if methods else None
            self._release_hung.clear()

    def ignore_processes(
        self, predicate: Callable[[Process_pb2.EBPFProcessEntityMetadata], bool]
    ) -> None:
        """reportProcesses returns no id for processes whose entity satisfies ``predicate``."""
        with self._lock:
            self._ignore = predicate

    # -- tasks, policies, continuous reports --------------------------------------------------

    def add_task(
        self,
        process_ids: str | list[str],
        *,
        target_type: str = "ON_CPU",
        duration_s: int = 60,
        start_time_ms: int | None = None,
        update_time_ms: int | None = None,
        task_id: str | None = None,
        trigger_type: str = "FIXED_TIME",
        extension_config_json: str = "null",
    ) -> FakeTask:
        """Add (or replace, same ``task_id``) a task; returns it. Times default to now."""
        now = _now_ms()
        start = now if start_time_ms is None else start_time_ms
        ids = [process_ids] if isinstance(process_ids, str) else list(process_ids)
        task = FakeTask(
            task_id=task_id or hashlib.sha256(f"{ids}{start}{uuid.uuid4()}".encode()).hexdigest(),
            process_ids=ids,
            target_type=target_type,
            trigger_type=trigger_type,
            start_time_ms=start,
            update_time_ms=now if update_time_ms is None else update_time_ms,
            duration_s=duration_s,
            extension_config_json=extension_config_json,
        )
        with self._lock:
            self._tasks[task.task_id] = task
        return task

    def extend_task(
        self, task_id: str, extra_s: int = 600, update_time_ms: int | None = None
    ) -> None:
        """Lengthen a task and bump its update time, like "keep network profiling"."""
        with self._lock:
            task = self._tasks[task_id]
            task.duration_s += extra_s
            task.update_time_ms = _now_ms() if update_time_ms is None else update_time_ms

    def add_raw_task_command(
        self, args: dict[str, str], name: str = "EBPFProfilingTaskQuery"
    ) -> None:
        """Also answer every queryTasks with this command as given (malformed ones too)."""
        with self._lock:
            self._raw_task_commands.append(CommandData(name, dict(args)))

    def task_commands(self, agent_id: str, latest_update_time: int) -> list[CommandData]:
        """What queryTasks answers (spec 3.2, 4.4), then any raw commands added."""
        with self._lock:
            raw = list(self._raw_task_commands)
            mine = {pid: p for pid, p in self.processes.items() if p.agent_id == agent_id}
            tasks = sorted(self._tasks.values(), key=lambda t: t.update_time_ms)
        commands = []
        for task in tasks:
            if task.update_time_ms <= latest_update_time:
                continue
            candidates = [pid for pid in task.process_ids if pid in mine]
            if task.target_type == "NETWORK":
                groups = [candidates] if candidates else []
            else:
                groups = [
                    [pid]
                    for pid in candidates
                    if mine[pid].properties.get("support_ebpf_profiling") == "true"
                ]
            for group in groups:
                args = {
                    "SerialNumber": str(uuid.uuid4()),
                    "TaskId": task.task_id,
                    "ProcessId": ",".join(group),
                    "TaskUpdateTime": str(task.update_time_ms),
                    "TriggerType": task.trigger_type,
                    "TargetType": task.target_type,
                    "TaskStartTime": str(task.start_time_ms),
                    "ExtensionConfigJSON": task.extension_config_json,
                }
                if task.trigger_type == "FIXED_TIME":
                    args["FixedTriggerDuration"] = str(task.duration_s)
                commands.append(CommandData("EBPFProfilingTaskQuery", args))
        return commands + raw

    def set_policy(
        self, service_name: str, profiling: dict | None, uuid_: str | None = None
    ) -> str:
        """Store the ``Profiling`` object of a service's policy (None removes it); returns its UUID.

        ``profiling`` is e.g. ``{"ON_CPU": {"PROCESS_CPU": {"Threshold": "80", "Period": 10,
        "Count": 3}}}``.
        """
        with self._lock:
            if profiling is None:
                self._policies.pop(service_name, None)
                return ""
            version = uuid_ or policy_uuid(profiling)
            self._policies[service_name] = (version, profiling)
            return version

    def policy_commands(self, queries: list[tuple[str, str]]) -> list[CommandData]:
        """What queryPolicies answers for (service, uuid) pairs (spec 3.4)."""
        entries = []
        with self._lock:
            for service, sent_uuid in queries:
                stored = self._policies.get(service)
                if stored is not None and stored[0] != sent_uuid:
                    entries.append(
                        {"ServiceName": service, "UUID": stored[0], "Profiling": stored[1]}
                    )
                elif stored is None and sent_uuid:
                    entries.append({"ServiceName": service, "UUID": ""})
        if not entries:
            return []
        args = {"SerialNumber": str(uuid.uuid4()), "ServiceWithPolicyJSON": _gson(entries)}
        return [CommandData("ContinuousProfilingPolicyQuery", args)]

    def set_report_reply(self, commands: list[CommandData] | None) -> None:
        """Answer reportProfilingTask with ``commands`` (None: the normal fresh-TaskId reply)."""
        with self._lock:
            self._report_reply = commands

    # -- serving (called from the servicers) ------------------------------------------------

    def _admit(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        """Record the call, then apply authentication and injected faults (may abort)."""
        metadata = {k.lower(): v for k, v in context.invocation_metadata()}
        with self._lock:
            faults = _Faults(**vars(self._faults))
        status = "OK"
        abort: tuple[grpc.StatusCode, str] | None = None
        if self.authentication and metadata.get("authentication") != self.authentication:
            abort = (grpc.StatusCode.PERMISSION_DENIED, "fake OAP: authentication mismatch")
        elif faults.code is not None and (faults.methods is None or method in faults.methods):
            abort = (faults.code, faults.details)
        hung = faults.hang and (faults.hang_methods is None or method in faults.hang_methods)
        if abort is not None:
            status = abort[0].name
        elif hung:
            status = "HUNG"
        self._record(RecordedCall(method, request, metadata, status, time.time()))
        if abort is not None:
            context.abort(*abort)
        if hung:
            self._release_hung.wait()
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake OAP: stopped while hung")
        if faults.delay_s and (faults.delay_methods is None or method in faults.delay_methods):
            time.sleep(faults.delay_s)

    def _record(self, call: RecordedCall) -> None:
        with self._lock:
            self._calls.append(call)
            self._lock.notify_all()

    def _report_processes(
        self, request: Process_pb2.EBPFProcessReportList
    ) -> Process_pb2.EBPFReportProcessDownstream:
        reply = Process_pb2.EBPFReportProcessDownstream()
        with self._lock:
            ignore = self._ignore
            for properties in request.processes:
                member = properties.WhichOneof("metadata")
                if member is None:
                    continue
                sent = getattr(properties, member)
                if ignore(sent.entity):
                    continue
                process_id = oap_process_id(sent.entity)
                self.processes[process_id] = ReportedProcess(
                    process_id=process_id,
                    kind=member,
                    pid=sent.pid,
                    entity=sent.entity,
                    properties={kv.key: kv.value for kv in sent.properties},
                    agent_id=request.ebpfAgentID,
                )
                downstream = reply.processes.add(processId=process_id)
                echoed = getattr(downstream, member)  # same oneof member as sent
                echoed.pid = sent.pid
                echoed.entityMetadata.CopyFrom(sent.entity)
        return reply

    def _report_task(self) -> list[CommandData]:
        with self._lock:
            if self._report_reply is not None:
                return list(self._report_reply)
            task_id = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
            self.continuous_task_ids.append(task_id)
        args = {"SerialNumber": str(uuid.uuid4()), "TaskId": task_id}
        return [CommandData("ContinuousProfilingReportTask", args)]


def _commands(commands: list[CommandData]) -> Command_pb2.Commands:
    return Command_pb2.Commands(commands=[command_to_proto(c) for c in commands])


class _ProcessService(Process_pb2_grpc.EBPFProcessServiceServicer):
    def __init__(self, oap: FakeOAP) -> None:
        self.oap = oap

    def reportProcesses(self, request: Any, context: Any) -> Any:
        self.oap._admit("reportProcesses", request, context)
        return self.oap._report_processes(request)

    def keepAlive(self, request: Any, context: Any) -> Any:
        self.oap._admit("keepAlive", request, context)
        return Command_pb2.Commands()


class _ProfilingService(Profile_pb2_grpc.EBPFProfilingServiceServicer):
    def __init__(self, oap: FakeOAP) -> None:
        self.oap = oap

    def queryTasks(self, request: Any, context: Any) -> Any:
        self.oap._admit("queryTasks", request, context)
        return _commands(self.oap.task_commands(request.roverInstanceId, request.latestUpdateTime))

    def collectProfilingData(self, request_iterator: Iterator[Any], context: Any) -> Any:
        _admit_stream(self.oap, "collectProfilingData", request_iterator, context)
        return Command_pb2.Commands()


class _ContinuousService(Continuous_pb2_grpc.ContinuousProfilingServiceServicer):
    def __init__(self, oap: FakeOAP) -> None:
        self.oap = oap

    def queryPolicies(self, request: Any, context: Any) -> Any:
        self.oap._admit("queryPolicies", request, context)
        queries = [(p.serviceName, p.uuid) for p in request.policies]
        return _commands(self.oap.policy_commands(queries))

    def reportProfilingTask(self, request: Any, context: Any) -> Any:
        self.oap._admit("reportProfilingTask", request, context)
        return _commands(self.oap._report_task())


class _MeterService(Meter_pb2_grpc.MeterReportServiceServicer):
    def __init__(self, oap: FakeOAP) -> None:
        self.oap = oap

    def collect(self, request_iterator: Iterator[Any], context: Any) -> Any:
        _admit_stream(self.oap, "collect", request_iterator, context)
        return Command_pb2.Commands()

    def collectBatch(self, request_iterator: Iterator[Any], context: Any) -> Any:
        _admit_stream(self.oap, "collectBatch", request_iterator, context)
        return Command_pb2.Commands()


class _LogService(Logging_pb2_grpc.LogReportServiceServicer):
    def __init__(self, oap: FakeOAP) -> None:
        self.oap = oap

    def collect(self, request_iterator: Iterator[Any], context: Any) -> Any:
        _admit_stream(self.oap, LOG_COLLECT, request_iterator, context)
        return Command_pb2.Commands()


class _SpanEventService(Tracing_pb2_grpc.SpanAttachedEventReportServiceServicer):
    def __init__(self, oap: FakeOAP) -> None:
        self.oap = oap

    def collect(self, request_iterator: Iterator[Any], context: Any) -> Any:
        _admit_stream(self.oap, SPAN_EVENT_COLLECT, request_iterator, context)
        return Command_pb2.Commands()


def _admit_stream(oap: FakeOAP, method: str, requests: Iterator[Any], context: Any) -> None:
    # the OAP rejects a call on its headers, before reading the stream
    metadata = {k.lower(): v for k, v in context.invocation_metadata()}
    if oap.authentication and metadata.get("authentication") != oap.authentication:
        oap._admit(method, [], context)  # records and aborts
    oap._admit(method, list(requests), context)


@pytest.fixture(name="fake_oap")
def fake_oap_fixture() -> Iterator[FakeOAP]:
    """A started plain-text FakeOAP on a free port, stopped at teardown."""
    oap = FakeOAP().start()
    try:
        yield oap
    finally:
        oap.stop()


fake_oap = fake_oap_fixture  # `from fake_oap import fake_oap` also registers the fixture
