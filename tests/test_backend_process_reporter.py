"""ProcessReporter against the fake OAP: report/keepAlive cadence and recovery (spec 4.2, 4.3)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from fake_oap import AGENT_ID, FakeOAP, fake_oap_fixture, make_process  # noqa: F401 - fixture

from rover.backend import BackendClient, ProcessReporter
from rover.backend.process_reporter import ReportStatus
from rover.config import BackendConfig
from rover.process.model import DiscoveredProcess, ProcessKind


@pytest.fixture
def client(fake_oap: FakeOAP) -> Iterator[BackendClient]:
    with BackendClient(BackendConfig(addr=fake_oap.addr, check_period=0.1)) as c:
        yield c


def reporter_for(client: BackendClient, period: int = 10) -> ProcessReporter:
    return ProcessReporter(client, AGENT_ID, properties_report_period=period)


def pids_reported(oap: FakeOAP, index: int = -1) -> list[int]:
    request = oap.requests("reportProcesses")[index]
    return [getattr(p, p.WhichOneof("metadata")).pid for p in request.processes]


def names_pinged(oap: FakeOAP, index: int = -1) -> list[str]:
    return [p.entityMetadata.processName for p in oap.requests("keepAlive")[index].processes]


def counts(oap: FakeOAP) -> tuple[int, int]:
    return len(oap.calls_of("reportProcesses")), len(oap.calls_of("keepAlive"))


JAVA = make_process(10, "java")
NGINX = make_process(11, "nginx")
ENVOY = make_process(12, "envoy", ProcessKind.KUBERNETES, labels=("mesh-envoy",))


def test_new_processes_are_reported_then_kept_alive(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    reporter = reporter_for(client)
    reporter.heartbeat([JAVA, ENVOY])
    assert counts(fake_oap) == (1, 0)
    assert pids_reported(fake_oap) == [10, 12]

    registered = reporter.registered()
    assert set(registered.values()) == {JAVA, ENVOY}
    java_id = reporter.process_id_of(JAVA.key)
    assert java_id and registered[java_id] == JAVA
    assert reporter.status_of(ENVOY.key) is ReportStatus.REGISTERED

    reporter.heartbeat([JAVA, ENVOY])
    assert counts(fake_oap) == (1, 1)
    assert names_pinged(fake_oap) == ["java", "envoy"]

    # a newcomer is reported alone, the others pinged
    reporter.heartbeat([JAVA, ENVOY, NGINX])
    assert counts(fake_oap) == (2, 2)
    assert pids_reported(fake_oap) == [11]
    assert names_pinged(fake_oap) == ["java", "envoy"]


def test_every_nth_heartbeat_re_reports_all_registered(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    reporter = reporter_for(client, period=3)
    kinds = []
    for _ in range(7):
        before = counts(fake_oap)
        reporter.heartbeat([JAVA, NGINX])
        after = counts(fake_oap)
        kinds.append(("R" if after[0] > before[0] else "") + ("K" if after[1] > before[1] else ""))
    assert kinds == ["R", "K", "R", "K", "K", "R", "K"]
    assert pids_reported(fake_oap) == [10, 11]


def test_ignored_processes_are_not_sent_again_while_alive(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    fake_oap.ignore_processes(lambda entity: entity.processName == "nginx")
    reporter = reporter_for(client, period=2)
    reporter.heartbeat([JAVA, NGINX])
    assert pids_reported(fake_oap) == [10, 11]
    assert reporter.status_of(NGINX.key) is ReportStatus.IGNORED
    assert reporter.process_id_of(NGINX.key) is None

    reporter.heartbeat([JAVA, NGINX])  # periodic re-report: registered ones only
    reporter.heartbeat([JAVA, NGINX])
    assert pids_reported(fake_oap) == [10]
    assert names_pinged(fake_oap) == ["java"]
    assert set(reporter.registered().values()) == {JAVA}

    # the same pid under a new start time is a new process: reported again
    restarted = DiscoveredProcess(11, NGINX.entity, NGINX.kind, 99, dict(NGINX.properties))
    fake_oap.ignore_processes(lambda entity: False)
    reporter.heartbeat([JAVA, restarted])
    assert pids_reported(fake_oap) == [10, 11]  # 4th heartbeat: periodic java + the new nginx
    assert reporter.status_of(restarted.key) is ReportStatus.REGISTERED


def test_exited_processes_are_dropped_without_sending_anything(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    reporter = reporter_for(client)
    reporter.heartbeat([JAVA, NGINX])
    reporter.heartbeat([JAVA])
    assert names_pinged(fake_oap) == ["java"]
    assert set(reporter.registered().values()) == {JAVA}
    assert reporter.status_of(NGINX.key) is None

    reporter.heartbeat([])
    assert counts(fake_oap) == (1, 1)
    assert reporter.registered() == {}


def test_failed_report_is_retried_next_heartbeat(fake_oap: FakeOAP, client: BackendClient) -> None:
    reporter = reporter_for(client)
    fake_oap.fail_with(grpc.StatusCode.UNAVAILABLE, "reportProcesses")
    reporter.heartbeat([JAVA, NGINX])  # does not raise
    assert reporter.registered() == {}
    assert reporter.status_of(JAVA.key) is ReportStatus.NOT_REPORTED

    fake_oap.fail_with(None)
    reporter.heartbeat([JAVA, NGINX])
    assert pids_reported(fake_oap) == [10, 11]
    assert set(reporter.registered().values()) == {JAVA, NGINX}


def test_failed_keep_alive_makes_the_next_heartbeat_report_everything(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    reporter = reporter_for(client)
    reporter.heartbeat([JAVA, NGINX])
    fake_oap.fail_with(grpc.StatusCode.UNAVAILABLE, "keepAlive")
    reporter.heartbeat([JAVA, NGINX])
    assert counts(fake_oap) == (1, 1)  # the failed ping was recorded too
    assert set(reporter.registered().values()) == {JAVA, NGINX}  # ids survive an outage

    fake_oap.fail_with(None)
    reporter.heartbeat([JAVA, NGINX])
    assert counts(fake_oap) == (2, 1)
    assert pids_reported(fake_oap) == [10, 11]
    reporter.heartbeat([JAVA, NGINX])  # and back to pinging
    assert counts(fake_oap) == (2, 2)


def _wait(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_backend_restart_makes_the_next_heartbeat_report_everything(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    fake_oap.ignore_processes(lambda entity: entity.processName == "nginx")
    reporter = reporter_for(client)
    reporter.heartbeat([JAVA, NGINX])
    reporter.heartbeat([JAVA, NGINX])
    assert counts(fake_oap) == (1, 1)
    epoch = client.connection_epoch

    # no call fails: the backend restarts between two heartbeats
    fake_oap.restart(forget_processes=True)
    fake_oap.ignore_processes(lambda entity: False)
    _wait(lambda: client.connection_epoch != epoch)
    assert fake_oap.processes == {}

    reporter.heartbeat([JAVA, NGINX])
    assert counts(fake_oap) == (2, 1)
    assert pids_reported(fake_oap) == [10, 11]  # the ignored one too: a fresh OAP may take it
    assert len(fake_oap.processes) == 2
    assert set(reporter.registered().values()) == {JAVA, NGINX}

    reporter.heartbeat([JAVA, NGINX])
    assert counts(fake_oap) == (2, 2)


def test_backend_down_then_back_reports_everything(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    reporter = reporter_for(client)
    reporter.heartbeat([JAVA])
    fake_oap.stop()
    reporter.heartbeat([JAVA, NGINX])  # fails: nothing recorded, ids kept
    reporter.heartbeat([JAVA, NGINX])
    assert set(reporter.registered().values()) == {JAVA}
    fake_oap.start()
    _wait(lambda: client.connected)  # the client's monitor reconnects in the background
    reporter.heartbeat([JAVA, NGINX])
    assert pids_reported(fake_oap) == [10, 11]
    assert counts(fake_oap) == (2, 0)


def test_rejects_a_zero_period(client: BackendClient) -> None:
    with pytest.raises(ValueError, match="properties_report_period"):
        reporter_for(client, period=0)
