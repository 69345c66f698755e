"""Continuous profiling through the whole agent: backend policies, psutil metrics,
triggers reported to the backend, and profiling uploaded under the returned task id."""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid

import pytest
from agent_process import scanner_env
from backend_data import of_task, reported

pytestmark = pytest.mark.bpf

CONTINUOUS_FAST = {
    "ROVER_PROFILING_CONTINUOUS_FETCH_INTERVAL": "1s",
    "ROVER_PROFILING_CONTINUOUS_CHECK_INTERVAL": "1s",
    "ROVER_PROFILING_CONTINUOUS_TRIGGER_EXECUTE_DURATION": "4s",
    "ROVER_PROFILING_CONTINUOUS_TRIGGER_SILENCE_DURATION": "10m",
}
CPU_POLICY = {"ON_CPU": {"PROCESS_CPU": {"Threshold": "50", "Period": 5, "Count": 3}}}
THREADS_POLICY = {"OFF_CPU": {"PROCESS_THREAD_COUNT": {"Threshold": "8", "Period": 4, "Count": 2}}}
# spawns 10 threads that block forever
THREADS = (
    "import threading, time\n"
    "for _ in range(10): threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
    "print('ready', flush=True)\n"
    "time.sleep(3600)\n"
)


def start(fake_oap, start_agent, tmp_path, workload, service, spawn, *args):
    binary = tmp_path / f"{service}-{uuid.uuid4().hex[:6]}"
    shutil.copy(workload, binary)
    process = spawn([binary, *args])
    # above the usual load (nice 0): on a busy machine a hot process still gets about a
    # core, well over the 50 % threshold
    os.setpriority(os.PRIO_PROCESS, process.pid, -10)
    agent = start_agent({**scanner_env(fake_oap.addr, binary.name, service), **CONTINUOUS_FAST})
    fake_oap.wait_for(lambda _: reported(fake_oap, service), timeout=20, what=service)
    return process, agent, reported(fake_oap, service)[0]


def reports(fake_oap, service):
    return [r for r in fake_oap.requests("reportProfilingTask") if r.serviceName == service]


def test_hot_process_triggers_and_is_profiled(fake_oap, start_agent, spawn, workloads, tmp_path):
    fake_oap.set_policy("hot-svc", CPU_POLICY)
    _, agent, proc = start(
        fake_oap, start_agent, tmp_path, workloads.build("hot_c_fp"), "hot-svc", spawn
    )
    fake_oap.wait_for(lambda _: reports(fake_oap, "hot-svc"), timeout=30, what="a trigger")
    [report] = reports(fake_oap, "hot-svc")
    assert report.processName == proc.entity.processName and report.duration == 4
    assert report.HasField("onCPU")
    [cause] = report.causes
    assert cause.type == 0  # ProcessCPU
    assert cause.singleValue.threshold == 50 and cause.singleValue.current >= 50
    task_id = fake_oap.continuous_task_ids[0]
    fake_oap.wait_for(
        lambda _: sum(s.dump_count for s in of_task(fake_oap, task_id)) > 100,
        timeout=30,
        what="profiling data under the returned task id",
    )
    data = of_task(fake_oap, task_id)
    assert {s.process_id for s in data} == {proc.process_id}
    assert sum(s.dump_count for s in data if s.user[:1] == ["c_hot_spin"]) > 50
    # meters the UI shows, named as the OAP's MAL rules expect
    meters = [
        d.singleValue for c in fake_oap.requests("collectBatch") for m in c for d in m.meterData
    ]
    names = {m.name for m in meters}
    assert "rover_con_p_process_cpu" in names
    labels = {lab.name for m in meters for lab in m.labels}
    assert {"process_name", "layer"} <= labels
    # still above the threshold, but inside the silence window: no second trigger
    time.sleep(8)
    assert len(reports(fake_oap, "hot-svc")) == 1
    assert agent.running()


def test_idle_process_does_not_trigger(fake_oap, start_agent, spawn, workloads, tmp_path):
    fake_oap.set_policy("idle-svc", CPU_POLICY)
    start(fake_oap, start_agent, tmp_path, workloads.build("block_c"), "idle-svc", spawn)
    fake_oap.wait_for_calls("queryPolicies", count=3, timeout=20)
    time.sleep(8)  # more than Period seconds of samples, all ~0 %
    assert reports(fake_oap, "idle-svc") == []


def test_thread_count_policy_triggers_off_cpu(fake_oap, start_agent, spawn, tmp_path):
    fake_oap.set_policy("threads-svc", THREADS_POLICY)
    script = tmp_path / "threads.py"
    script.write_text(THREADS)
    binary = tmp_path / "threads-svc-py"
    shutil.copy(sys.executable, binary)  # a python whose name the scanner can match
    start(fake_oap, start_agent, tmp_path, binary, "threads-svc", spawn, str(script))
    fake_oap.wait_for(lambda _: reports(fake_oap, "threads-svc"), timeout=30, what="a trigger")
    [report] = reports(fake_oap, "threads-svc")
    assert report.HasField("offCPU")
    assert report.causes[0].type == 1  # ProcessThreadCount
    assert report.causes[0].singleValue.current >= 10


def test_changed_policy_replaces_the_old_one(fake_oap, start_agent, spawn, workloads, tmp_path):
    never = {"ON_CPU": {"PROCESS_CPU": {"Threshold": "100000", "Period": 5, "Count": 3}}}
    fake_oap.set_policy("change-svc", never)
    start(fake_oap, start_agent, tmp_path, workloads.build("hot_c_fp"), "change-svc", spawn)
    fake_oap.wait_for_calls("queryPolicies", count=3, timeout=20)
    time.sleep(6)
    assert reports(fake_oap, "change-svc") == []
    fake_oap.set_policy("change-svc", CPU_POLICY)  # a new uuid
    fake_oap.wait_for(lambda _: reports(fake_oap, "change-svc"), timeout=30, what="a trigger")


def test_backend_rejecting_reports_keeps_agent_running(
    fake_oap, start_agent, spawn, workloads, tmp_path
):
    import grpc

    fake_oap.set_policy("reject-svc", CPU_POLICY)
    fake_oap.fail_with(grpc.StatusCode.INTERNAL, "reportProfilingTask")
    _, agent, _ = start(
        fake_oap, start_agent, tmp_path, workloads.build("hot_c_fp"), "reject-svc", spawn
    )
    fake_oap.wait_for(
        lambda _: len(fake_oap.calls_of("reportProfilingTask")) >= 2, timeout=30, what="retries"
    )
    assert agent.running()
    fake_oap.fail_with(None)
    fake_oap.wait_for(lambda _: fake_oap.continuous_task_ids, timeout=30, what="a task id")
