"""`rover agent` end to end: a real agent process, the test backend, real workloads, real BPF."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
import urllib.request
import uuid

import pytest
from agent_process import scanner_env
from backend_data import of_task, reported
from fake_oap import FakeOAP

pytestmark = pytest.mark.bpf


def unique_copy(workloads, name, tmp_path):
    """The workload under a unique file name, so the regex scanner finds only it."""
    target = tmp_path / f"{name}-{uuid.uuid4().hex[:8]}"
    shutil.copy(workloads.build(name), target)
    return target


def wait_reported(fake_oap, service, timeout=20):
    fake_oap.wait_for(lambda _: reported(fake_oap, service), timeout=timeout, what=service)
    return reported(fake_oap, service)[0]


def wait_task_samples(fake_oap, task_id, predicate, timeout=30):
    fake_oap.wait_for(
        lambda _: predicate(of_task(fake_oap, task_id)), timeout=timeout, what=f"data of {task_id}"
    )
    return of_task(fake_oap, task_id)


def hot_share(samples, function):
    total = sum(s.dump_count for s in samples)
    hot = sum(s.dump_count for s in samples if s.user[:1] == [function])
    return hot / total if total else 0.0


def test_process_reported_and_on_cpu_task_uploaded(
    fake_oap, start_agent, spawn, workloads, tmp_path
):
    binary = unique_copy(workloads, "hot_cpp", tmp_path)
    process = spawn([binary])
    agent = start_agent(scanner_env(fake_oap.addr, binary.name, "e2e-svc"))
    proc = wait_reported(fake_oap, "e2e-svc")
    assert proc.kind == "hostProcess" and proc.pid == process.pid
    entity = proc.entity
    assert (entity.layer, entity.instanceName, entity.processName) == (
        "OS_LINUX",
        "test-instance",
        binary.name,
    )
    assert sorted(entity.labels) == ["team-a", "tier-1"]
    assert proc.properties["support_ebpf_profiling"] == "true"
    assert proc.properties["pid"] == str(process.pid)
    assert binary.name in proc.properties["command_line"]

    task = fake_oap.add_task(proc.process_id, target_type="ON_CPU", duration_s=4)
    data = wait_task_samples(fake_oap, task.task_id, lambda s: sum(x.dump_count for x in s) > 150)
    assert {s.process_id for s in data} == {proc.process_id}
    assert len({s.start_ms for s in data}) == 1
    assert hot_share(data, "ns::Worker::spin()") > 0.5
    # keepAlive keeps coming for the known process
    fake_oap.wait_for_calls("keepAlive", count=2, timeout=10)
    code, took = agent.stop()
    assert code == 0 and took < 10, agent.log_text()[-2000:]


def test_off_cpu_task(fake_oap, start_agent, spawn, workloads, tmp_path):
    binary = unique_copy(workloads, "block_c", tmp_path)
    process = spawn([binary, "200", "10"])
    agent = start_agent(scanner_env(fake_oap.addr, binary.name, "offcpu-svc"))
    proc = wait_reported(fake_oap, "offcpu-svc")
    task = fake_oap.add_task(proc.process_id, target_type="OFF_CPU", duration_s=30)
    fake_oap.wait_for(lambda _: "profiling started" in agent.log_text(), timeout=15)
    process.send_line("go")
    assert process.read_line(timeout=15) == "done 200"
    queued_ms = int(process.read_line(timeout=10).split()[1]) / 1e6  # woken, waiting for a CPU

    def slept(samples):
        return [
            s for s in samples if s.user and "nanosleep" in s.user[0] and "block_loop" in s.user
        ]

    data = wait_task_samples(
        fake_oap, task.task_id, lambda s: sum(x.switch_count for x in slept(s)) >= 180
    )
    sleeps = slept(data)
    assert 180 <= sum(s.switch_count for s in sleeps) <= 220
    blocked_ms = sum(s.duration_ns for s in sleeps) / 1e6
    assert 1800 <= blocked_ms - queued_ms <= 2300, (blocked_ms, queued_ms)
    assert all(s.kernel for s in sleeps)  # the kernel side of a sleep is there too


def test_backend_absent_at_start_then_appears(fake_oap, start_agent, spawn, workloads, tmp_path):
    binary = unique_copy(workloads, "hot_c_fp", tmp_path)
    spawn([binary])
    fake_oap.stop()
    agent = start_agent(scanner_env(fake_oap.addr, binary.name, "late-svc"))
    time.sleep(3)
    assert agent.running()
    fake_oap.start()
    proc = wait_reported(fake_oap, "late-svc", timeout=30)
    task = fake_oap.add_task(proc.process_id, duration_s=3)
    wait_task_samples(fake_oap, task.task_id, lambda s: hot_share(s, "c_hot_spin") > 0.5)


def metric(address, name, labels=""):
    """A value from the agent's Prometheus endpoint (0 when absent)."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} ") or line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def free_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_backend_restart_mid_task_loses_nothing(fake_oap, start_agent, spawn, workloads, tmp_path):
    """Every sample the kernel counted for the task reaches the backend, across an outage."""
    binary = unique_copy(workloads, "hot_c_fp", tmp_path)
    spawn([binary])
    health = free_address()
    env = scanner_env(fake_oap.addr, binary.name, "restart-svc", ROVER_HEALTH_ADDRESS=health)
    agent = start_agent(env)
    proc = wait_reported(fake_oap, "restart-svc")
    task = fake_oap.add_task(proc.process_id, duration_s=8)
    wait_task_samples(fake_oap, task.task_id, lambda s: s)  # running and uploading
    before_outage = sum(s.dump_count for s in of_task(fake_oap, task.task_id))
    fake_oap.stop()
    time.sleep(4)  # samples keep being collected while the backend is down
    fake_oap.start()
    fake_oap.wait_for(lambda _: "finished" in agent.log_text(), timeout=40, what="task end")

    def delivered(_):
        return metric(health, "rover_upload_pending_messages") == 0 and of_task(
            fake_oap, task.task_id
        )

    fake_oap.wait_for(delivered, timeout=30, what="the queue to drain")
    collected = metric(health, "rover_samples_collected_total", 'profiling_type="ON_CPU"')
    uploaded = sum(s.dump_count for s in of_task(fake_oap, task.task_id))
    assert uploaded == collected > before_outage
    assert metric(health, "rover_upload_dropped_messages_total") == 0
    assert agent.running()


