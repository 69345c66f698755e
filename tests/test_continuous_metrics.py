"""Real measurements with psutil on real child processes."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from rover.continuous import (
    ContinuousConfig,
    ContinuousProfiler,
    MonitorType,
    ProcessVanished,
    PsutilMetrics,
    ServicePolicy,
    TargetType,
)
from rover.continuous.policy import CheckItem
from rover.process.model import DiscoveredProcess, Entity, ProcessKind

BURN = [sys.executable, "-c", "while True: pass"]
THREADS = [
    sys.executable,
    "-c",
    "import threading, time\n"
    "for _ in range(7): threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n",
]


def cpu_over(metrics: PsutilMetrics, pid: int, seconds: float) -> float:
    key = (pid, 0)
    assert metrics.read_process(key, cpu=True, threads=False).cpu_percent is None  # baseline
    time.sleep(seconds)
    value = metrics.read_process(key, cpu=True, threads=False).cpu_percent
    assert value is not None
    return value


def test_a_cpu_burner_measures_about_one_core(spawn):
    burner = spawn(BURN, wait_ready=False)
    time.sleep(0.2)  # past interpreter start-up
    value = cpu_over(PsutilMetrics(), burner.pid, 1.0)
    assert 60.0 <= value <= 110.0, value  # a loaded 2-core box may steal some


def test_an_idle_sleeper_measures_about_zero(spawn):
    sleeper = spawn(["sleep", "600"], wait_ready=False)
    time.sleep(0.1)
    assert cpu_over(PsutilMetrics(), sleeper.pid, 1.0) < 5.0


def test_the_rate_is_recent_not_a_lifetime_average(spawn):
    burner = spawn(BURN, wait_ready=False)
    metrics = PsutilMetrics()
    assert cpu_over(metrics, burner.pid, 0.5) > 50
    burner.proc.send_signal(signal.SIGSTOP)  # it stops using CPU at once
    try:
        metrics.read_process((burner.pid, 0), cpu=True, threads=False)
        time.sleep(0.5)
        idle = metrics.read_process((burner.pid, 0), cpu=True, threads=False).cpu_percent
    finally:
        burner.proc.send_signal(signal.SIGCONT)
    assert idle is not None and idle < 5.0


def test_thread_count_of_a_process_that_spawned_threads(spawn):
    threaded = spawn(THREADS)
    reading = PsutilMetrics().read_process((threaded.pid, 0), cpu=False, threads=True)
    assert reading.threads == 8 and reading.cpu_percent is None


def test_a_vanished_process_raises_and_is_forgotten(spawn):
    sleeper = spawn(["sleep", "600"], wait_ready=False)
    metrics = PsutilMetrics()
    metrics.read_process((sleeper.pid, 0), cpu=True, threads=True)
    assert len(metrics) == 1
    sleeper.stop()
    with pytest.raises(ProcessVanished):
        metrics.read_process((sleeper.pid, 0), cpu=True, threads=True)
    assert len(metrics) == 0


def test_system_load_is_a_non_negative_number():
    assert PsutilMetrics().system_load() >= 0.0


class Recorder:
    def __init__(self, policies):
        self.policies = policies
        self.reports = []
        self.started = []
        self.meters = []

    def fetch(self, known):
        reply, self.policies = self.policies, []
        return reply

    def report(self, trigger):
        self.reports.append(trigger)
        return "task-1"

    def start(self, task_id, target_type, processes, duration_s):
        self.started.append((task_id, target_type, [pid for pid, _ in processes]))

    def send(self, samples):
        self.meters.extend(samples)


def test_end_to_end_the_burner_triggers_and_the_sleeper_does_not(spawn):
    burner = spawn(BURN, wait_ready=False)
    sleeper = spawn(["sleep", "600"], wait_ready=False)
    entity = Entity("GENERAL", "svc", "i1", "p")
    registered = {
        "burner": DiscoveredProcess(burner.pid, entity, ProcessKind.HOST),
        "sleeper": DiscoveredProcess(sleeper.pid, entity, ProcessKind.HOST),
    }
    cpu = CheckItem(TargetType.ON_CPU, MonitorType.PROCESS_CPU, 50.0, period=3, count=2)
    recorder = Recorder([ServicePolicy("svc", "v1", (cpu,))])

    class Processes:
        def registered(self):
            return registered

    profiler = ContinuousProfiler(
        ContinuousConfig(),
        policies=recorder,
        triggers=recorder,
        tasks=recorder,
        meters=recorder,
        processes=Processes(),
    )
    profiler.check_once()
    for _ in range(4):  # baseline + 3 rates
        profiler.fetch_once()
        time.sleep(1.0)
    profiler.check_once()
    assert recorder.started == [("task-1", "ON_CPU", ["burner"])]
    (cause,) = recorder.reports[0].causes
    assert cause.threshold == 50.0 and 60 <= cause.current <= 110
    values = sorted(m.value for m in recorder.meters)
    assert len(values) == 2 and values[0] < 5 and values[1] > 60
