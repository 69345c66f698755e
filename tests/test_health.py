"""The health endpoint: /healthz, /readyz and /metrics of a real agent, and their parts."""

from __future__ import annotations

import shutil
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from agent_process import scanner_env
from backend_data import of_task, reported
from prometheus_client.parser import text_string_to_metric_families

from rover.health import (
    STALL_PERIODS,
    STALL_SLACK,
    HealthAddressError,
    HealthServer,
    Liveness,
    Readiness,
    parse_address,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except OSError as exc:  # not listening yet
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    status, text = get(f"{base}/metrics")
    assert status == 200, text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def metric(values: dict, name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


# -- the real agent ---------------------------------------------------------------------------


@pytest.mark.bpf
def test_probes_and_metrics_of_a_running_agent(fake_oap, start_agent, spawn, workloads, tmp_path):
    binary = tmp_path / f"hot_c_fp-{uuid.uuid4().hex[:8]}"
    shutil.copy(workloads.build("hot_c_fp"), binary)
    spawn([binary])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    fake_oap.stop()  # the backend is down when the agent starts
    env = scanner_env(fake_oap.addr, binary.name, "health-svc")
    agent = start_agent({**env, "ROVER_HEALTH_ADDRESS": f"127.0.0.1:{port}"})

    wait_until(lambda: get(f"{base}/healthz")[0] == 200, 15, "/healthz answering 200")
    assert get(f"{base}/healthz") == (200, "ok\n")
    # BPF loads here (the probe finishes), but the backend has never answered: not ready.
    status, body = wait_until(
        lambda: (r := get(f"{base}/readyz")) and "BPF" not in r[1] and r, 30, "the BPF probe"
    )
    assert status == 503
    assert body == f"backend {fake_oap.addr} has not answered yet\n"
    assert get(f"{base}/nowhere")[0] == 404

    fake_oap.start()
    wait_until(lambda: get(f"{base}/readyz") == (200, "ok\n"), 30, "/readyz 200 after the backend")
    fake_oap.wait_for(lambda o: reported(o, "health-svc"), timeout=20, what="the process")
    process = reported(fake_oap, "health-svc")[0]
    # The agent takes in the backend's reply just after the backend recorded the process.
    wait_until(
        lambda: metric(scrape(base), "rover_processes_registered") == 1, 10, "the registration"
    )
    before = scrape(base)
    assert metric(before, "rover_backend_connected") == 1
    assert metric(before, "rover_processes_discovered") >= 1
    assert metric(before, "rover_tasks_running") == 0

    task = fake_oap.add_task(process.process_id, target_type="ON_CPU", duration_s=30)
    fake_oap.wait_for(lambda o: of_task(o, task.task_id), timeout=30, what="uploaded samples")
    first = scrape(base)
    assert metric(first, "rover_tasks_running") == 1
    assert metric(first, "rover_tasks_total", outcome="started") == 1
    # Two more flushes: at least one whole drain-and-upload after the first scrape.
    flushes = metric(first, "rover_loop_runs_total", loop="profiling-flush")
    wait_until(
        lambda: (
            metric(scrape(base), "rover_loop_runs_total", loop="profiling-flush") >= flushes + 2
        ),
        15,
        "two more flushes",
    )
    second = scrape(base)
    assert metric(second, "rover_upload_messages_total") > metric(
        first, "rover_upload_messages_total"
    )
    on_cpu = {"profiling_type": "ON_CPU"}
    assert metric(first, "rover_samples_collected_total", **on_cpu) > 0
    assert metric(second, "rover_samples_collected_total", **on_cpu) > metric(
        first, "rover_samples_collected_total", **on_cpu
    )
    assert metric(second, "rover_stacks_drained_total", **on_cpu) > metric(
        first, "rover_stacks_drained_total", **on_cpu
    )
    assert 0 < metric(second, "rover_counts_map_fill_ratio", **on_cpu) < 1
    assert metric(second, "rover_samples_collected_total", profiling_type="OFF_CPU") == 0
    assert metric(second, "rover_upload_failures_total") == 0
    assert metric(second, "rover_upload_dropped_messages_total") == 0
    assert metric(second, "rover_bpf_dropped_total", reason="counts_map_full") == 0
    # Every loss an engine can report is a reason, the CFI walk's and its tables' too.
    for reason in ("walk_bad_frame", "walk_tail_call_failed", "unwind_tables_over_budget"):
        assert metric(second, "rover_bpf_dropped_total", reason=reason) == 0
    # The exposition is what Prometheus expects.
    status, text = get(f"{base}/metrics")
    assert "# TYPE rover_samples_collected_total counter" in text
    assert "# TYPE rover_counts_map_fill_ratio gauge" in text

    code, _ = agent.stop()
    assert code == 0, agent.log_text()[-2000:]
    with pytest.raises(OSError):
        get(f"{base}/healthz", timeout=2)


def test_busy_health_port_is_a_one_line_error(start_agent):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = start_agent(
            {
                "ROVER_BACKEND_ADDR": "127.0.0.1:1",
                "ROVER_PROFILING_ACTIVE": "false",
                "ROVER_HEALTH_ADDRESS": f"127.0.0.1:{port}",
            }
        )
        agent.proc.wait(20)
    log = agent.log_text()
    assert agent.proc.returncode == 1, log
    assert f"rover agent: error: health address '127.0.0.1:{port}': cannot listen" in log
    assert "Traceback" not in log


# -- the parts ------------------------------------------------------------------------------


@dataclass
class FakeLoop:
    name: str
    period: float
    runs: int = 0
    failures: int = 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_liveness_fails_only_for_a_loop_that_stopped_making_progress():
    clock = FakeClock()
    busy, stuck = FakeLoop("flush", 1.0), FakeLoop("heartbeat", 20.0)
    liveness = Liveness(lambda: [busy, stuck], clock=clock)
    assert liveness.state() == (True, "ok")
    window = STALL_PERIODS * stuck.period + STALL_SLACK
    for _ in range(int(window // 10)):
        clock.now += 10
        busy.runs += 1
        assert liveness.state()[0]
    clock.now += 11  # the heartbeat loop has now been idle for longer than its window
    busy.failures += 1  # a failing run is still progress
    ok, reason = liveness.state()
    assert not ok
    assert reason.startswith("heartbeat has not completed a run for ")
    assert "flush" not in reason
    stuck.runs += 1
    assert liveness.state() == (True, "ok")


def test_readiness_names_what_is_missing():
    answered = False
    readiness = Readiness(lambda: answered, "oap:11800")
    assert readiness.state() == (
        False,
        "checking that the BPF programs load; backend oap:11800 has not answered yet",
    )

    def broken() -> None:
        raise RuntimeError("could not load oncpu.c: Operation not permitted\nmore detail")

    readiness.probe_bpf(broken).join(5)
    assert readiness.state() == (
        False,
        "BPF programs cannot load: could not load oncpu.c: Operation not permitted; "
        "backend oap:11800 has not answered yet",
    )
    answered = True
    readiness.probe_bpf(lambda: None).join(5)
    assert readiness.state() == (True, "ok")


def test_readiness_without_profiling_waits_only_for_the_backend():
    readiness = Readiness(lambda: True, "oap:11800", bpf_needed=False)
    assert readiness.state() == (True, "ok")


def test_readiness_accepts_an_engine_a_task_loaded():
    readiness = Readiness(lambda: True, "oap:11800", bpf_loaded=lambda: True)
    assert readiness.state() == (True, "ok")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9100", ("127.0.0.1", 9100)),
        (":9100", ("", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("fd00::5:9100", ("fd00::5", 9100)),  # $(POD_IP):9100 with an IPv6 pod IP
    ],
)
def test_addresses(address, expected):
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9100", "host:", "host:port", "host:70000"])
def test_bad_addresses_are_clear_errors(address):
    with pytest.raises(HealthAddressError, match="expected host:port or :port"):
        parse_address(address)


def test_server_serves_probes_and_stops():
    from prometheus_client import CollectorRegistry, Counter

    registry = CollectorRegistry()
    Counter("rover_test_events", "test", registry=registry).inc(3)
    server = HealthServer(
        "127.0.0.1:0",
        Liveness(lambda: []),
        Readiness(lambda: False, "oap:11800", bpf_needed=False),
        registry,
    )
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(f"{base}/healthz") == (200, "ok\n")
        assert get(f"{base}/readyz") == (503, "backend oap:11800 has not answered yet\n")
        assert metric(scrape(base), "rover_test_events_total") == 3
    finally:
        server.stop()
    with pytest.raises(OSError):
        get(f"{base}/healthz", timeout=2)


def test_readiness_probe_without_a_verdict_keeps_checking():
    readiness = Readiness(lambda: True, "oap:11800")
    readiness.probe_bpf(lambda: False).join(5)  # e.g. cancelled at shutdown
    assert readiness.state() == (False, "checking that the BPF programs load")


@pytest.mark.bpf
def test_load_check_compiles_in_a_child_process_and_leaves_this_one_alone():
    """The check's compiles are the child's: this process's peak does not move."""
    from rover.bpf.engine import EngineConfig
    from rover.bpf.headers import HeaderSearch
    from rover.bpf.load_check import LoadCheck

    check = LoadCheck(HeaderSearch().find(), EngineConfig())
    before = peak_rss_kib()
    check.run()
    assert peak_rss_kib() - before < 20 * 1024  # one compile here would be ~180 MiB


@pytest.mark.bpf
def test_load_check_says_why_the_programs_do_not_load(tmp_path, monkeypatch):
    from rover.bpf.engine import EngineConfig
    from rover.bpf.headers import HeaderSearch
    from rover.bpf.load_check import LoadCheck
    from rover.bpf.loader import BPFLoadError

    monkeypatch.setenv("ROVER_BPF_DIR", str(tmp_path))  # the child finds no program
    with pytest.raises(BPFLoadError, match="oncpu.c not found"):
        LoadCheck(HeaderSearch().find(), EngineConfig()).run()


def test_a_cancelled_load_check_gives_no_verdict():
    from rover.bpf.engine import EngineConfig
    from rover.bpf.load_check import CheckCancelled, LoadCheck

    check = LoadCheck(headers=None, config=EngineConfig())
    check.cancel()
    with pytest.raises(CheckCancelled):
        check.run()


def peak_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


class ClosedEngine:
    """An engine freed while a scrape reads it (shutdown)."""

    def events(self) -> int:
        raise TypeError("'NoneType' object is not subscriptable")


def test_an_unreadable_engine_is_counted_at_every_scrape_and_logged_once(caplog):
    import logging
    from types import SimpleNamespace

    from rover.metrics import AgentCollector
    from rover.profile import ProfileType

    parts = SimpleNamespace(
        engines=SimpleNamespace(loaded=lambda: {ProfileType.ON_CPU: ClosedEngine()}),
        tasks=SimpleNamespace(counters={}),
    )
    collector = AgentCollector(parts)
    with caplog.at_level(logging.DEBUG, logger="rover.metrics"):
        for _ in range(3):
            list(collector._profiling())
    assert collector.engine_read_failures == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ON_CPU engine unreadable" in warnings[0].getMessage()


def test_metrics_show_every_cache_budget_size_and_evictions():
    """/metrics scraped over HTTP: each cache's budget, bytes and entries (gauges), its
    evictions and refusals (counters), as the agent hands them to the collector."""
    from types import SimpleNamespace

    from rover.bpf.engine import EngineConfig
    from rover.byte_cache import ENTRY_OVERHEAD_BYTES, ByteLru
    from rover.metrics import agent_registry
    from rover.symbols import Symbolizer
    from rover.tasks.engines import EngineSet

    symbolizer = Symbolizer(perf_map_bytes=2 << 20)
    engines = EngineSet(lambda: None, EngineConfig(), table_bytes=8 << 20)
    owners = ByteLru("kubernetes_owners", 1000)
    for i in range(10):
        owners.put(i, i, 100)  # 100 bytes and the entry's overhead each: three fit
    owners.put("huge", 0, 5000)
    parts = SimpleNamespace(
        tasks=SimpleNamespace(counters={}, runs=list),
        engines=engines,
        uploader=SimpleNamespace(uploaded=0, upload_failures=0, dropped=0, pending=0),
        client=SimpleNamespace(connected=False),
        reporter=SimpleNamespace(registered=dict),
        loops=[],
        discovered=lambda: 0,
        caches=lambda: [*symbolizer.caches(), *engines.caches(), owners.stats()],
        network=lambda: {"kernel_dropped_data_events": 3, "http_resyncs": 1},
    )
    server = HealthServer(
        "127.0.0.1:0",
        Liveness(lambda: []),
        Readiness(lambda: True, "oap:11800", bpf_needed=False),
        agent_registry(parts),
    )
    server.start()
    try:
        values = scrape(f"http://127.0.0.1:{server.port}")
    finally:
        server.stop()
    names = {
        "symbol_tables",
        "perf_maps",
        "demangled_names",
        "debug_file_crcs_symbols",
        "cfi_tables",
        "kernel_unwind_rows_on_cpu",
        "kernel_unwind_rows_off_cpu",
        "debug_file_crcs_unwinding_on_cpu",
        "debug_file_crcs_unwinding_off_cpu",
        "kubernetes_owners",
    }
    shown = {dict(labels)["cache"] for name, labels in values if name == "rover_cache_bytes"}
    assert shown == names
    for cache in names:
        for name in ("rover_cache_budget_bytes", "rover_cache_bytes", "rover_cache_entries"):
            assert metric(values, name, cache=cache) >= 0
        for name in ("evictions", "refused", "hits", "misses"):
            assert metric(values, f"rover_cache_{name}_total", cache=cache) >= 0
    assert metric(values, "rover_cache_budget_bytes", cache="perf_maps") == 2 << 20
    assert metric(values, "rover_cache_budget_bytes", cache="symbol_tables") == 20 << 20
    assert metric(values, "rover_cache_budget_bytes", cache="kernel_unwind_rows_on_cpu") == 8 << 20
    assert metric(values, "rover_cache_entries", cache="kubernetes_owners") == 3
    assert metric(values, "rover_cache_bytes", cache="kubernetes_owners") == 3 * (
        100 + ENTRY_OVERHEAD_BYTES
    )
    assert metric(values, "rover_cache_evictions_total", cache="kubernetes_owners") == 7
    assert metric(values, "rover_cache_refused_total", cache="kubernetes_owners") == 1
    # the network monitor's counters, losses included, by name
    events = "rover_network_events_total"
    assert metric(values, events, counter="kernel_dropped_data_events") == 3
    assert metric(values, events, counter="http_resyncs") == 1
