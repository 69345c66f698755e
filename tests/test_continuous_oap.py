"""The continuous profiler through the real BackendClient against the fake OAP."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import grpc
import pytest
from fake_oap import FakeOAP, fake_oap_fixture  # noqa: F401 - the fixture

from rover.backend import BackendClient
from rover.backend.commands import CommandData
from rover.backend.continuous import BackendMeterSink, BackendPolicySource, BackendTriggerSink
from rover.backend.proto.ebpf.profiling import Continuous_pb2
from rover.config import BackendConfig, ContinuousConfig
from rover.continuous import ContinuousProfiler, ProcessReading
from rover.continuous.metrics import ProcessKey
from rover.process.model import DiscoveredProcess, Entity, ProcessKind

PROCESS = DiscoveredProcess(
    pid=7, entity=Entity("GENERAL", "svc", "svc-1", "java"), kind=ProcessKind.HOST
)
POLICY = {
    "ON_CPU": {
        "PROCESS_CPU": {"Threshold": "80", "Period": 5, "Count": 3},
        "HTTP_ERROR_RATE": {"Threshold": "5", "Period": 5, "Count": 3},
    }
}


class HotProcess:
    """Metrics: the process always at 95 % CPU."""

    def read_process(self, key: ProcessKey, cpu: bool, threads: bool) -> ProcessReading:
        return ProcessReading(cpu_percent=95.0 if cpu else None, threads=9 if threads else None)

    def system_load(self) -> float:
        return 0.1

    def retain(self, keys: Iterable[ProcessKey]) -> None:
        pass


class Tasks:
    def __init__(self) -> None:
        self.started: list[tuple[str, str, list[str], int]] = []

    def start(self, task_id, target_type, processes, duration_s, rules=None) -> None:
        self.started.append((task_id, target_type, [pid for pid, _ in processes], duration_s))


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def client(fake_oap: FakeOAP) -> Iterator[BackendClient]:
    with BackendClient(BackendConfig(addr=fake_oap.addr, call_timeout=2.0)) as c:
        yield c


def make_profiler(client: BackendClient, tasks: Tasks, clock: Clock) -> ContinuousProfiler:
    class Processes:
        def registered(self) -> dict[str, DiscoveredProcess]:
            return {"pid-hex": PROCESS}

    return ContinuousProfiler(
        ContinuousConfig(),
        policies=BackendPolicySource(client),
        triggers=BackendTriggerSink(client),
        tasks=tasks,
        meters=BackendMeterSink(client),
        processes=Processes(),
        metrics=HotProcess(),
        clock=clock,
    )


def hot_seconds(profiler: ContinuousProfiler, clock: Clock, seconds: int) -> None:
    for _ in range(seconds):
        profiler.fetch_once()
        clock.now += 1
    clock.now -= 1
    profiler.check_once()
    clock.now += 1


def test_policy_trigger_task_and_meters_over_the_wire(fake_oap: FakeOAP, client) -> None:
    uuid = fake_oap.set_policy("svc", POLICY)
    tasks, clock = Tasks(), Clock()
    profiler = make_profiler(client, tasks, clock)

    profiler.check_once()
    (query,) = fake_oap.requests("queryPolicies")
    assert [(p.serviceName, p.uuid) for p in query.policies] == [("svc", "")]
    assert profiler.policies() == {"svc": uuid}

    hot_seconds(profiler, clock, 3)
    (report,) = fake_oap.requests("reportProfilingTask")
    assert (report.serviceName, report.instanceName, report.processName) == ("svc", "svc-1", "java")
    assert report.duration == 600 and report.WhichOneof("targetTask") == "onCPU"
    (cause,) = report.causes
    assert cause.type == Continuous_pb2.ProcessCPU
    assert (cause.singleValue.threshold, cause.singleValue.current) == (80.0, 95.0)
    assert tasks.started == [(fake_oap.continuous_task_ids[0], "ON_CPU", ["pid-hex"], 600)]

    (stream,) = fake_oap.requests("collectBatch")
    (collection,) = stream
    (meter,) = collection.meterData
    assert (meter.service, meter.serviceInstance) == ("svc", "svc-1")
    assert meter.singleValue.name == "rover_con_p_process_cpu" and meter.singleValue.value == 95.0

    # unchanged: the uuid is sent back and the reply is empty
    profiler.check_once()
    assert [p.uuid for p in fake_oap.requests("queryPolicies")[-1].policies] == [uuid]
    assert profiler.policies() == {"svc": uuid}
    # removed on the OAP: the agent is told with an empty UUID
    fake_oap.set_policy("svc", None)
    profiler.check_once()
    assert profiler.policies() == {}


def test_report_failures_are_retried_and_bad_replies_rejected(fake_oap: FakeOAP, client) -> None:
    fake_oap.set_policy("svc", POLICY)
    tasks, clock = Tasks(), Clock()
    profiler = make_profiler(client, tasks, clock)
    profiler.check_once()

    fake_oap.fail_with(grpc.StatusCode.UNAVAILABLE, "reportProfilingTask")
    hot_seconds(profiler, clock, 3)
    fake_oap.fail_with(None)
    fake_oap.set_report_reply([CommandData("SomethingElse", {})])
    hot_seconds(profiler, clock, 1)
    assert profiler.stats.report_failures == 2 and tasks.started == []

    fake_oap.set_report_reply(None)
    hot_seconds(profiler, clock, 1)
    assert [t[0] for t in tasks.started] == fake_oap.continuous_task_ids


def test_an_unreachable_backend_keeps_the_cached_policy(fake_oap: FakeOAP, client) -> None:
    uuid = fake_oap.set_policy("svc", POLICY)
    tasks, clock = Tasks(), Clock()
    profiler = make_profiler(client, tasks, clock)
    profiler.check_once()
    fake_oap.fail_with(grpc.StatusCode.UNAVAILABLE)
    hot_seconds(profiler, clock, 3)
    assert profiler.policies() == {"svc": uuid}
    assert profiler.stats.policy_query_failures == 1
    assert profiler.stats.meter_send_failures == 1 and profiler.stats.report_failures == 1
    fake_oap.fail_with(None)
    hot_seconds(profiler, clock, 1)
    assert len(tasks.started) == 1
    (stream,) = fake_oap.requests("collectBatch")
    assert sum(len(c.meterData) for c in stream) == 2  # the unsent round came along
