"""The wire adapter: trigger reports, report replies, meters and the backend-facing ports."""

from __future__ import annotations

import json
import logging

import pytest

from rover.backend.commands import CommandData
from rover.backend.continuous import (
    BackendMeterSink,
    BackendPolicySource,
    BackendTriggerSink,
    ReportReplyError,
    meters_to_proto,
    report_to_proto,
    task_id_from_reply,
)
from rover.backend.errors import BackendUnavailable
from rover.backend.proto.ebpf.profiling import Continuous_pb2
from rover.backend.proto.language_agent import Meter_pb2
from rover.continuous import Cause, MeterSample, MonitorType, ServicePolicy, TargetType, Trigger
from rover.continuous.http_series import GLOBAL, PATH, REGEX, Uri
from rover.process.model import DiscoveredProcess, Entity, ProcessKind

ENTITY = Entity("OS_LINUX", "prod::checkout", "checkout-7f9", "java", ("k8s-service",))
PROCESS = DiscoveredProcess(pid=42, entity=ENTITY, kind=ProcessKind.HOST)


def trigger(target: TargetType = TargetType.ON_CPU, *causes: Cause) -> Trigger:
    return Trigger(
        target=target,
        process_id="pid-hex",
        process=PROCESS,
        causes=causes or (Cause(MonitorType.PROCESS_CPU, 85.0, 97.5),),
        duration_s=600,
        processes=(("pid-hex", PROCESS),),
    )


def test_report_carries_the_entity_causes_duration_and_on_cpu_target():
    causes = (
        Cause(MonitorType.PROCESS_CPU, 85.0, 97.5),
        Cause(MonitorType.PROCESS_THREAD_COUNT, 500, 612),
        Cause(MonitorType.SYSTEM_LOAD, 4.0, 6.25),
    )
    report = report_to_proto(trigger(TargetType.ON_CPU, *causes))
    assert (report.layer, report.serviceName, report.instanceName, report.processName) == (
        "OS_LINUX",
        "prod::checkout",
        "checkout-7f9",
        "java",
    )
    assert report.duration == 600
    assert report.WhichOneof("targetTask") == "onCPU"
    assert [(c.type, c.WhichOneof("cause")) for c in report.causes] == [
        (Continuous_pb2.ProcessCPU, "singleValue"),
        (Continuous_pb2.ProcessThreadCount, "singleValue"),
        (Continuous_pb2.SystemLoad, "singleValue"),
    ]
    assert [(c.singleValue.threshold, c.singleValue.current) for c in report.causes] == [
        (85.0, 97.5),
        (500.0, 612.0),
        (4.0, 6.25),
    ]
    again = Continuous_pb2.ContinuousProfilingReport.FromString(report.SerializeToString())
    assert again.WhichOneof("targetTask") == "onCPU"  # the empty message survives the wire


def test_off_cpu_target_and_unsupported_ones():
    assert report_to_proto(trigger(TargetType.OFF_CPU)).WhichOneof("targetTask") == "offCPU"
    with pytest.raises(ValueError, match="HTTP_ERROR_RATE"):  # an HTTP cause needs its uri
        report_to_proto(trigger(TargetType.ON_CPU, Cause(MonitorType.HTTP_ERROR_RATE, 5, 9)))


def test_network_target_with_uri_causes_and_sampling_regexes():
    causes = (
        Cause(MonitorType.HTTP_ERROR_RATE, 20, 50, Uri(PATH, "/fail")),
        Cause(MonitorType.HTTP_AVG_RESPONSE_TIME, 100, 300, Uri(REGEX, "^/api/.*")),
        Cause(MonitorType.PROCESS_CPU, 80, 90),
    )
    report = report_to_proto(trigger(TargetType.NETWORK, *causes))
    again = Continuous_pb2.ContinuousProfilingReport.FromString(report.SerializeToString())
    assert again.WhichOneof("targetTask") == "network"
    assert list(again.network.samplingURIRegexes) == ["/fail", "^/api/.*"]
    first, second, third = again.causes
    assert (first.type, first.WhichOneof("cause")) == (Continuous_pb2.HTTPErrorRate, "uri")
    assert (first.uri.WhichOneof("uri"), first.uri.path) == ("path", "/fail")
    assert (first.uri.threshold, first.uri.current) == (20, 50)
    assert second.type == Continuous_pb2.HTTPAvgResponseTime
    assert (second.uri.WhichOneof("uri"), second.uri.regex) == ("regex", "^/api/.*")
    assert third.WhichOneof("cause") == "singleValue"
    # a cause counting every request: path "" and the single catch-all regex
    every = report_to_proto(
        trigger(TargetType.NETWORK, *causes, Cause(MonitorType.HTTP_ERROR_RATE, 5, 9, Uri(GLOBAL)))
    )
    again = Continuous_pb2.ContinuousProfilingReport.FromString(every.SerializeToString())
    assert list(again.network.samplingURIRegexes) == [""]
    assert (again.causes[3].uri.WhichOneof("uri"), again.causes[3].uri.path) == ("path", "")
    # no URI cause: the list is empty, the target still says network
    cpu_only = report_to_proto(trigger(TargetType.NETWORK))
    assert cpu_only.WhichOneof("targetTask") == "network"
    assert list(cpu_only.network.samplingURIRegexes) == []


def test_task_id_from_a_good_reply():
    reply = [CommandData("ContinuousProfilingReportTask", {"SerialNumber": "s", "TaskId": "ab12"})]
    assert task_id_from_reply(reply) == "ab12"
    other = CommandData("ConfigurationDiscoveryCommand", {})
    assert task_id_from_reply([other, *reply]) == "ab12"


