"""Ask the backend for profiling tasks every check interval (spec 4.4)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from rover.tasks.manager import TaskManager
from rover.tasks.model import TASK_COMMAND, TaskCommandError, parse_task_command

log = logging.getLogger(__name__)


class Command(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def args(self) -> Mapping[str, str]: ...


class TaskSource(Protocol):
    def query_tasks(self, agent_id: str, latest_update_time: int) -> Sequence[Command]: ...


class TaskPoller:
    """Keeps ``latestUpdateTime`` and feeds parsed tasks to the manager.

    The time advances to the newest update time among commands that parsed
    and whose processes are all known here; a malformed command or one naming
    unknown processes does not advance it, so it is asked for again. Unlike
    Rover, a task naming a process not registered yet (its report's reply still
    on the way) also holds the time below its own update time, so a newer task in
    the same reply cannot make the backend stop sending it; it starts once the
    process is known. Whatever goes wrong parsing one command skips that command
    only, never the reply.
    """

    def __init__(self, source: TaskSource, agent_id: str, manager: TaskManager) -> None:
        self.source = source
        self.agent_id = agent_id
        self.manager = manager
        self.latest_update_time = 0
        self.malformed = 0
        self.ignored = 0

    def poll(self) -> None:
        """One query; failures of the backend propagate to the caller's loop."""
        commands = self.source.query_tasks(self.agent_id, self.latest_update_time)
        newest = self.latest_update_time
        waiting: list[int] = []  # update times of tasks whose processes are not known yet
        for command in commands:
            if command.name != TASK_COMMAND:
                self.ignored += 1
                log.debug("ignoring command %s", command.name)
                continue
            try:
                task = parse_task_command(command.args)
            except TaskCommandError as exc:
                self.malformed += 1
                log.warning("malformed profiling task command skipped: %s", exc)
                continue
            except Exception as exc:  # noqa: BLE001 - one bad command must never cost the reply
                self.malformed += 1
                log.warning(
                    "malformed profiling task command skipped: %s: %s", type(exc).__name__, exc
                )
                continue
            if self.manager.apply(task):
                newest = max(newest, task.update_time_ms)
            elif self.manager.clock() * 1000 <= task.end_time_ms:
                waiting.append(task.update_time_ms)
        if waiting:
            newest = min(newest, min(waiting) - 1)  # the backend sends tasks updated after it
        self.latest_update_time = max(self.latest_update_time, newest)
