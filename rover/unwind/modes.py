"""Choosing and building an engine for a profiling type and an unwinding mode.

``frame_pointer``: the kernel walks frame pointers (``rover.bpf.engine``).
``eh_frame``: user space unwinds with the files' CFI (``rover.unwind.engine``).
``auto``: :class:`AutoUnwindEngine` routes each process to one of the two by
what its code was built with (``rover.unwind.frame_pointers``); the choice is
logged per process, and each engine is loaded the first time a process needs it.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

from rover.bpf.engine import DrainResult, EngineConfig, ProfilerEngine
from rover.bpf.headers import KernelHeaders
from rover.hostfs import HostFS
from rover.profile import ProfileType
from rover.unwind.engine import DwarfProfilerEngine, UnwindSettings
from rover.unwind.frame_pointers import EH_FRAME, FRAME_POINTER, UnwindChoice, choose_unwind

log = logging.getLogger(__name__)

AUTO = "auto"
UNWIND_MODES = (AUTO, FRAME_POINTER, EH_FRAME)


def make_engine(
    profile_type: ProfileType,
    headers: KernelHeaders,
    config: EngineConfig,
    unwind: str = FRAME_POINTER,
    settings: UnwindSettings | None = None,
    hostfs: HostFS | None = None,
):
    """An engine for ``unwind`` (one of UNWIND_MODES); raises what loading raises."""
    if unwind == FRAME_POINTER:
        return ProfilerEngine(profile_type, headers, config)
    if unwind == EH_FRAME:
        return DwarfProfilerEngine(profile_type, headers, config, settings, hostfs)
    if unwind == AUTO:
        return AutoUnwindEngine(profile_type, headers, config, settings, hostfs)
    raise ValueError(f"unknown unwinding mode {unwind!r}; expected one of {UNWIND_MODES}")


class AutoUnwindEngine:
    """The engine surface over a frame-pointer and an eh_frame engine, chosen per process."""

    unwind = AUTO

    def __init__(
        self,
        profile_type: ProfileType,
        headers: KernelHeaders,
        config: EngineConfig | None = None,
        settings: UnwindSettings | None = None,
        hostfs: HostFS | None = None,
        choose=choose_unwind,
    ) -> None:
        self.type = profile_type
        self.config = config or EngineConfig()
        self._headers = headers
        self._settings = settings
        self._hostfs = hostfs or HostFS()
        self._choose = choose
        self._engines: dict[str, ProfilerEngine | DwarfProfilerEngine] = {}
        self._mode_of: dict[int, str] = {}
        self.choices: dict[int, UnwindChoice] = {}
        self._planned: dict[int, UnwindChoice] = {}
        self._lock = threading.Lock()

    def _engine(self, mode: str):
        engine = self._engines.get(mode)
        if engine is None:
            engine = make_engine(
                self.type, self._headers, self.config, mode, self._settings, self._hostfs
            )
            self._engines[mode] = engine
        return engine

    def prepare(self, pids: list[int]) -> None:
        """Choose the mode of ``pids`` and load their engines now (raises what loading
        raises), so that adding them later compiles nothing."""
        for pid in pids:
            choice = self._planned[pid] = self._choose(self._hostfs, pid)
            with self._lock:
                self._engine(choice.mode)

    def add_pid(self, pid: int) -> None:
        choice = self._planned.pop(pid, None) or self._choose(self._hostfs, pid)
        with self._lock:
            engine = self._engine(choice.mode)
            previous = self._mode_of.get(pid)
            if previous is not None and previous != choice.mode:
                self._engines[previous].remove_pid(pid)
            engine.add_pid(pid)
            self._mode_of[pid] = choice.mode
            self.choices[pid] = choice
        log.info("process %d: %s unwinding (%s)", pid, choice.mode, choice.reason)

    def remove_pid(self, pid: int) -> None:
        with self._lock:
            mode = self._mode_of.pop(pid, None)
            if mode is not None:
                self._engines[mode].remove_pid(pid)

    @property
    def pids(self) -> frozenset[int]:
        return frozenset(self._mode_of)

    def loaded_modes(self) -> list[str]:
        with self._lock:
            return sorted(self._engines)

    def events(self) -> int:
        with self._lock:
            return sum(e.events() for e in self._engines.values())

    def drain(self) -> DrainResult:
        with self._lock:
            engines = list(self._engines.values())
        result = DrainResult()
        counters: Counter[str] = Counter()
        for engine in engines:
            drained = engine.drain()
            result.stacks.extend(drained.stacks)
            counters.update(drained.counters)
        result.counters = dict(counters)
        return result

    def forget_exited_threads(self) -> int:
        with self._lock:
            engines = list(self._engines.values())
        return sum(e.forget_exited_threads() for e in engines)

    @property
    def stacks_drained(self) -> int:
        return sum(e.stacks_drained for e in list(self._engines.values()))

    @property
    def last_counts_fill(self) -> float:
        return max((e.last_counts_fill for e in list(self._engines.values())), default=0.0)

    @property
    def closed(self) -> bool:
        return all(e.closed for e in list(self._engines.values()))

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