def test_malformed_commands_do_not_stop_the_agent(
    fake_oap, start_agent, spawn, workloads, tmp_path
):
    binary = unique_copy(workloads, "hot_c_fp", tmp_path)
    spawn([binary])
    agent = start_agent(scanner_env(fake_oap.addr, binary.name, "malformed-svc"))
    proc = wait_reported(fake_oap, "malformed-svc")
    now = str(int(time.time() * 1000))
    good = {
        "SerialNumber": "x", "TaskId": "bad", "ProcessId": proc.process_id,
        "TaskUpdateTime": now, "TriggerType": "FIXED_TIME", "TargetType": "ON_CPU",
        "TaskStartTime": now, "ExtensionConfigJSON": "null", "FixedTriggerDuration": "5",
    }  # fmt: skip
    broken = [
        {k: v for k, v in good.items() if k != "TaskStartTime"},  # missing key
        {**good, "TaskStartTime": "yesterday"},  # non-numeric time
        {**good, "ExtensionConfigJSON": "{oops"},  # bad JSON
        {**good, "TargetType": "QUANTUM"},  # unknown target type
        {**good, "ProcessId": "not-a-process-of-ours"},  # unknown process
        {**good, "FixedTriggerDuration": "99999999999999999999"},  # beyond int64
        {**good, "TaskStartTime": str(int(now) + 50 * 365 * 86_400_000)},  # 50 years ahead
    ]
    for args in broken:
        fake_oap.add_raw_task_command(args)
    fake_oap.wait_for_calls("queryTasks", count=3, timeout=15)
    assert agent.running()
    task = fake_oap.add_task(proc.process_id, duration_s=3)
    fake_oap.add_raw_task_command({**good, "TaskId": task.task_id})  # a duplicate of it
    data = wait_task_samples(fake_oap, task.task_id, lambda s: hot_share(s, "c_hot_spin") > 0.5)
    assert len({s.start_ms for s in data}) == 1  # the duplicate did not start a second run
    log = agent.log_text()
    for needle in (
        "missing argument", "not an integer", "not JSON", "unknown TargetType",
        "not a 64-bit integer", "days ahead",
    ):  # fmt: skip
        assert needle in log
    assert "Traceback" not in log


