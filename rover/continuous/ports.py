"""What the continuous profiler needs from the rest of the agent, in plain types.

The backend adapters (``rover.backend.continuous``) and the task manager
implement these; tests pass fakes.
"""

from __future__ import annotations

from typing import Protocol

from rover.continuous.meters import MeterSample
from rover.continuous.policy import ServicePolicy
from rover.continuous.trigger import Trigger
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
    ) -> None:
        """Run the task now on these (backend process id, process) pairs and
        upload its data like any other task."""
        ...


class MeterSink(Protocol):
    def send(self, samples: list[MeterSample]) -> None:
        """Deliver one round of meters; raises on failure."""
        ...


class ProcessSource(Protocol):
    def registered(self) -> dict[str, DiscoveredProcess]:
        """Every process the backend knows: backend process id -> process."""
        ...
