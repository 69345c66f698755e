"""The committed stubs are current, and the protocol matches the wire contract."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from rover.backend.proto.common import Command_pb2, Common_pb2
from rover.backend.proto.ebpf.profiling import (
    Continuous_pb2,
    Process_pb2,
    Process_pb2_grpc,
    Profile_pb2,
    Profile_pb2_grpc,
)
from rover.backend.proto.language_agent import Meter_pb2, Tracing_pb2, Tracing_pb2_grpc
from rover.backend.proto.logging import Logging_pb2, Logging_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "rover" / "backend" / "proto"


def _load_generator():  # scripts/ is not a package
    spec = importlib.util.spec_from_file_location("gen_protos", REPO / "scripts" / "gen_protos.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_protos", module)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    fresh = tmp_path / "proto"
    _load_generator().generate(fresh)
    committed = {p for p in _tree(COMMITTED) if "__pycache__" not in p}
    assert committed == _tree(fresh), "run scripts/gen_protos.py and commit the result"
    stale = [p for p in sorted(committed) if not filecmp.cmp(COMMITTED / p, fresh / p, False)]
    assert not stale, f"stale generated stubs {stale}: run scripts/gen_protos.py"


def test_everything_is_in_package_skywalking_v3() -> None:
    modules = (Common_pb2, Command_pb2, Process_pb2, Profile_pb2, Continuous_pb2, Meter_pb2)
    for module in (*modules, Logging_pb2, Tracing_pb2):
        file = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        assert file.package == "skywalking.v3"
        assert file.syntax == "proto3"


def _field(message: type[Message], name: str) -> Any:  # descriptor.FieldDescriptor or upb's
    return message.DESCRIPTOR.fields_by_name[name]


@pytest.mark.parametrize(
    ("message", "name", "number", "oneof"),
    [
        (Profile_pb2.EBPFProfilingData, "task", 1, None),
        (Profile_pb2.EBPFProfilingData, "onCPU", 2, "profiling"),
        (Profile_pb2.EBPFProfilingData, "offCPU", 3, "profiling"),
        (Profile_pb2.EBPFProfilingTaskMetadata, "currentTime", 4, None),
        (Profile_pb2.EBPFProfilingStackMetadata, "stackSymbols", 3, None),
        (Profile_pb2.EBPFOffCPUProfiling, "duration", 3, None),
        (Profile_pb2.EBPFProfilingTaskQuery, "latestUpdateTime", 2, None),
        (Process_pb2.EBPFProcessReportList, "ebpfAgentID", 2, None),
        (Process_pb2.EBPFProcessProperties, "k8sProcess", 2, "metadata"),
        (Process_pb2.EBPFProcessDownstream, "processId", 1, None),
        (Process_pb2.EBPFProcessDownstream, "hostProcess", 2, "process"),
        (Process_pb2.EBPFProcessDownstream, "k8sProcess", 3, "process"),
        (Process_pb2.EBPFHostProcessDownstream, "entityMetadata", 2, None),
        (Process_pb2.EBPFProcessPingPkg, "properties", 2, None),
        (Process_pb2.EBPFProcessEntityMetadata, "labels", 5, None),
        (Continuous_pb2.ContinuousProfilingReport, "duration", 6, None),
        (Continuous_pb2.ContinuousProfilingReport, "network", 9, "targetTask"),
        (Continuous_pb2.ContinuousProfilingCause, "uri", 3, "cause"),
        (Continuous_pb2.ContinuousProfilingURICause, "path", 2, "uri"),
        (Continuous_pb2.ContinuousProfilingURICause, "current", 4, None),
        (Meter_pb2.MeterData, "timestamp", 5, None),
        (Meter_pb2.MeterData, "histogram", 2, "metric"),
        (Meter_pb2.MeterBucketValue, "isNegativeInfinity", 3, None),
        (Command_pb2.Command, "args", 2, None),
        (Common_pb2.KeyStringValuePair, "value", 2, None),
        (Common_pb2.KeyIntValuePair, "key", 1, None),
        (Common_pb2.KeyIntValuePair, "value", 2, None),
        (Common_pb2.Instant, "seconds", 1, None),
        (Common_pb2.Instant, "nanos", 2, None),
        (Logging_pb2.LogData, "timestamp", 1, None),
        (Logging_pb2.LogData, "service", 2, None),
        (Logging_pb2.LogData, "serviceInstance", 3, None),
        (Logging_pb2.LogData, "endpoint", 4, None),
        (Logging_pb2.LogData, "body", 5, None),
        (Logging_pb2.LogData, "traceContext", 6, None),
        (Logging_pb2.LogData, "tags", 7, None),
        (Logging_pb2.LogData, "layer", 8, None),
        (Logging_pb2.LogDataBody, "type", 1, None),
        (Logging_pb2.LogDataBody, "text", 2, "content"),
        (Logging_pb2.LogDataBody, "json", 3, "content"),
        (Logging_pb2.LogDataBody, "yaml", 4, "content"),
        (Logging_pb2.TextLog, "text", 1, None),
        (Logging_pb2.JSONLog, "json", 1, None),
        (Logging_pb2.YAMLLog, "yaml", 1, None),
        (Logging_pb2.TraceContext, "traceId", 1, None),
        (Logging_pb2.TraceContext, "traceSegmentId", 2, None),
        (Logging_pb2.TraceContext, "spanId", 3, None),
        (Logging_pb2.LogTags, "data", 1, None),
        (Tracing_pb2.SpanAttachedEvent, "startTime", 1, None),
        (Tracing_pb2.SpanAttachedEvent, "event", 2, None),
        (Tracing_pb2.SpanAttachedEvent, "endTime", 3, None),
        (Tracing_pb2.SpanAttachedEvent, "tags", 4, None),
        (Tracing_pb2.SpanAttachedEvent, "summary", 5, None),
        (Tracing_pb2.SpanAttachedEvent, "traceContext", 6, None),
        (Tracing_pb2.SpanAttachedEvent.SpanReference, "type", 1, None),
        (Tracing_pb2.SpanAttachedEvent.SpanReference, "traceId", 2, None),
        (Tracing_pb2.SpanAttachedEvent.SpanReference, "traceSegmentId", 3, None),
        (Tracing_pb2.SpanAttachedEvent.SpanReference, "spanId", 4, None),
    ],
)
def test_field_numbers_match_the_spec(
    message: type, name: str, number: int, oneof: str | None
) -> None:
    field = _field(message, name)
    assert field.number == number
    containing = field.containing_oneof
    assert (containing.name if containing else None) == oneof


def test_scalar_types_match_the_spec() -> None:
    assert (
        _field(Profile_pb2.EBPFProfilingStackMetadata, "stackId").type == FieldDescriptor.TYPE_INT32
    )
    assert _field(Profile_pb2.EBPFOnCPUProfiling, "dumpCount").type == FieldDescriptor.TYPE_INT32
    assert _field(Profile_pb2.EBPFOffCPUProfiling, "duration").type == FieldDescriptor.TYPE_INT64
    assert _field(Process_pb2.EBPFHostProcessMetadata, "pid").type == FieldDescriptor.TYPE_INT32
    assert _field(Continuous_pb2.ContinuousProfilingReport, "duration").type == (
        FieldDescriptor.TYPE_INT32
    )
    assert _field(Meter_pb2.MeterSingleValue, "value").type == FieldDescriptor.TYPE_DOUBLE
    assert _field(Logging_pb2.TraceContext, "spanId").type == FieldDescriptor.TYPE_INT32
    reference = Tracing_pb2.SpanAttachedEvent.SpanReference
    assert _field(reference, "spanId").type == FieldDescriptor.TYPE_STRING
    assert _field(Common_pb2.Instant, "seconds").type == FieldDescriptor.TYPE_INT64
    assert _field(Common_pb2.Instant, "nanos").type == FieldDescriptor.TYPE_INT32
    assert _field(Common_pb2.KeyIntValuePair, "value").type == FieldDescriptor.TYPE_INT64


def test_enums_match_the_spec() -> None:
    assert Profile_pb2.EBPFProfilingStackType.Value("PROCESS_KERNEL_SPACE") == 0
    assert Profile_pb2.EBPFProfilingStackType.Value("PROCESS_USER_SPACE") == 1
    monitor = Continuous_pb2.ContinuousProfilingTriggeredMonitorType
    names = [
        "ProcessCPU",
        "ProcessThreadCount",
        "SystemLoad",
        "HTTPErrorRate",
        "HTTPAvgResponseTime",
    ]
    assert [monitor.Value(n) for n in names] == [0, 1, 2, 3, 4]
    reference_type = Tracing_pb2.SpanAttachedEvent.SpanReferenceType
    assert reference_type.Value("SKYWALKING") == 0
    assert reference_type.Value("ZIPKIN") == 1
    assert Tracing_pb2.SpanAttachedEvent.DESCRIPTOR.enum_types_by_name["SpanReferenceType"]


def _method(module, service: str, rpc: str) -> descriptor_pb2.MethodDescriptorProto:
    for method in module.DESCRIPTOR.services_by_name[service].methods:
        if method.name == rpc:
            proto = descriptor_pb2.MethodDescriptorProto()
            method.CopyToProto(proto)
            return proto
    raise AssertionError(f"{service}.{rpc} not found")


SERVICES = [
    # (module, service, rpc, request type, response type, client streaming)
    (Process_pb2, "EBPFProcessService", "reportProcesses", "EBPFProcessReportList",
     "EBPFReportProcessDownstream", False),
    (Process_pb2, "EBPFProcessService", "keepAlive", "EBPFProcessPingPkgList", "Commands",
     False),
    (Profile_pb2, "EBPFProfilingService", "queryTasks", "EBPFProfilingTaskQuery", "Commands",
     False),
    (Profile_pb2, "EBPFProfilingService", "collectProfilingData", "EBPFProfilingData",
     "Commands", True),
    (Continuous_pb2, "ContinuousProfilingService", "queryPolicies",
     "ContinuousProfilingPolicyQuery", "Commands", False),
    (Continuous_pb2, "ContinuousProfilingService", "reportProfilingTask",
     "ContinuousProfilingReport", "Commands", False),
    (Meter_pb2, "MeterReportService", "collect", "MeterData", "Commands", True),
    (Meter_pb2, "MeterReportService", "collectBatch", "MeterDataCollection", "Commands", True),
    (Logging_pb2, "LogReportService", "collect", "LogData", "Commands", True),
    (Tracing_pb2, "SpanAttachedEventReportService", "collect", "SpanAttachedEvent", "Commands",
     True),
]  # fmt: skip


@pytest.mark.parametrize("case", SERVICES, ids=lambda case: f"{case[1]}.{case[2]}")
def test_services_match_the_spec(case: tuple) -> None:
    module, service, rpc, request_type, response_type, client_streaming = case
    method = _method(module, service, rpc)
    assert method.input_type == f".skywalking.v3.{request_type}"
    assert method.output_type == f".skywalking.v3.{response_type}"
    assert method.client_streaming is client_streaming
    assert not method.server_streaming


def test_full_method_paths_in_the_grpc_stubs() -> None:
    calls: dict[str, str] = {}

    class RecordingChannel:
        def __getattr__(self, kind: str):
            def make(path: str, **kwargs: object) -> None:
                calls[path] = kind

            return make

    Profile_pb2_grpc.EBPFProfilingServiceStub(RecordingChannel())
    Process_pb2_grpc.EBPFProcessServiceStub(RecordingChannel())
    Logging_pb2_grpc.LogReportServiceStub(RecordingChannel())
    Tracing_pb2_grpc.SpanAttachedEventReportServiceStub(RecordingChannel())
    assert calls["/skywalking.v3.EBPFProfilingService/collectProfilingData"] == "stream_unary"
    assert calls["/skywalking.v3.EBPFProfilingService/queryTasks"] == "unary_unary"
    assert calls["/skywalking.v3.EBPFProcessService/reportProcesses"] == "unary_unary"
    assert calls["/skywalking.v3.LogReportService/collect"] == "stream_unary"
    assert calls["/skywalking.v3.SpanAttachedEventReportService/collect"] == "stream_unary"


def test_stubs_import_without_the_proto_root_on_sys_path() -> None:
    # the generated absolute imports ("from common import ...") were rewritten
    for path in COMMITTED.rglob("*.py"):
        text = path.read_text()
        assert "\nfrom common " not in text and "\nfrom ebpf" not in text, path
    assert (
        Profile_pb2.EBPFProfilingData.__module__ == "rover.backend.proto.ebpf.profiling.Profile_pb2"
    )