def test_a_command_that_breaks_the_parser_costs_only_itself(
    fake_oap, start_agent, spawn, workloads, tmp_path
):
    """100,000 nested brackets make json.loads raise RecursionError; the valid task after
    it in the same reply must still start."""
    binary = unique_copy(workloads, "hot_c_fp", tmp_path)
    spawn([binary])
    agent = start_agent(scanner_env(fake_oap.addr, binary.name, "deep-svc"))
    proc = wait_reported(fake_oap, "deep-svc")
    now = str(int(time.time() * 1000))
    args = {
        "SerialNumber": "x", "TaskId": "deep", "ProcessId": proc.process_id,
        "TaskUpdateTime": now, "TriggerType": "FIXED_TIME", "TargetType": "ON_CPU",
        "TaskStartTime": now, "ExtensionConfigJSON": "[" * 100_000 + "]" * 100_000,
        "FixedTriggerDuration": "3",
    }  # fmt: skip
    fake_oap.add_raw_task_command(args)
    fake_oap.add_raw_task_command({**args, "TaskId": "valid", "ExtensionConfigJSON": "null"})
    wait_task_samples(fake_oap, "valid", lambda s: hot_share(s, "c_hot_spin") > 0.5)
    log = agent.log_text()
    assert "task deep: ExtensionConfigJSON nests too deeply" in log
    assert "RecursionError" not in log and "Traceback" not in log


def test_process_dying_mid_task_keeps_agent_running(
    fake_oap, start_agent, spawn, workloads, tmp_path
):
    binary = unique_copy(workloads, "hot_c_fp", tmp_path)
    victim = spawn([binary])
    agent = start_agent(scanner_env(fake_oap.addr, binary.name, "dying-svc"))
    proc = wait_reported(fake_oap, "dying-svc")
    task = fake_oap.add_task(proc.process_id, duration_s=30)
    wait_task_samples(fake_oap, task.task_id, lambda s: s)
    victim.stop()
    time.sleep(3)
    assert agent.running()
    assert "Traceback" not in agent.log_text()
    assert hot_share(of_task(fake_oap, task.task_id), "c_hot_spin") > 0.5


def test_sigterm_flushes_collected_data_and_exits_0(
    fake_oap, start_agent, spawn, workloads, tmp_path
):
    binary = unique_copy(workloads, "hot_c_fp", tmp_path)
    spawn([binary])
    env = scanner_env(fake_oap.addr, binary.name, "term-svc", ROVER_PROFILING_FLUSH_INTERVAL="1m")
    agent = start_agent(env)
    proc = wait_reported(fake_oap, "term-svc")
    task = fake_oap.add_task(proc.process_id, duration_s=600)
    # a task's first flush comes a second after it starts, the next only after 1 min
    fake_oap.wait_for(lambda o: of_task(o, task.task_id), timeout=15, what="the first flush")
    first = len(of_task(fake_oap, task.task_id))
    time.sleep(2)
    assert len(of_task(fake_oap, task.task_id)) == first  # nothing flushed since
    code, took = agent.stop()
    assert code == 0 and took < 10
    assert hot_share(of_task(fake_oap, task.task_id)[first:], "c_hot_spin") > 0.5


@pytest.mark.parametrize("after", [0.3, 1.0])
def test_sigterm_during_start_up_exits_0(fake_oap, start_agent, after):
    """SIGTERM while the agent imports and starts (a pod deleted right after it was
    scheduled): a clean exit, not death by the signal. (Before the interpreter runs our
    first line, ~40 ms, the signal's default action still applies.)"""
    agent = start_agent(scanner_env(fake_oap.addr, "no-such-process", "early-svc"))
    time.sleep(after)
    code, took = agent.stop()
    assert code == 0, agent.log_text()
    assert took < 10
    assert "Traceback" not in agent.log_text()


CRASH_SIGNS = ("Segmentation fault", "double free", "core dumped", "Fatal Python error")
UNDELIVERED = re.compile(
    r"not delivered to the backend: (\d+) messages \((\d+) on-CPU samples, \d+ off-CPU "
    r"switches\).*; (\d+) messages delivered"
)