@pytest.mark.parametrize(
    "reply",
    [
        [],
        [CommandData("SomethingElse", {"TaskId": "x"})],
        [CommandData("ContinuousProfilingReportTask", {"SerialNumber": "s"})],
        [CommandData("ContinuousProfilingReportTask", {"TaskId": "  "})],
        [CommandData("ContinuousProfilingReportTask", {"TaskId": "a"})] * 2,
    ],
)
def test_a_reply_without_exactly_one_task_id_is_an_error(reply):
    with pytest.raises(ReportReplyError):
        task_id_from_reply(reply)


def sample(service: str, instance: str, name: str, value: float) -> MeterSample:
    labels = (("process_name", "java"), ("layer", "OS_LINUX"))
    return MeterSample(name, value, service, instance, labels, 1_700_000_000_123)


def test_meters_are_grouped_per_service_instance_with_every_field():
    collections = meters_to_proto(
        [
            sample("a", "a1", "rover_con_p_process_cpu", 12.5),
            sample("b", "b1", "rover_con_p_system_load", 1.5),
            sample("a", "a1", "rover_con_p_process_thread_count", 30),
            sample("a", "a2", "rover_con_p_process_cpu", 1.0),
        ]
    )
    assert [[(d.service, d.serviceInstance) for d in c.meterData] for c in collections] == [
        [("a", "a1"), ("a", "a1")],
        [("b", "b1")],
        [("a", "a2")],
    ]
    first = collections[0].meterData[0]
    assert first.timestamp == 1_700_000_000_123
    assert first.WhichOneof("metric") == "singleValue"
    assert first.singleValue.name == "rover_con_p_process_cpu"
    assert first.singleValue.value == 12.5
    assert [(lb.name, lb.value) for lb in first.singleValue.labels] == [
        ("process_name", "java"),
        ("layer", "OS_LINUX"),
    ]
    assert meters_to_proto([]) == []


class FakeClient:
    def __init__(self) -> None:
        self.policy_reply: list[CommandData] = []
        self.report_reply: list[CommandData] = []
        self.queries: list[list[tuple[str, str]]] = []
        self.reports: list[Continuous_pb2.ContinuousProfilingReport] = []
        self.meters: list[list[Meter_pb2.MeterDataCollection]] = []
        self.down = False

    def query_policies(self, services):
        if self.down:
            raise BackendUnavailable("queryPolicies", "UNAVAILABLE", "connection refused")
        self.queries.append(services)
        return self.policy_reply

    def report_profiling_task(self, report):
        self.reports.append(report)
        return self.report_reply

    def send_meters(self, collections):
        self.meters.append(collections)


def test_policy_source_sends_every_service_and_parses_the_reply():
    client = FakeClient()
    policies = [{"ServiceName": "a", "UUID": ""}, {"ServiceName": "b", "UUID": "v9"}]
    client.policy_reply = [
        CommandData(
            "ContinuousProfilingPolicyQuery",
            {"SerialNumber": "s", "ServiceWithPolicyJSON": json.dumps(policies)},
        )
    ]
    source = BackendPolicySource(client)
    assert source.fetch({"b": "", "a": "v1"}) == [ServicePolicy("a", ""), ServicePolicy("b", "v9")]
    assert client.queries == [[("a", "v1"), ("b", "")]]


def test_policy_source_rejects_a_malformed_reply_and_propagates_unavailability(caplog):
    client = FakeClient()
    client.policy_reply = [
        CommandData("ContinuousProfilingPolicyQuery", {"ServiceWithPolicyJSON": "{oops"})
    ]
    with caplog.at_level(logging.ERROR):
        assert BackendPolicySource(client).fetch({"a": ""}) is None
    assert "policy reply rejected" in caplog.text
    client.down = True
    with pytest.raises(BackendUnavailable):
        BackendPolicySource(client).fetch({"a": ""})


def test_policy_source_counts_every_skipped_entry_and_logs_it_once(caplog):
    client = FakeClient()
    policies = [{"ServiceName": "", "UUID": "v1"}, {"ServiceName": "b", "UUID": "v9"}]
    client.policy_reply = [
        CommandData(
            "ContinuousProfilingPolicyQuery", {"ServiceWithPolicyJSON": json.dumps(policies)}
        )
    ]
    source = BackendPolicySource(client)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # the backend sends it again at every check
            assert source.fetch({}) == [ServicePolicy("b", "v9")]
    assert source.entries_skipped == 3
    assert caplog.text.count("policy entry 0 skipped") == 1
    client.policy_reply = [
        CommandData("ContinuousProfilingPolicyQuery", {"ServiceWithPolicyJSON": "{oops"})
    ]
    with caplog.at_level(logging.ERROR):
        assert source.fetch({}) is None and source.fetch({}) is None
    assert source.replies_rejected == 2
    assert caplog.text.count("policy reply rejected") == 1


def test_trigger_sink_reports_and_returns_the_task_id():
    client = FakeClient()
    client.report_reply = [CommandData("ContinuousProfilingReportTask", {"TaskId": "t-1"})]
    assert BackendTriggerSink(client).report(trigger()) == "t-1"
    assert client.reports[0].serviceName == "prod::checkout"
    client.report_reply = []
    with pytest.raises(ReportReplyError):
        BackendTriggerSink(client).report(trigger())


def test_meter_sink_sends_collections_and_nothing_for_no_samples():
    client = FakeClient()
    sink = BackendMeterSink(client)
    sink.send([])
    assert client.meters == []
    sink.send([sample("a", "a1", "rover_con_p_process_cpu", 1.0)])
    (collections,) = client.meters
    assert len(collections) == 1 and len(collections[0].meterData) == 1
