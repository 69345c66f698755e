"""The long-running agent: discovery, reporting, backend tasks, profiling, upload.

Start order: backend client -> finders -> loops (heartbeat, task poll,
scheduler, flush). Stop is bounded as a whole by one deadline
(:data:`SHUTDOWN_BUDGET`, well inside the pod's 10 s grace period), each step
taking what is left of it: every loop is told to stop (none is waited for
yet), tasks are stopped and drained, the BPF programs are freed, then the
final upload gets the remaining time, then the channel is closed (which cancels
any call a loop still waits on). BPF is freed before the upload, so a backend
that never answers cannot keep a thread near BPF objects while the process exits;
if a compile outlives the budget the process leaves without interpreter clean-up
(:meth:`Agent.run_until_signalled`). What the backend never acknowledged is
logged as not delivered.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable

import psutil

from rover.backend import BackendClient, ProcessReporter, ProfileUploader
from rover.backend.continuous import BackendMeterSink, BackendPolicySource, BackendTriggerSink
from rover.backend.network import NetworkReportSender
from rover.bpf.engine import EngineConfig
from rover.bpf.headers import HeaderSearch
from rover.bpf.load_check import CheckCancelled, LoadCheck
from rover.bpf.tracefs import ensure_tracefs
from rover.byte_cache import CacheStats, HasCaches
from rover.config import AgentConfig
from rover.continuous import ContinuousProfiler
from rover.continuous.http_monitor import HttpMonitor
from rover.deadline import Deadline
from rover.health import HealthServer, Liveness, Readiness
from rover.hostfs import HostFS
from rover.metrics import AgentParts, agent_registry
from rover.network.http1 import Http1Parser
from rover.network.model import SamplingRule
from rover.network.monitor import NetworkMonitor
from rover.network.observer import NetworkObserver, observer_config
from rover.network.report import TrafficReporter
from rover.network.sampling import sample
from rover.periodic import PeriodicLoop
from rover.process.finder import ProcessFinder
from rover.process.model import DiscoveredProcess
from rover.symbols import Symbolizer, demangle
from rover.tasks.engines import EngineSet
from rover.tasks.manager import TaskManager
from rover.tasks.poller import TaskPoller

log = logging.getLogger(__name__)

KUBERNETES_SCAN_PERIOD = 5.0  # seconds between /proc rescans for pods (Rover's fixed value)
SCHEDULER_PERIOD = 0.2  # seconds between start/stop checks of tasks
FINDER_SYNC_BUDGET = 5.0  # seconds start() waits for finders' first lists (one scan period)
# Seconds from SIGTERM to the end of stop() (the pod gets 10; the interpreter's exit and
# the signal's delivery need the rest). Of it, stopping tasks may take all but
# FINAL_UPLOAD_MIN (waiting for a compile), and the upload all but CLOSE_RESERVE.
SHUTDOWN_BUDGET = 7.0
FINAL_UPLOAD_MIN = 2.0
CLOSE_RESERVE = 0.5


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        finders: list[ProcessFinder] | None = None,
        agent_id: str | None = None,
    ) -> None:
        self.config = config
        self.agent_id = agent_id or str(uuid.uuid4())
        self.hostfs = HostFS(config.core.host_root, config.core.host_proc_mapping)
        self.client = BackendClient(config.core.backend)
        self.finders = finders if finders is not None else build_finders(config, self.agent_id)
        self.reporter = ProcessReporter(
            self.client, self.agent_id, config.process_discovery.properties_report_period
        )
        caches = config.cache
        self.symbolizer = Symbolizer(
            self.hostfs,
            symbol_table_bytes=caches.symbol_table_bytes,
            perf_map_bytes=caches.perf_map_bytes,
        )
        demangle.set_cache_bytes(caches.demangled_name_bytes)
        self.uploader = ProfileUploader(self.client, config.core.backend.upload_buffer_size)
        frequency = config.profiling.task.on_cpu.frequency
        headers = HeaderSearch(
            hostfs=self.hostfs, configured_dir=config.profiling.kernel_headers or None
        )
        self.headers = headers
        self.engines = EngineSet(
            headers.find,
            EngineConfig(frequency=frequency),
            unwind=config.profiling.unwind.value,
            table_bytes=config.profiling.unwind_table_bytes,
            hostfs=self.hostfs,
            cfi_table_bytes=caches.cfi_table_bytes,
        )
        self.network = self._network_monitor() if config.profiling.active else None
        self.tasks = TaskManager(
            self.engines,
            self.symbolizer,
            self.uploader,
            resolve=self._resolve,
            hostfs=self.hostfs,
            network=self.network,
        )
        self.poller = TaskPoller(self.client, self.agent_id, self.tasks)
        self.http_monitor = self._http_monitor() if config.profiling.active else None
        self.continuous = self._continuous() if config.profiling.active else None
        self.loops = self._loops()
        self._stopped = threading.Event()
        self._load_check: LoadCheck | None = None
        self._load_check_lock = threading.Lock()
        self._snapshot: list[DiscoveredProcess] | None = None
        # One scan at a time: the heartbeat's first scan and the discovery loop's may overlap,
        # and an older scan finishing last would replace a newer result.
        self._discover_lock = threading.Lock()
        self.readiness = Readiness(
            backend_answered=lambda: self.client.connection_epoch > 0,
            backend_addr=config.core.backend.addr,
            bpf_needed=config.profiling.active,
            bpf_loaded=lambda: bool(self.engines.loaded()),
        )
        self.health = self._health_server()  # binds now: a busy port fails before start

    def _continuous(self) -> ContinuousProfiler:
        if self.config.core.host_root != "/":
            psutil.PROCFS_PATH = self.config.core.proc_dir  # the host's /proc, not ours
        return ContinuousProfiler(
            self.config.profiling.continuous,
            policies=BackendPolicySource(self.client),
            triggers=BackendTriggerSink(self.client),
            tasks=_TriggeredTasks(self.tasks),
            meters=BackendMeterSink(self.client),
            processes=self.reporter,
            http=self.http_monitor,
        )

    def _http_monitor(self) -> HttpMonitor:
        """Continuous profiling's HTTP monitors: an observer of their own (spec 8.13),
        compiled when the first process with an HTTP check item is watched."""
        network = self.config.profiling.task.network

        def observer() -> NetworkObserver:
            observer = NetworkObserver(self.headers.find(), observer_config(network))
            observer.start()
            return observer

        return HttpMonitor(observer, Http1Parser, max_connections=network.max_connections)

    def _network_monitor(self) -> NetworkMonitor:
        """NETWORK tasks' monitor: its program is compiled when the first task starts."""
        network = self.config.profiling.task.network
        reporter = TrafficReporter(NetworkReportSender(self.client), network)

        def observer() -> NetworkObserver:
            observer = NetworkObserver(
                self.headers.find(), observer_config(network), hostfs=self.hostfs
            )
            observer.start()
            return observer

        self._network_reporter = reporter
        return NetworkMonitor(network, observer, Http1Parser, sample, reporter, hostfs=self.hostfs)

    def network_counters(self) -> dict[str, int]:
        if self.network is None:
            return {}
        http = self.http_monitor.metrics() if self.http_monitor is not None else {}
        return {
            **self.network.metrics(),
            **self._network_reporter.counters,
            **{f"continuous_{name}": n for name, n in http.items()},
        }

    def _health_server(self) -> HealthServer | None:
        """/healthz, /readyz and /metrics, when core.health.address is set."""
        address = self.config.core.health.address
        if not address:
            return None
        parts = AgentParts(
            tasks=self.tasks,
            engines=self.engines,
            uploader=self.uploader,
            client=self.client,
            reporter=self.reporter,
            loops=self.loops,
            discovered=lambda: len(self.discovered),
            caches=self.caches,
            network=self.network_counters,
        )
        liveness = Liveness(lambda: self.loops)
        return HealthServer(address, liveness, self.readiness, agent_registry(parts))

    def caches(self) -> list[CacheStats]:
        """Every cache of the agent, each bounded in bytes (the ``cache`` settings, and
        ``profiling.unwind_table_bytes`` for the kernel's unwind rows)."""
        found = self.symbolizer.caches() + self.engines.caches()
        for finder in self.finders:
            if isinstance(finder, HasCaches):
                found += finder.caches()
        return found

    def _resolve(self, process_id: str) -> DiscoveredProcess | None:
        return self.reporter.registered().get(process_id)

    def _loops(self) -> list[PeriodicLoop]:
        pd, prof = self.config.process_discovery, self.config.profiling
        scan_period = pd.scanner.period if pd.scanner.active else KUBERNETES_SCAN_PERIOD
        loops = [
            PeriodicLoop("discovery", scan_period, self.discover),
            PeriodicLoop("heartbeat", pd.heartbeat_period, self.heartbeat),
        ]
        if prof.active:
            flush = PeriodicLoop("profiling-flush", prof.flush_interval, self.tasks.flush)
            self.tasks.flush_within = lambda seconds: flush.run_by(time.monotonic() + seconds)
            loops += [
                PeriodicLoop("task-query", prof.check_interval, self.poller.poll),
                PeriodicLoop("task-scheduler", SCHEDULER_PERIOD, self.tasks.tick),
                flush,
            ]
        return loops

    def discover(self) -> list[DiscoveredProcess]:
        """Scan every finder; the heartbeat reports the latest result."""
        with self._discover_lock:
            current: list[DiscoveredProcess] = []
            for finder in self.finders:
                current += finder.scan()
            self._snapshot = current
            return current

    @property
    def discovered(self) -> list[DiscoveredProcess]:
        """The latest scan's processes (empty before the first scan)."""
        return list(self._snapshot or ())

    def heartbeat(self) -> None:
        """Report processes (spec 4.3): new ones in full, known ones by keepAlive."""
        current = self._snapshot
        if current is None:  # the first heartbeat may come before the first scan
            current = self.discover()
        self.reporter.heartbeat(current)

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        log.info("agent %s starting, backend %s", self.agent_id, self.config.core.backend.addr)
        if self.health is not None:
            self.health.start()
        if self.config.profiling.active and ensure_tracefs() is None:
            log.warning("tracefs is not mounted and could not be: off-CPU profiling will fail")
        if self.health is not None and self.config.profiling.active:
            # readiness needs to know that BPF loads here; in the background (a second or two)
            self.readiness.probe_bpf(self._check_bpf_loads)
        for finder in self.finders:
            finder.start()
        self._wait_finders_synced()
        for loop in self.loops:
            loop.start()
        if self.continuous is not None:
            self.continuous.start()

    def _wait_finders_synced(self) -> None:
        """Like an informer's WaitForCacheSync: the first scan then sees every pod, instead
        of nothing until the scan after (a whole scan period later). Bounded: an API server
        that is down delays nothing more than this."""
        deadline = time.monotonic() + FINDER_SYNC_BUDGET
        for finder in self.finders:
            if not finder.wait_synced(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "%s has not listed everything it watches after %.0fs; its processes are "
                    "reported once it has",
                    type(finder).__name__,
                    FINDER_SYNC_BUDGET,
                )

    def _check_bpf_loads(self) -> bool:
        """Readiness: the programs compile, load and attach here (in a child process)."""
        if self.engines.loaded():
            return True  # a task already loaded one
        with self._load_check_lock:
            if self._stopped.is_set():
                return False
            self._load_check = LoadCheck(self.headers.find(), self.engines.config)
        try:
            self._load_check.run()
        except CheckCancelled:
            return False
        return True

    def stop(self) -> bool:
        """Stop everything within SHUTDOWN_BUDGET seconds (see the module docstring).

        False when a thread was still compiling a BPF program at the end: the process
        must then exit without interpreter clean-up (LLVM is not safe to unload under
        a running compile).
        """
        if self._stopped.is_set():
            return True
        self._stopped.set()
        deadline = Deadline(SHUTDOWN_BUDGET)
        loops = self.loops + (self.continuous.loops if self.continuous is not None else [])
        for loop in loops:
            loop.request_stop()
        with self._load_check_lock:
            if self._load_check is not None:
                self._load_check.cancel()
        # the parts that touch neither BPF nor the backend stop alongside the rest
        others = threading.Thread(target=self._stop_others, name="stop-others", daemon=True)
        others.start()
        http_freed = self.http_monitor is None or self.http_monitor.close(
            timeout=deadline.remaining(keep=FINAL_UPLOAD_MIN)
        )
        bpf_freed = self.tasks.stop_all(timeout=deadline.remaining(keep=FINAL_UPLOAD_MIN))
        bpf_freed = bpf_freed and http_freed
        self.uploader.flush(timeout=deadline.remaining(keep=CLOSE_RESERVE))
        self.client.close(timeout=deadline.remaining())  # cancels calls loops still wait on
        for loop in loops:
            loop.join(deadline.remaining())
        others.join(deadline.remaining())
        self._report_undelivered()
        log.info("agent stopped in %.1fs", deadline.elapsed())
        return bpf_freed

    def _stop_others(self) -> None:
        """The health endpoint (its scrapes read the engines) and the finders."""
        if self.health is not None:
            self.health.stop()
        for finder in self.finders:
            finder.stop()

    def _report_undelivered(self) -> None:
        """What the backend never acknowledged: queued, or in a stream it did not answer."""
        lost, dropped = self.uploader.undelivered(), self.uploader.dropped
        log.log(
            logging.WARNING if lost.messages or dropped else logging.INFO,
            "profiling data not delivered to the backend: %s%s; %d messages delivered",
            lost,
            f", and {dropped} messages dropped earlier (upload buffer full)" if dropped else "",
            self.uploader.uploaded,
        )

    def run_until_signalled(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set (the CLI sets it on SIGTERM or SIGINT), then stop
        within the shutdown budget. A ``stop`` set before the start means exit at once."""
        if stop.is_set():
            log.info("stop requested before the agent started")
            self.stop()
            return
        self.start()
        # With a timeout: Python runs signal handlers in the main thread only when it runs
        # bytecode, and a signal the kernel delivered to another thread (podman stop's
        # `runc kill --all` does that) would never wake an untimed wait.
        while not stop.wait(0.5):
            pass
        log.info("stop requested")
        if not self.stop():
            # A thread is inside LLVM: unloading it at interpreter exit would crash.
            log.warning("exiting at once: a BPF program is still compiling")
            logging.shutdown()
            os._exit(0)


class _TriggeredTasks:
    """The continuous profiler's task starter: the agent's own task manager."""

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager

    def start(
        self,
        task_id: str,
        target_type: str,
        processes: list[tuple[str, DiscoveredProcess]],
        duration_s: int,
        rules: list[SamplingRule] | None = None,
    ) -> None:
        pids = {process_id: process.pid for process_id, process in processes}
        self.manager.run_now(task_id, target_type, pids, duration_s, rules=rules)


def build_finders(config: AgentConfig, agent_id: str) -> list[ProcessFinder]:
    """The finders the configuration activates (Kubernetes and/or the regex scanner)."""
    builders: list[Callable[[], ProcessFinder]] = []
    from rover.process import finders_from_config

    builders += finders_from_config(config, agent_id)
    return [build() for build in builders]
