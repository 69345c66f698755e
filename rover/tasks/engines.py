"""One loaded BPF program per profiling type, shared by every task.

Pids are reference counted: two tasks profiling the same process share its
filter entry, and the entry goes when the last of them stops. ``unwind`` picks
how user stacks are unwound (``rover.unwind.modes``): ``frame_pointer`` (the
default), ``eh_frame`` or ``auto``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from rover.bpf.engine import EngineConfig, ProfilerEngine
from rover.bpf.headers import KernelHeaders
from rover.hostfs import HostFS
from rover.profile import ProfileType
from rover.unwind.engine import UnwindSettings
from rover.unwind.modes import UNWIND_MODES, make_engine

log = logging.getLogger(__name__)


class EngineSet:
    """Creates engines lazily (a compile takes a second or two) and owns their pid filters."""

    def __init__(
        self,
        find_headers: Callable[[], KernelHeaders],
        config: EngineConfig,
        unwind: str = "frame_pointer",
        unwind_settings: UnwindSettings | None = None,
        hostfs: HostFS | None = None,
    ) -> None:
        if unwind not in UNWIND_MODES:
            raise ValueError(f"unknown unwinding mode {unwind!r}; expected one of {UNWIND_MODES}")
        self._find_headers = find_headers
        self._headers: KernelHeaders | None = None
        self.config = config
        self.unwind = unwind
        self._unwind_settings = unwind_settings
        self._hostfs = hostfs
        self._engines: dict[ProfileType, ProfilerEngine] = {}
        self._refs: dict[ProfileType, Counter[int]] = {}
        self._lock = threading.Lock()

    def engine(self, profile_type: ProfileType) -> ProfilerEngine:
        """The engine for ``profile_type``, loading it on first use (raises on failure)."""
        with self._lock:
            engine = self._engines.get(profile_type)
            if engine is None:
                if self._headers is None:
                    self._headers = self._find_headers()
                engine = make_engine(
                    profile_type,
                    self._headers,
                    self.config,
                    self.unwind,
                    self._unwind_settings,
                    self._hostfs,
                )
                log.info(
                    "%s engine (%s unwinding) loaded with %s",
                    profile_type.value,
                    self.unwind,
                    self._headers.describe(),
                )
                self._engines[profile_type] = engine
                self._refs[profile_type] = Counter()
            return engine

    def acquire(self, profile_type: ProfileType, pid: int) -> None:
        engine = self.engine(profile_type)
        with self._lock:
            refs = self._refs[profile_type]
            if refs[pid] == 0:
                engine.add_pid(pid)
            refs[pid] += 1

    def release(self, profile_type: ProfileType, pid: int) -> None:
        with self._lock:
            refs = self._refs.get(profile_type)
            if not refs or refs[pid] == 0:
                return
            refs[pid] -= 1
            if refs[pid] == 0:
                del refs[pid]
                self._engines[profile_type].remove_pid(pid)

    def loaded(self) -> dict[ProfileType, ProfilerEngine]:
        with self._lock:
            return dict(self._engines)

    def close(self) -> None:
        with self._lock:
            for engine in self._engines.values():
                engine.close()
            self._engines.clear()
            self._refs.clear()
