"""ContinuousProfiler with fake metrics, a fake clock and fake backend/task ports."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import pytest

from rover.config import ContinuousConfig
from rover.continuous import (
    Cause,
    CheckItem,
    ContinuousProfiler,
    MeterSample,
    MonitorType,
    ProcessReading,
    ProcessVanished,
    ServicePolicy,
    TargetType,
    Trigger,
)
from rover.continuous.metrics import ProcessKey
from rover.continuous.policy_cache import Watch
from rover.continuous.silence import TriggerHistory
from rover.continuous.trigger import Finding, group_triggers
from rover.process.model import DiscoveredProcess, Entity, ProcessKind

CPU = MonitorType.PROCESS_CPU
THREADS = MonitorType.PROCESS_THREAD_COUNT
LOAD = MonitorType.SYSTEM_LOAD


def item(monitor=CPU, threshold=80.0, period=10, count=5, target=TargetType.ON_CPU) -> CheckItem:
    return CheckItem(target, monitor, threshold, period, count)


def process(pid: int, service: str = "svc", labels: tuple[str, ...] = ()) -> DiscoveredProcess:
    entity = Entity("GENERAL", service, f"{service}-i1", f"proc-{pid}", labels)
    return DiscoveredProcess(pid=pid, entity=entity, kind=ProcessKind.HOST, start_time=pid * 10)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeMetrics:
    def __init__(self) -> None:
        self.cpu: dict[int, float] = {}
        self.threads: dict[int, int] = {}
        self.load = 0.5
        self.gone: set[int] = set()
        self.reads: list[tuple[int, bool, bool]] = []
        self.retained: set[ProcessKey] = set()

    def read_process(self, key: ProcessKey, cpu: bool, threads: bool) -> ProcessReading:
        pid = key[0]
        self.reads.append((pid, cpu, threads))
        if pid in self.gone:
            raise ProcessVanished(str(pid))
        return ProcessReading(
            cpu_percent=self.cpu.get(pid, 0.0) if cpu else None,
            threads=self.threads.get(pid, 1) if threads else None,
        )

    def system_load(self) -> float:
        return self.load

    def retain(self, keys: Iterable[ProcessKey]) -> None:
        self.retained = set(keys)


class FakePolicies:
    """Answers each query with the next queued reply (then "unchanged")."""

    def __init__(self) -> None:
        self.replies: list[list[ServicePolicy] | None | Exception] = []
        self.queries: list[dict[str, str]] = []

    def fetch(self, known: dict[str, str]) -> list[ServicePolicy] | None:
        self.queries.append(dict(known))
        reply = self.replies.pop(0) if self.replies else []
        if isinstance(reply, Exception):
            raise reply
        return reply


class FakeTriggers:
    def __init__(self) -> None:
        self.reports: list[Trigger] = []
        self.failing: set[str] = set()  # process ids whose report fails

    def report(self, trigger: Trigger) -> str:
        if trigger.process_id in self.failing:
            raise ConnectionError("backend down")
        self.reports.append(trigger)
        return f"task-{len(self.reports)}"


class FakeTasks:
    def __init__(self) -> None:
        self.started: list[tuple[str, str, list[tuple[str, DiscoveredProcess]], int]] = []
        self.rules: list[object] = []  # per start
        self.fail = False

    def start(self, task_id, target_type, processes, duration_s, rules=None) -> None:
        if self.fail:
            raise RuntimeError("no BPF")
        self.started.append((task_id, target_type, processes, duration_s))
        self.rules.append(rules)


class FakeMeters:
    def __init__(self) -> None:
        self.sent: list[list[MeterSample]] = []
        self.fail = False

    def send(self, samples: list[MeterSample]) -> None:
        if self.fail:
            raise ConnectionError("meter stream refused")
        self.sent.append(list(samples))


class FakeProcesses:
    def __init__(self, processes: dict[str, DiscoveredProcess]) -> None:
        self.processes = processes

    def registered(self) -> dict[str, DiscoveredProcess]:
        return dict(self.processes)


class Harness:
    def __init__(self, processes: dict[str, DiscoveredProcess], **config) -> None:
        self.clock = FakeClock()
        self.metrics = FakeMetrics()
        self.policies = FakePolicies()
        self.triggers = FakeTriggers()
        self.tasks = FakeTasks()
        self.meters = FakeMeters()
        self.processes = FakeProcesses(processes)
        self.profiler = ContinuousProfiler(
            ContinuousConfig(**config),
            policies=self.policies,
            triggers=self.triggers,
            tasks=self.tasks,
            meters=self.meters,
            processes=self.processes,
            metrics=self.metrics,
            clock=self.clock,
            wall_clock=lambda: 1_700_000_000.0 + self.clock.now,
        )

    def policy(self, *policies: ServicePolicy) -> None:
        self.policies.replies.append(list(policies))

    def run(self, seconds: int) -> None:
        """``seconds`` fetch rounds one second apart, then a check round."""
        for _ in range(seconds):
            self.profiler.fetch_once()
            self.clock.now += 1
        self.clock.now -= 1  # the check runs right after the last fetch
        self.profiler.check_once()
        self.clock.now += 1


@pytest.fixture
def one_process() -> Harness:
    h = Harness({"p1": process(1)})
    h.policy(ServicePolicy("svc", "v1", (item(CPU, threshold=80, period=10, count=5),)))
    h.profiler.check_once()  # learns the policy, plans the fetches
    return h


def test_a_process_above_the_threshold_triggers_with_its_cause(one_process):
    h = one_process
    h.metrics.cpu[1] = 95.0
    h.run(5)
    (trigger,) = h.triggers.reports
    assert trigger.target is TargetType.ON_CPU
    assert trigger.process_id == "p1" and trigger.process.pid == 1
    assert trigger.causes == (Cause(CPU, 80.0, 95.0),)
    assert trigger.duration_s == 600
    assert h.tasks.started == [("task-1", "ON_CPU", [("p1", process(1))], 600)]
    assert h.profiler.stats.triggers_reported == 1


def test_below_the_threshold_or_too_few_slots_triggers_nothing(one_process):
    h = one_process
    h.metrics.cpu[1] = 79.9
    h.run(10)
    h.metrics.cpu[1] = 99.0
    h.run(4)  # 4 of 5 needed slots
    assert h.triggers.reports == [] and h.tasks.started == []


def test_silence_blocks_a_second_trigger_until_it_has_passed(one_process):
    h = one_process
    h.metrics.cpu[1] = 95.0
    h.run(5)
    started_at = h.clock.now - 1
    for _ in range(10):
        h.run(5)  # still hot, inside execute/silence
    assert len(h.triggers.reports) == 1
    # jump to just before the silence ends and refill the window
    h.clock.now = started_at + 1200 - 4
    h.run(5)  # checks at started_at + 1200: not MORE than the silence yet
    assert len(h.triggers.reports) == 1
    h.run(1)
    assert len(h.triggers.reports) == 2
    assert [s[0] for s in h.tasks.started] == ["task-1", "task-2"]


def test_an_unreadable_process_list_skips_the_round_counted_and_logged_once(caplog):
    h = Harness({"p1": process(1)})

    def refuse() -> dict[str, DiscoveredProcess]:
        raise RuntimeError("reporter is gone")

    h.processes.registered = refuse
    with caplog.at_level(logging.WARNING):
        h.profiler.check_once()
        h.profiler.check_once()
    assert h.profiler.stats.process_list_failures == 2
    assert caplog.text.count("cannot list registered processes") == 1


def test_a_failed_report_is_skipped_and_retried_at_the_next_check(one_process, caplog):
    h = one_process
    h.metrics.cpu[1] = 95.0
    h.triggers.failing = {"p1"}
    with caplog.at_level(logging.WARNING):
        h.run(5)
        h.run(5)
    assert h.profiler.stats.report_failures == 2
    assert caplog.text.count("will retry at the next check") == 1  # not repeated
    assert h.tasks.started == []
    h.triggers.failing = set()
    h.run(1)
    assert len(h.triggers.reports) == 1 and len(h.tasks.started) == 1


def test_a_failed_local_start_still_silences_the_dimension(one_process):
    h = one_process
    h.metrics.cpu[1] = 95.0
    h.tasks.fail = True
    h.run(5)
    h.run(5)
    assert len(h.triggers.reports) == 1  # no orphan task every round
    assert h.profiler.stats.start_failures == 1


def test_each_process_is_its_own_dimension_and_other_services_are_unaffected():
    h = Harness({"a1": process(1, "a"), "a2": process(2, "a"), "b1": process(3, "b")})
    h.policy(
        ServicePolicy("a", "va", (item(CPU, 50, 5, 3),)),
        ServicePolicy("b", "vb", (item(THREADS, 100, 5, 3, target=TargetType.OFF_CPU),)),
    )
    h.profiler.check_once()
    h.metrics.cpu.update({1: 60, 2: 70, 3: 99})
    h.metrics.threads.update({1: 500, 2: 500, 3: 150})
    h.triggers.failing = {"a1"}
    h.run(5)
    assert sorted((t.process_id, t.target, t.causes) for t in h.triggers.reports) == [
        ("a2", TargetType.ON_CPU, (Cause(CPU, 50, 70),)),
        ("b1", TargetType.OFF_CPU, (Cause(THREADS, 100, 150),)),
    ]
    assert sorted((s[1], [pid for pid, _ in s[2]]) for s in h.tasks.started) == [
        ("OFF_CPU", ["b1"]),
        ("ON_CPU", ["a2"]),
    ]
    h.triggers.failing = set()
    h.run(1)
    assert h.triggers.reports[-1].process_id == "a1"


def test_several_items_firing_for_one_process_give_one_trigger_with_all_causes():
    h = Harness({"p1": process(1)})
    items = (item(CPU, 80, 5, 5), item(THREADS, 10, 5, 2), item(LOAD, 2, 5, 5))
    h.policy(ServicePolicy("svc", "v1", items))
    h.profiler.check_once()
    h.metrics.cpu[1], h.metrics.threads[1], h.metrics.load = 90, 20, 4.0
    h.run(5)
    (trigger,) = h.triggers.reports
    assert set(trigger.causes) == {Cause(CPU, 80, 90), Cause(THREADS, 10, 20), Cause(LOAD, 2, 4.0)}


def test_system_load_triggers_every_covered_process():
    h = Harness({"p1": process(1), "p2": process(2), "other": process(3, "other")})
    h.policy(ServicePolicy("svc", "v1", (item(LOAD, 3, 5, 5, target=TargetType.OFF_CPU),)))
    h.profiler.check_once()
    h.metrics.load = 8.0
    h.run(5)
    assert [(t.process_id, t.target) for t in h.triggers.reports] == [
        ("p1", TargetType.OFF_CPU),
        ("p2", TargetType.OFF_CPU),
    ]
    assert h.metrics.reads == []  # only the load was read: no process item


def test_http_items_without_an_http_source_are_logged_once_and_the_rest_still_works(caplog):
    h = Harness({"p1": process(1), "p2": process(2)})
    http = CheckItem(TargetType.ON_CPU, MonitorType.HTTP_ERROR_RATE, 5, 10, 5, uri_regex=".*")
    h.policy(ServicePolicy("svc", "v1", (http, item(CPU, 80, 5, 5))))
    with caplog.at_level(logging.WARNING):
        h.profiler.check_once()
        h.metrics.cpu[1] = 90
        h.run(5)
        h.run(5)
    assert h.profiler.policies() == {"svc": "v1"}
    assert [t.process_id for t in h.triggers.reports] == ["p1"]
    assert caplog.text.count("HTTP_ERROR_RATE needs HTTP observation") == 1


def test_network_targets_trigger_a_network_task_without_rules_for_non_http_causes():
    h = Harness({"p1": process(1)})
    h.policy(ServicePolicy("svc", "v1", (item(CPU, 10, 5, 1, target=TargetType.NETWORK),)))
    h.profiler.check_once()
    h.metrics.cpu[1] = 90
    h.run(5)
    h.run(5)
    (trigger,) = h.triggers.reports
    assert trigger.target is TargetType.NETWORK and trigger.sampling_uri_regexes() == ()
    assert [s[1] for s in h.tasks.started] == ["NETWORK"] and h.tasks.rules == [[]]
    assert h.meters.sent and h.meters.sent[-1][0].name == "rover_con_p_process_cpu"


def test_history_blocks_while_running_and_through_the_silence():
    history = TriggerHistory(execute_s=600, silence_s=1200)
    assert history.may_trigger("d", 0)
    history.record("d", 100)
    assert not history.may_trigger("d", 100 + 1200)
    assert history.may_trigger("d", 100 + 1200.5)
    running_longer = TriggerHistory(execute_s=600, silence_s=60)
    running_longer.record("d", 0)
    assert not running_longer.may_trigger("d", 599) and running_longer.may_trigger("d", 600)
    history.forget_expired(5000)
    assert len(history) == 0


def test_network_dimensions_share_an_instance_and_prefer_the_mesh_application():
    sidecar = process(1, labels=("mesh-envoy",))
    app = process(2, labels=("mesh-application",))
    network = item(CPU, target=TargetType.NETWORK)
    findings = [Finding(Watch("s", sidecar, network), 90), Finding(Watch("a", app, network), 95)]
    (trigger,) = group_triggers(findings, 600)
    assert trigger.process_id == "a" and trigger.causes == (Cause(CPU, 80.0, 95),)
    assert [pid for pid, _ in trigger.processes] == ["a", "s"]


# -- policy sync -----------------------------------------------------------------------


def test_queries_every_service_with_its_last_uuid():
    h = Harness({"a1": process(1, "a"), "b1": process(2, "b")})
    h.policy(ServicePolicy("a", "va", (item(),)))
    h.profiler.check_once()
    h.profiler.check_once()
    assert h.policies.queries == [{"a": "", "b": ""}, {"a": "va", "b": ""}]


def test_a_new_uuid_replaces_the_policy_and_an_empty_uuid_removes_it(one_process):
    h = one_process
    h.metrics.cpu[1] = 85.0
    h.policy(ServicePolicy("svc", "v2", (item(CPU, threshold=90, period=5, count=5),)))
    h.run(5)  # the check applies v2 first: 85 < 90
    assert h.profiler.policies() == {"svc": "v2"} and h.triggers.reports == []
    h.metrics.cpu[1] = 95.0
    h.policy(ServicePolicy("svc", ""))
    h.run(5)
    assert h.profiler.policies() == {} and h.triggers.reports == []
    reads = len(h.metrics.reads)
    h.run(5)
    assert len(h.metrics.reads) == reads  # nothing watched, nothing read


def test_process_sets_are_refreshed_every_round_without_a_policy_change(one_process):
    h = one_process
    h.processes.processes["p9"] = process(9)
    h.profiler.check_once()  # the backend says "unchanged"
    h.metrics.cpu[9] = 99.0
    h.run(5)
    assert [t.process_id for t in h.triggers.reports] == ["p9"]


def test_a_failed_or_rejected_policy_query_keeps_the_cached_policy(one_process):
    h = one_process
    h.policies.replies += [ConnectionError("down"), None]
    h.metrics.cpu[1] = 95.0
    h.run(5)
    assert h.profiler.stats.policy_query_failures == 1
    assert len(h.triggers.reports) == 1  # still checked with the cached policy
    h.profiler.check_once()  # the None reply
    assert h.profiler.policies() == {"svc": "v1"}


def test_no_registered_process_clears_everything(one_process):
    h = one_process
    h.processes.processes.clear()
    h.profiler.check_once()
    assert h.profiler.policies() == {} and h.profiler.fetch_plan().empty
    assert len(h.policies.queries) == 1  # nothing to ask about


def test_only_watched_values_of_covered_processes_are_read():
    h = Harness({"p1": process(1), "x": process(2, "no-policy")})
    h.policy(ServicePolicy("svc", "v1", (item(THREADS, 100, 5, 5),)))
    h.profiler.check_once()
    h.run(3)
    assert set(h.metrics.reads) == {(1, False, True)}
    assert h.metrics.retained == {(1, 10)}


def test_a_vanished_process_is_counted_dropped_and_no_longer_read(one_process):
    h = one_process
    h.metrics.gone.add(1)
    h.run(3)
    assert h.profiler.stats.vanished_processes == 1
    assert h.metrics.reads == [(1, True, False)]
    assert h.profiler.fetch_plan().empty


def test_read_errors_do_not_stop_the_round():
    class Flaky(FakeMetrics):
        def read_process(self, key, cpu, threads):
            if key[0] == 1:
                raise PermissionError("denied")
            return super().read_process(key, cpu, threads)

    h = Harness({"p1": process(1), "p2": process(2)})
    h.metrics = Flaky()
    h.profiler._metrics = h.metrics
    h.policy(ServicePolicy("svc", "v1", (item(CPU, 50, 5, 5),)))
    h.profiler.check_once()
    h.metrics.cpu[2] = 60
    h.run(5)
    assert h.profiler.stats.read_errors == 5
    assert [t.process_id for t in h.triggers.reports] == ["p2"]


def test_a_failing_process_source_does_not_crash_the_round():
    class Broken:
        def registered(self):
            raise OSError("proc scan failed")

    h = Harness({})
    h.profiler._process_source = Broken()
    h.profiler.check_once()
    h.profiler.fetch_once()
    assert h.profiler.stats.check_rounds == 1


# -- meters ------------------------------------------------------------------------------


def test_meters_carry_the_latest_values_with_names_labels_and_timestamp():
    h = Harness({"p1": process(1), "p2": process(2)})
    items = (
        item(CPU, 80, 5, 5),
        item(CPU, 80, 5, 5, target=TargetType.OFF_CPU),  # same monitor twice: one meter
        item(THREADS, 1000, 5, 5),
        item(LOAD, 100, 5, 5),
        CheckItem(TargetType.NETWORK, MonitorType.HTTP_AVG_RESPONSE_TIME, 5, 5, 5),
    )
    h.policy(ServicePolicy("svc", "v1", items))
    h.profiler.check_once()
    assert h.meters.sent == []  # nothing fetched yet: no meters
    h.metrics.cpu.update({1: 10.0, 2: 20.0})
    h.metrics.threads.update({1: 3, 2: 4})
    h.metrics.load = 1.5
    h.profiler.fetch_once()
    h.clock.now += 1
    h.metrics.cpu[1] = 12.5  # the latest sample is reported
    h.profiler.fetch_once()
    h.profiler.check_once()
    (batch,) = h.meters.sent
    got = {(m.name, m.labels[0][1]): m.value for m in batch}
    assert got == {
        ("rover_con_p_process_cpu", "proc-1"): 12.5,
        ("rover_con_p_process_cpu", "proc-2"): 20.0,
        ("rover_con_p_process_thread_count", "proc-1"): 3.0,
        ("rover_con_p_process_thread_count", "proc-2"): 4.0,
        ("rover_con_p_system_load", "proc-1"): 1.5,
        ("rover_con_p_system_load", "proc-2"): 1.5,
    }
    meter = batch[0]
    assert meter.service == "svc" and meter.instance == "svc-i1"
    assert meter.labels == (("process_name", "proc-1"), ("layer", "GENERAL"))
    assert meter.timestamp_ms == int((1_700_000_000.0 + h.clock.now) * 1000)


def test_meters_only_when_a_new_sample_exists_since_the_last_round(one_process):
    h = one_process
    h.run(2)
    h.profiler.check_once()  # no fetch since the previous check
    assert len(h.meters.sent) == 1
    h.run(1)
    assert len(h.meters.sent) == 2


def test_meter_prefix_is_configurable():
    h = Harness({"p1": process(1)}, meter_prefix="my_p")
    h.policy(ServicePolicy("svc", "v1", (item(THREADS),)))
    h.profiler.check_once()
    h.run(1)
    assert [m.name for m in h.meters.sent[0]] == ["my_p_process_thread_count"]


def test_unsent_meters_are_resent_with_the_next_round(one_process):
    h = one_process
    h.meters.fail = True
    h.run(1)
    assert h.profiler.stats.meter_send_failures == 1
    h.meters.fail = False
    h.run(1)
    (batch,) = h.meters.sent
    assert len(batch) == 2 and batch[0].timestamp_ms < batch[1].timestamp_ms


# -- loops -------------------------------------------------------------------------------


def test_start_and_stop_run_both_loops():
    h = Harness({"p1": process(1)}, fetch_interval=0.02, check_interval=0.05)
    h.policy(ServicePolicy("svc", "v1", (item(CPU),)))
    h.profiler.start()
    deadline = time.monotonic() + 30  # rounds, not time: a loaded machine only slows them
    stats = h.profiler.stats
    while not (stats.check_rounds >= 3 and stats.fetch_rounds >= 5):
        assert time.monotonic() < deadline, stats
        time.sleep(0.01)
    h.profiler.stop()
    assert h.metrics.reads


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="meter_prefix"):
        ContinuousConfig(meter_prefix="")
    with pytest.raises(ValueError, match="fetch_interval"):
        ContinuousConfig(fetch_interval=0)
