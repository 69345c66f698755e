"""Runs the backend's profiling tasks: schedule, profile, drain, upload.

Threads: the poller calls :meth:`TaskManager.apply`, a scheduler loop calls
:meth:`tick` (start due tasks, stop finished ones) and the flush loop calls
:meth:`flush`. One lock serializes them. At shutdown :meth:`stop_all` drains
and frees the BPF programs before anything is uploaded: an upload may hang on
the backend, BPF must not wait for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from rover.bpf.headers import KernelHeadersNotFound
from rover.bpf.loader import BPFLoadError
from rover.hostfs import HostFS, ProcessGone
from rover.network.model import SamplingRule
from rover.network.sampling import SamplingConfigError, rules_from_extension
from rover.process.model import DiscoveredProcess, Entity
from rover.profile import ProcessInfo, Profile, ProfileType
from rover.symbols import Symbolizer
from rover.tasks.drained import profile_from_drain, reported_counters
from rover.tasks.engines import EngineSet
from rover.tasks.model import NETWORK, ProfilingTask

log = logging.getLogger(__name__)

_PROFILE_TYPE = {"ON_CPU": ProfileType.ON_CPU, "OFF_CPU": ProfileType.OFF_CPU}


class NetworkTasks(Protocol):
    """The network monitor, as NETWORK tasks use it (rover.network.monitor)."""

    def watch(
        self, task_id: str, pid: int, process_id: str, entity: Entity, rules: list[SamplingRule]
    ) -> None: ...

    def unwatch_task(self, task_id: str) -> None: ...

    def prepare(self) -> None:
        """Load the program now (seconds), so that watch() does not."""
        ...


class Uploader(Protocol):
    def add(
        self, task_id: str, process_id: str, profiling_start_ms: int, profile: Profile
    ) -> object: ...

    def flush(self) -> bool: ...

    def forget_task(self, task_id: str, process_id: str | None = None) -> None: ...


@dataclass
class TaskRun:
    task: ProfilingTask
    pids: dict[str, int]  # backend process id -> host pid
    state: str = "waiting"  # waiting -> running -> stopping -> done
    started_ms: int = 0
    names: dict[int, ProcessInfo] = field(default_factory=dict)
    rules: list[SamplingRule] | None = None  # NETWORK: set by the agent itself, else parsed

    @property
    def is_network(self) -> bool:
        return self.task.target_type == NETWORK

    @property
    def profile_type(self) -> ProfileType:
        return _PROFILE_TYPE[self.task.target_type]

    @property
    def stop_at_ms(self) -> int:
        # The duration counts from the actual start, not the requested one (spec 4.5).
        return self.started_ms + self.task.duration_s * 1000


# A task's first flush comes this long after it starts (then every flush interval): long
# enough for samples of a 99 Hz profile, short enough for a user watching the UI.
FIRST_FLUSH_S = 1.0


class TaskManager:
    def __init__(
        self,
        engines: EngineSet,
        symbolizer: Symbolizer,
        uploader: Uploader,
        resolve: Callable[[str], DiscoveredProcess | None],
        hostfs: HostFS | None = None,
        clock: Callable[[], float] = time.time,
        network: NetworkTasks | None = None,
    ) -> None:
        self.engines = engines
        self.network = network
        self.symbolizer = symbolizer
        self.uploader = uploader
        self.resolve = resolve
        self.hostfs = hostfs or HostFS()
        self.clock = clock
        self._runs: dict[tuple, TaskRun] = {}
        # (task_id, identity, start) already run -> the task's end time: kept until then,
        # after which the task is expired anyway (so the memory follows the live tasks)
        self._finished: dict[tuple, int] = {}
        self._unsupported_logged: dict[str, int] = {}  # task id -> its end time, likewise
        self._lock = threading.RLock()
        self.counters: dict[str, int] = defaultdict(int)
        # Asks for a flush within the seconds given (the agent's flush loop): a task's
        # first data then reaches the backend a second after it starts, not a period.
        self.flush_within: Callable[[float], None] | None = None

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- tasks arriving ------------------------------------------------------
    def apply(self, task: ProfilingTask) -> bool:
        """Take a parsed task; False when a process id is unknown here (spec 4.4)."""
        pids: dict[str, int] = {}
        for process_id in task.process_ids:
            process = self.resolve(process_id)
            if process is None:
                log.warning(
                    "task %s: process id %s is not known here (yet); asked for again at the "
                    "next poll",
                    task.task_id,
                    process_id,
                )
                self.counters["tasks_unresolved"] += 1
                return False
            pids[process_id] = process.pid
        with self._lock:
            self._accept(task, pids)
        return True

    def run_now(
        self,
        task_id: str,
        target_type: str,
        pids: dict[str, int],
        duration_s: int,
        rules: list[SamplingRule] | None = None,
    ) -> None:
        """Run a task the agent decided on itself (a continuous-profiling trigger).

        It starts at once under the backend's task id and uploads like any task.
        """
        now = self._now_ms()
        task = ProfilingTask(
            task_id=task_id,
            process_ids=tuple(sorted(pids)),
            update_time_ms=now,
            trigger_type="FIXED_TIME",
            target_type=target_type,
            start_time_ms=now,
            duration_s=duration_s,
        )
        with self._lock:
            self._accept(task, pids, rules)
            self.tick()

    def _supported(self, task: ProfilingTask) -> bool:
        return task.supported or (task.target_type == NETWORK and self.network is not None)

    def _accept(
        self, task: ProfilingTask, pids: dict[str, int], rules: list[SamplingRule] | None = None
    ) -> None:
        if not self._supported(task):
            if task.task_id not in self._unsupported_logged:
                self._unsupported_logged[task.task_id] = task.end_time_ms
                log.warning(
                    "task %s: target type %s is not supported by this agent; skipped",
                    task.task_id,
                    task.target_type,
                )
                self.counters["tasks_unsupported"] += 1
            return
        done_key = (task.task_id, task.identity, task.start_time_ms)
        if done_key in self._finished:
            return
        existing = self._runs.get(task.identity)
        if existing is not None and existing.task.same_task(task):
            if existing.task.duration_s != task.duration_s:
                log.info("task %s: duration now %ds", task.task_id, task.duration_s)
            if task.extension_config is None:
                # an extended NETWORK task may come back without its rules (spec 8.2
                # rule 6): the rules it started with stay
                task = replace(task, extension_config=existing.task.extension_config)
            existing.task = task  # e.g. a new duration; the stop time follows it
            return
        if existing is None and self._now_ms() > task.end_time_ms:
            log.debug("task %s expired at %d; skipped", task.task_id, task.end_time_ms)
            return
        if existing is not None:
            log.info("task %s replaces task %s", task.task_id, existing.task.task_id)
            self._stop(existing)
        self._runs[task.identity] = TaskRun(task, pids, rules=rules)
        log.info(
            "task %s (%s) accepted for %s, %ds",
            task.task_id,
            task.target_type,
            ", ".join(f"pid {p}" for p in sorted(set(pids.values()))),
            task.duration_s,
        )

    # -- scheduling ----------------------------------------------------------
    def tick(self) -> None:
        """Start tasks whose start time has come; stop those whose duration is over."""
        now = self._now_ms()
        with self._lock:
            due = [
                (run.profile_type, pid)
                for run in self._runs.values()
                if run.state == "waiting" and now >= run.task.start_time_ms and not run.is_network
                for pid in run.pids.values()
            ]
            network_due = any(
                run.is_network and run.state == "waiting" and now >= run.task.start_time_ms
                for run in self._runs.values()
            )
        self._load_engines(due)
        if network_due and self.network is not None:
            # compiled outside the lock too; a failure is the task start's to report
            with contextlib.suppress(BPFLoadError, KernelHeadersNotFound):
                self.network.prepare()
        with self._lock:
            for run in list(self._runs.values()):
                if run.state == "waiting" and now >= run.task.start_time_ms:
                    self._start(run)
                elif run.state == "running" and now >= run.stop_at_ms:
                    log.info("task %s: duration over", run.task.task_id)
                    self._stop(run)

    def _load_engines(self, due: list[tuple[ProfileType, int]]) -> None:
        """Load the programs of the tasks about to start, without the manager's lock: a
        flush (a running task's first one included) must not wait seconds behind a
        compile. A failure is left for the task's start to report."""
        by_type: dict[ProfileType, list[int]] = defaultdict(list)
        for profile_type, pid in due:
            by_type[profile_type].append(pid)
        for profile_type, pids in by_type.items():
            try:
                self.engines.engine(profile_type, pids)
            except (BPFLoadError, KernelHeadersNotFound):
                continue

    def _start(self, run: TaskRun) -> None:
        if run.is_network:
            self._start_network(run)
            return
        for process_id, pid in list(run.pids.items()):
            try:
                self.symbolizer.prepare(pid)
                run.names[pid] = ProcessInfo(pid, self.hostfs.comm(pid))
            except ProcessGone:
                log.warning("task %s: process %d is gone", run.task.task_id, pid)
                del run.pids[process_id]
        if not run.pids:
            self._fail(run, "none of its processes is running")
            return
        try:
            for pid in set(run.pids.values()):
                self.engines.acquire(run.profile_type, pid)
        except (BPFLoadError, KernelHeadersNotFound) as exc:
            self._fail(run, str(exc).splitlines()[0])
            return
        run.state = "running"
        # Stamped after the engine is attached (a first compile takes seconds):
        # the duration counts from when profiling really began (spec 4.5).
        run.started_ms = self._now_ms()
        self.counters["tasks_started"] += 1
        log.info("task %s: profiling started", run.task.task_id)
        if self.flush_within is not None:
            self.flush_within(FIRST_FLUSH_S)

    def _start_network(self, run: TaskRun) -> None:
        assert self.network is not None  # accepted only with a monitor
        try:
            rules = (
                run.rules
                if run.rules is not None
                else rules_from_extension(run.task.extension_config)
            )
        except SamplingConfigError as exc:
            self._fail(run, f"its sampling rules are unusable: {exc}")
            return
        watched = 0
        try:
            for process_id, pid in run.pids.items():
                process = self.resolve(process_id)
                if process is None or not self.hostfs.is_running(pid):
                    log.warning("task %s: process %d is gone", run.task.task_id, pid)
                    continue
                self.network.watch(run.task.task_id, pid, process_id, process.entity, rules)
                watched += 1
        except (BPFLoadError, KernelHeadersNotFound) as exc:
            self.network.unwatch_task(run.task.task_id)
            self._fail(run, str(exc).splitlines()[0])
            return
        if not watched:
            self.network.unwatch_task(run.task.task_id)  # frees a program loaded for it
            self._fail(run, "none of its processes is running")
            return
        run.state = "running"
        run.started_ms = self._now_ms()
        self.counters["tasks_started"] += 1
        log.info(
            "task %s: network profiling started (%d sampling rule(s))",
            run.task.task_id,
            len(rules),
        )

    def _fail(self, run: TaskRun, reason: str) -> None:
        log.error("task %s cannot run: %s", run.task.task_id, reason)
        self.counters["tasks_failed"] += 1
        run.state = "done"
        self._forget(run)

    def _stop(self, run: TaskRun) -> None:
        """Leave the filter now; the next flush drains and uploads the rest."""
        if run.state == "running" and run.is_network:
            assert self.network is not None
            self.network.unwatch_task(run.task.task_id)
            run.state = "stopping"
        elif run.state == "running":
            for pid in set(run.pids.values()):
                self.engines.release(run.profile_type, pid)
            run.state = "stopping"
        elif run.state == "waiting":
            run.state = "done"
            self._forget(run)

    def _forget(self, run: TaskRun) -> None:
        task = run.task
        self._forget_expired()
        self._finished[(task.task_id, task.identity, task.start_time_ms)] = task.end_time_ms
        if self._runs.get(task.identity) is run:
            del self._runs[task.identity]
        for process_id in run.pids:
            self.uploader.forget_task(task.task_id, process_id)
        in_use = {pid for r in self._runs.values() for pid in r.pids.values()}
        for pid in set(run.pids.values()) - in_use:
            self.symbolizer.forget(pid)

    def _forget_expired(self) -> None:
        """Drop what is remembered of tasks past their end time: ``_accept`` skips such a
        task anyway."""
        now = self._now_ms()
        self._finished = {k: end for k, end in self._finished.items() if end >= now}
        self._unsupported_logged = {
            k: end for k, end in self._unsupported_logged.items() if end >= now
        }

    # -- draining and uploading ---------------------------------------------
    def flush(self) -> None:
        """Drain every engine once, hand each task its processes' stacks, upload."""
        with self._lock:
            self._collect_locked()
        self.uploader.flush()

    def _collect_locked(self) -> None:
        """Drain every engine once into the uploader's queue; finish stopping tasks."""
        runs = [r for r in self._runs.values() if r.state in ("running", "stopping")]
        by_type: dict[ProfileType, list[TaskRun]] = defaultdict(list)
        for run in runs:
            if not run.is_network:  # the network monitor reports on its own timer
                by_type[run.profile_type].append(run)
        for profile_type, engine in self.engines.loaded().items():
            drained = engine.drain()
            for name, n in reported_counters(drained.counters).items():
                log.warning("%s: %d %s in the last interval", profile_type.value, n, name)
            of_type = by_type.get(profile_type, [])
            processes = {pid: run.names[pid] for run in of_type for pid in run.pids.values()}
            profile = profile_from_drain(
                drained, profile_type, engine.config.frequency, self.symbolizer, processes
            )
            for name, n in profile.counters.items():
                self.counters[name] += n
            by_process = profile.split_by_process()
            for run in of_type:
                self._upload_run(run, by_process)
            if profile_type is ProfileType.OFF_CPU:
                engine.forget_exited_threads()
        for run in runs:
            self._after_flush(run)

    def _upload_run(self, run: TaskRun, by_process: dict[int, Profile]) -> None:
        for process_id, pid in run.pids.items():
            profile = by_process.get(pid)
            if profile is not None:
                self.uploader.add(run.task.task_id, process_id, run.started_ms, profile)

    def _after_flush(self, run: TaskRun) -> None:
        if run.state == "stopping":
            run.state = "done"
            self._forget(run)
            log.info("task %s: finished", run.task.task_id)
            return
        alive = [pid for pid in set(run.pids.values()) if self.hostfs.is_running(pid)]
        for pid in [] if run.is_network else alive:
            with contextlib.suppress(ProcessGone):  # it may exit right now
                self.symbolizer.prepare(pid)  # pick up new libraries while it lives
        if not alive:
            log.info("task %s: every process exited; stopping early", run.task.task_id)
            self._stop(run)

    def stop_all(self, timeout: float | None = None) -> bool:
        """Shutdown: stop every task, queue what the kernel counted for upload and free
        the BPF programs, within ``timeout`` seconds (None: no limit). Uploading is the
        caller's. False when that did not finish in time: a thread was still compiling,
        and then the programs are freed by that thread when its compile ends.
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float:
            return -1 if deadline is None else max(0.0, deadline - time.monotonic())

        self.engines.stop_loading()  # a task starting now fails instead of compiling
        if not self._lock.acquire(timeout=left()):
            log.warning("tasks could not be stopped in time: a BPF program is still compiling")
            self.engines.close(timeout=0)  # the compiling thread frees them when it is done
            return False
        try:
            for run in list(self._runs.values()):
                self._stop(run)
            self._collect_locked()
            # still under the lock: a flush waiting for it then finds no engine to drain
            return self.engines.close(timeout=None if deadline is None else left())
        finally:
            self._lock.release()

    # -- inspection ----------------------------------------------------------
    def runs(self) -> list[TaskRun]:
        with self._lock:
            return list(self._runs.values())