def test_sigterm_with_a_backend_that_never_answers_exits_in_time_and_counts_the_loss(
    start_agent, spawn, workloads, tmp_path
):
    """The pod gets 10 s after SIGTERM. A backend that accepts calls and never answers
    them must cost neither that deadline nor a crash on the way out, and what it never
    acknowledged (the stream it holds included) is reported as not delivered."""
    for run in range(3):
        binary = unique_copy(workloads, "hot_c_fp", tmp_path)
        workload = spawn([binary])
        oap = FakeOAP(workers=64).start()  # hung calls hold a worker each
        try:
            sigterm_with_hung_backend(oap, start_agent, workload, binary.name, f"hung-{run}")
        finally:
            os.kill(workload.pid, signal.SIGCONT)
            oap.stop()


def sigterm_with_hung_backend(oap, start_agent, workload, name, service):
    health = free_address()  # for the kernel's sample count; the readiness BPF check runs too
    agent = start_agent(scanner_env(oap.addr, name, service, ROVER_HEALTH_ADDRESS=health))
    proc = wait_reported(oap, service)
    task = oap.add_task(proc.process_id, duration_s=600)
    wait_task_samples(oap, task.task_id, lambda s: s)  # profiling and uploading
    oap.hang()  # every call from now on: uploads, heartbeats, task queries
    oap.wait_for(lambda o: [c for c in o.calls_of("collectProfilingData") if c.status == "HUNG"])
    os.kill(workload.pid, signal.SIGSTOP)  # no samples after this: the total is final
    time.sleep(0.5)
    collected = metric(health, "rover_samples_collected_total", 'profiling_type="ON_CPU"')
    code, took = agent.stop(timeout=30)
    log = agent.log_text()
    assert code == 0 and took < 9.0, (service, code, took, log[-3000:])
    assert not [sign for sign in (*CRASH_SIGNS, "Traceback") if sign in log], log[-3000:]
    found = UNDELIVERED.search(log)
    assert found, log[-3000:]
    lost_messages, lost_samples, delivered = map(int, found.groups())
    acknowledged = sum(s.dump_count for s in of_task(oap, task.task_id))
    assert lost_messages > 0 and lost_samples > 0
    assert lost_samples == collected - acknowledged
    assert delivered == len(oap.profiling_data())


def test_bad_configuration_stops_start_up_naming_key(start_agent, tmp_path):
    agent = start_agent({"ROVER_PROFILING_CHECK_INTERVAL": "soon"})
    assert agent.proc.wait(timeout=20) == 2
    assert "profiling.check_interval" in agent.log_text() and "soon" in agent.log_text()


def test_sampling_period_above_the_kernel_limit_stops_start_up_naming_key(start_agent):
    agent = start_agent({"ROVER_PROFILING_TASK_ON_CPU_DUMP_PERIOD": "1ns"})
    assert agent.proc.wait(timeout=20) == 2
    log = agent.log_text()
    assert "profiling.task.on_cpu.dump_period: 1ns" in log and "perf_event_max_sample_rate" in log
    assert "Traceback" not in log


def test_unsupported_template_stops_start_up_naming_the_expression(start_agent):
    agent = start_agent(
        scanner_env(
            "127.0.0.1:1",
            "x",
            "svc",
            ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_PROCESS_NAME="{{.Process.Bogus}}",
        )
    )
    assert agent.proc.wait(timeout=20) == 2
    log = agent.log_text()
    assert "scanner.regex[0].process_name" in log and "{{.Process.Bogus}}" in log
    assert "Traceback" not in log


def test_kubernetes_without_api_configuration_says_what_to_do(start_agent, tmp_path):
    agent = start_agent(
        {
            "ROVER_PROCESS_DISCOVERY_KUBERNETES_ACTIVE": "true",
            "ROVER_PROCESS_DISCOVERY_KUBERNETES_NODE_NAME": "node-1",
            "KUBECONFIG": str(tmp_path / "missing-kubeconfig"),
        }
    )
    assert agent.proc.wait(timeout=20) == 1
    log = agent.log_text()
    assert "KUBECONFIG" in log and "Traceback" not in log
