"""What the continuous profiler needs from the rest of the agent, in plain types.

The backend adapters (``rover.backend.continuous``) and the task manager
implement these; tests pass fakes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from rover.continuous.http_series import HttpEvent
from rover.continuous.meters import MeterSample
from rover.continuous.policy import ServicePolicy
from rover.continuous.trigger import Trigger
from rover.network.model import SamplingRule
from rover.process.model import DiscoveredProcess


class PolicySource(Protocol):
    def fetch(self, known: dict[str, str]) -> list[ServicePolicy] | None:
        """Changed policies for these services (service -> cached uuid, "" if none).

        ``[]`` = nothing changed; ``None`` = the reply was unusable (already
        logged), keep what is cached. Raises when the backend cannot be reached.
        """
        ...


class TriggerSink(Protocol):
    def report(self, trigger: Trigger) -> str:
        """Report a trigger; returns the backend's task id, raises on any failure."""
        ...


class TaskStarter(Protocol):
    def start(
        self,
        task_id: str,
        target_type: str,
        processes: list[tuple[str, DiscoveredProcess]],
        duration_s: int,
        rules: list[SamplingRule] | None = None,
    ) -> None:
        """Run the task now on these (backend process id, process) pairs and
        upload its data like any other task; ``rules``: a NETWORK task's sampling."""
        ...


class MeterSink(Protocol):
    def send(self, samples: list[MeterSample]) -> None:
        """Deliver one round of meters; raises on failure."""
        ...


class ProcessSource(Protocol):
    def registered(self) -> dict[str, DiscoveredProcess]:
        """Every process the backend knows: backend process id -> process."""
        ...


class HttpEventSource(Protocol):
    """Served HTTP requests of the processes with an HTTP check item (spec 8.13)."""

    def watch(self, pids: Iterable[int]) -> None:
        """Observe exactly these processes from now on (none: release everything)."""
        ...

    def drain(self) -> list[HttpEvent]:
        """The requests completed since the last call, oldest first."""
        ...
