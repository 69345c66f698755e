"""BackendClient against the fake OAP: every RPC, authentication, deadlines, state logging."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import grpc
import pytest
from fake_oap import (
    AGENT_ID,
    FakeOAP,
    fake_oap_fixture,  # noqa: F401 - the fixture
    make_process,
    oap_process_id,
)

from rover.backend import BackendClient, BackendUnavailable, CommandData
from rover.backend.commands import commands_from_proto
from rover.backend.process_messages import entity_to_proto, match_process_ids
from rover.backend.proto.common import Command_pb2
from rover.backend.proto.ebpf.profiling import Continuous_pb2, Process_pb2, Profile_pb2
from rover.backend.proto.language_agent import Meter_pb2
from rover.config import BackendConfig
from rover.process.model import DiscoveredProcess, Entity, ProcessKind


@pytest.fixture
def client(fake_oap: FakeOAP) -> Iterator[BackendClient]:
    with BackendClient(BackendConfig(addr=fake_oap.addr, check_period=0.2)) as c:
        yield c


def _mapping_for(client: BackendClient, *processes: DiscoveredProcess) -> dict:
    return client.report_processes(list(processes), AGENT_ID)


# -- EBPFProcessService ------------------------------------------------------------------------


def test_report_processes_maps_each_process_to_its_id(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    host = make_process(10, "nginx", labels=("a", "b"))
    pod = make_process(11, "envoy", ProcessKind.KUBERNETES, labels=("mesh-envoy",))
    ids = _mapping_for(client, host, pod)

    assert ids == {
        host.key: oap_process_id(entity_to_proto(host.entity)),
        pod.key: oap_process_id(entity_to_proto(pod.entity)),
    }
    (request,) = fake_oap.requests("reportProcesses")
    assert request.ebpfAgentID == AGENT_ID
    sent_host, sent_pod = request.processes
    assert sent_host.WhichOneof("metadata") == "hostProcess"
    assert sent_pod.WhichOneof("metadata") == "k8sProcess"
    assert sent_host.hostProcess.pid == 10
    assert list(sent_host.hostProcess.entity.labels) == ["a", "b"]
    assert sent_host.hostProcess.entity.processName == "nginx"
    assert {kv.key: kv.value for kv in sent_pod.k8sProcess.properties} == pod.properties


def test_report_processes_leaves_out_what_the_backend_ignored(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    fake_oap.ignore_processes(lambda entity: entity.processName == "bash")
    kept, ignored = make_process(10, "java"), make_process(11, "bash")
    assert set(_mapping_for(client, kept, ignored)) == {kept.key}


def _downstream(
    kind: str, pid: int, entity: Entity, process_id: str
) -> Process_pb2.EBPFProcessDownstream:
    message = Process_pb2.EBPFProcessDownstream(processId=process_id)
    echoed = getattr(message, kind)
    echoed.pid = pid
    echoed.entityMetadata.CopyFrom(entity_to_proto(entity))
    return message


def test_matching_needs_same_kind_same_pid_and_entity_with_labels_as_a_set() -> None:
    process = make_process(10, "java", labels=("x", "y"))
    entity = process.entity
    reordered = Entity(entity.layer, entity.service_name, entity.instance_name, "java", ("y", "x"))
    other = Entity(entity.layer, entity.service_name, entity.instance_name, "java", ("x",))

    def match(*entries: Process_pb2.EBPFProcessDownstream) -> dict:
        reply = Process_pb2.EBPFReportProcessDownstream(processes=list(entries))
        return match_process_ids([process], reply)

    assert match(_downstream("k8sProcess", 10, entity, "wrong-kind")) == {}
    assert match(_downstream("hostProcess", 11, entity, "wrong-pid")) == {}
    assert match(_downstream("hostProcess", 10, other, "wrong-labels")) == {}
    assert match(Process_pb2.EBPFProcessDownstream(processId="no-member")) == {}
    assert match(
        _downstream("hostProcess", 11, entity, "decoy"),
        _downstream("hostProcess", 10, reordered, "right"),
    ) == {process.key: "right"}


def test_keep_alive_sends_entity_and_only_support_ebpf_profiling(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    process = make_process(10, "java", labels=("l",))
    client.keep_alive([process], AGENT_ID)
    (request,) = fake_oap.requests("keepAlive")
    assert request.ebpfAgentID == AGENT_ID
    (ping,) = request.processes
    assert ping.entityMetadata == entity_to_proto(process.entity)
    assert [(kv.key, kv.value) for kv in ping.properties] == [("support_ebpf_profiling", "true")]


# -- EBPFProfilingService ------------------------------------------------------------------------


def test_query_tasks_returns_commands_with_args_by_key(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    process = make_process(10)
    (process_id,) = _mapping_for(client, process).values()
    task = fake_oap.add_task(process_id, target_type="OFF_CPU", duration_s=120, update_time_ms=5000)

    (command,) = client.query_tasks(AGENT_ID, 0)
    assert command.name == "EBPFProfilingTaskQuery"
    assert list(command.args)[0] == "SerialNumber"
    assert command.args["TaskId"] == task.task_id
    assert command.args["ProcessId"] == process_id
    assert command.args["TargetType"] == "OFF_CPU"
    assert command.args["TriggerType"] == "FIXED_TIME"
    assert command.args["FixedTriggerDuration"] == "120"
    assert command.args["TaskUpdateTime"] == "5000"
    assert command.args["ExtensionConfigJSON"] == "null"
    (request,) = fake_oap.requests("queryTasks")
    assert (request.roverInstanceId, request.latestUpdateTime) == (AGENT_ID, 0)

    # strictly greater than latestUpdateTime, as the OAP filters
    assert client.query_tasks(AGENT_ID, 4999) != []
    assert client.query_tasks(AGENT_ID, 5000) == []
    # another agent's processes do not get the task
    assert client.query_tasks("another-agent", 0) == []


def test_commands_keep_the_last_value_of_duplicate_keys() -> None:
    message = Command_pb2.Commands()
    command = message.commands.add(command="X")
    for key, value in (("SerialNumber", "s"), ("K", "1"), ("K", "2")):
        command.args.add(key=key, value=value)
    assert commands_from_proto(message) == [CommandData("X", {"SerialNumber": "s", "K": "2"})]


def test_upload_sends_one_stream_in_order(fake_oap: FakeOAP, client: BackendClient) -> None:
    messages = [
        Profile_pb2.EBPFProfilingData(onCPU=Profile_pb2.EBPFOnCPUProfiling(dumpCount=n))
        for n in range(1, 6)
    ]
    client.upload(iter(messages))
    (stream,) = fake_oap.requests("collectProfilingData")
    assert [m.onCPU.dumpCount for m in stream] == [1, 2, 3, 4, 5]


# -- ContinuousProfilingService and MeterReportService ---------------------------------------------


def test_query_policies(fake_oap: FakeOAP, client: BackendClient) -> None:
    profiling = {"ON_CPU": {"PROCESS_CPU": {"Threshold": "80", "Period": 10, "Count": 3}}}
    version = fake_oap.set_policy("svc", profiling)

    (command,) = client.query_policies([("svc", ""), ("quiet", "")])
    assert command.name == "ContinuousProfilingPolicyQuery"
    policies = json.loads(command.args["ServiceWithPolicyJSON"])
    assert policies == [{"ServiceName": "svc", "UUID": version, "Profiling": profiling}]
    (request,) = fake_oap.requests("queryPolicies")
    assert [(p.serviceName, p.uuid) for p in request.policies] == [("svc", ""), ("quiet", "")]

    assert client.query_policies([("svc", version)]) == []  # nothing changed
    fake_oap.set_policy("svc", None)
    (command,) = client.query_policies([("svc", version)])
    assert json.loads(command.args["ServiceWithPolicyJSON"]) == [{"ServiceName": "svc", "UUID": ""}]


def test_report_profiling_task_returns_the_task_id(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    report = Continuous_pb2.ContinuousProfilingReport(
        layer="GENERAL",
        serviceName="svc",
        instanceName="host-1",
        processName="java",
        duration=600,
        onCPU=Continuous_pb2.ContinuousOnCPUProfilingTask(),
    )
    report.causes.add(
        type=Continuous_pb2.ProcessCPU,
        singleValue=Continuous_pb2.ContinuousProfilingSingleValueCause(threshold=80, current=93),
    )
    (command,) = client.report_profiling_task(report)
    assert command.name == "ContinuousProfilingReportTask"
    assert command.args["TaskId"] == fake_oap.continuous_task_ids[-1]
    assert fake_oap.requests("reportProfilingTask") == [report]


def test_send_meters_uses_collect_batch(fake_oap: FakeOAP, client: BackendClient) -> None:
    collection = Meter_pb2.MeterDataCollection()
    meter = collection.meterData.add(service="svc", serviceInstance="host-1", timestamp=1234)
    meter.singleValue.name = "rover_con_p_process_cpu"
    meter.singleValue.value = 42.5
    meter.singleValue.labels.add(name="process_name", value="java")
    client.send_meters([collection, collection])
    (stream,) = fake_oap.requests("collectBatch")
    assert stream == [collection, collection]


# -- authentication ------------------------------------------------------------------------------


@pytest.fixture
def secured_oap() -> Iterator[FakeOAP]:
    with FakeOAP(authentication="s3cret") as oap:
        yield oap


def test_authentication_header_on_unary_and_streaming_calls(secured_oap: FakeOAP) -> None:
    config = BackendConfig(addr=secured_oap.addr, authentication="s3cret")
    with BackendClient(config) as client:
        client.query_tasks(AGENT_ID, 0)
        client.upload([Profile_pb2.EBPFProfilingData()])
        client.send_meters([Meter_pb2.MeterDataCollection()])
    calls = secured_oap.calls
    assert [c.method for c in calls] == ["queryTasks", "collectProfilingData", "collectBatch"]
    assert all(c.metadata.get("authentication") == "s3cret" and c.status == "OK" for c in calls)


@pytest.mark.parametrize("token", ["wrong", ""])
def test_wrong_or_missing_token_is_permission_denied(secured_oap: FakeOAP, token: str) -> None:
    with BackendClient(BackendConfig(addr=secured_oap.addr, authentication=token)) as client:
        for call in (
            lambda: client.keep_alive([make_process(1)], AGENT_ID),
            lambda: client.upload([Profile_pb2.EBPFProfilingData()]),
        ):
            with pytest.raises(BackendUnavailable) as err:
                call()
            assert err.value.code == "PERMISSION_DENIED"
            assert "authentication" in err.value.reason
        assert not client.connected


def test_no_header_without_authentication(fake_oap: FakeOAP, client: BackendClient) -> None:
    client.query_tasks(AGENT_ID, 0)
    assert "authentication" not in fake_oap.calls[0].metadata


# -- deadlines, failures and connection state ---------------------------------------------------


def test_every_call_has_a_deadline(fake_oap: FakeOAP) -> None:
    fake_oap.delay(3.0)
    with BackendClient(BackendConfig(addr=fake_oap.addr, call_timeout=0.5)) as client:
        for call in (
            lambda: client.query_tasks(AGENT_ID, 0),
            lambda: client.upload([Profile_pb2.EBPFProfilingData()]),
        ):
            started = time.monotonic()
            with pytest.raises(BackendUnavailable) as err:
                call()
            assert err.value.code == "DEADLINE_EXCEEDED"
            assert time.monotonic() - started < 2.0


def test_application_errors_do_not_mark_the_backend_down(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    client.query_tasks(AGENT_ID, 0)
    fake_oap.fail_with(grpc.StatusCode.UNIMPLEMENTED, "queryPolicies")  # an OAP before 9.5
    with pytest.raises(BackendUnavailable) as err:
        client.query_policies([("svc", "")])
    assert err.value.code == "UNIMPLEMENTED"
    assert client.connected
    client.query_tasks(AGENT_ID, 0)  # other calls unaffected


def _state_messages(caplog: pytest.LogCaptureFixture, word: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "rover.backend.connection_state" and word in r.getMessage()
    ]


def test_connection_state_is_logged_once_per_change(
    fake_oap: FakeOAP, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rover.backend")
    with BackendClient(BackendConfig(addr=fake_oap.addr, check_period=0.2)) as client:
        client.query_tasks(AGENT_ID, 0)
        assert client.connected
        epoch = client.connection_epoch
        fake_oap.stop()
        for _ in range(5):
            with pytest.raises(BackendUnavailable) as err:
                client.keep_alive([make_process(1)], AGENT_ID)
            assert err.value.code == "UNAVAILABLE"
        time.sleep(0.6)  # the monitor keeps retrying in the background: no more logs
        assert not client.connected
        assert len(_state_messages(caplog, "disconnected")) == 1

        fake_oap.start()
        deadline = time.monotonic() + 10
        while not client.connected and time.monotonic() < deadline:
            time.sleep(0.05)  # the monitor reconnects without any call
        assert client.connected
        assert client.connection_epoch == epoch + 1
        for _ in range(3):
            client.query_tasks(AGENT_ID, 0)
    connected = _state_messages(caplog, " connected")
    assert len(connected) == 2  # the first connection and the recovery
    assert len(_state_messages(caplog, "disconnected")) == 1


def test_injected_unavailable_fails_calls_and_heals(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    fake_oap.fail_with(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(BackendUnavailable) as err:
        client.query_tasks(AGENT_ID, 0)
    assert err.value.code == "UNAVAILABLE"
    assert err.value.method == "queryTasks"
    fake_oap.fail_with(None)
    client.query_tasks(AGENT_ID, 0)
    assert client.connected


def test_closed_client_refuses_calls(fake_oap: FakeOAP) -> None:
    client = BackendClient(BackendConfig(addr=fake_oap.addr))
    client.close()
    with pytest.raises(BackendUnavailable, match="closed"):
        client.query_tasks(AGENT_ID, 0)


def test_fake_oap_dispatches_tasks_like_the_oap(fake_oap: FakeOAP, client: BackendClient) -> None:
    profilable, plain = make_process(10, "java"), make_process(11, "sh", profilable=False)
    ids = client.report_processes([profilable, plain], AGENT_ID)
    java_id, sh_id = ids[profilable.key], ids[plain.key]
    fake_oap.add_task([java_id, sh_id], update_time_ms=1)
    network = fake_oap.add_task(
        [java_id, sh_id], target_type="NETWORK", duration_s=600, update_time_ms=2
    )

    on_cpu, net = client.query_tasks(AGENT_ID, 0)
    assert on_cpu.args["ProcessId"] == java_id  # one per profilable process
    assert net.args["ProcessId"] == f"{java_id},{sh_id}"  # NETWORK: all in one command
    assert net.args["TaskId"] == network.task_id

    fake_oap.extend_task(network.task_id, 600, update_time_ms=3)
    (extended,) = client.query_tasks(AGENT_ID, 2)
    assert extended.args["FixedTriggerDuration"] == "1200"


def test_fake_oap_report_reply_can_be_replaced(fake_oap: FakeOAP, client: BackendClient) -> None:
    fake_oap.set_report_reply([])
    assert client.report_profiling_task(Continuous_pb2.ContinuousProfilingReport()) == []
