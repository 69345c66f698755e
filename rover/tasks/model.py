"""Profiling tasks as the backend sends them (spec 3.2), parsed and validated."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

TASK_COMMAND = "EBPFProfilingTaskQuery"
SUPPORTED_TARGETS = ("ON_CPU", "OFF_CPU")
KNOWN_TARGETS = ("ON_CPU", "OFF_CPU", "NETWORK")
REQUIRED_ARGS = (
    "TaskId",
    "ProcessId",
    "TaskUpdateTime",
    "TriggerType",
    "TargetType",
    "TaskStartTime",
    "ExtensionConfigJSON",
)


class TaskCommandError(ValueError):
    """A task command that cannot be used; the message says which argument and why."""


@dataclass(frozen=True)
class ProfilingTask:
    task_id: str
    process_ids: tuple[str, ...]  # sorted
    update_time_ms: int
    trigger_type: str
    target_type: str
    start_time_ms: int
    duration_s: int
    extension_config: object = None  # parsed ExtensionConfigJSON (NETWORK only)

    @property
    def identity(self) -> tuple[tuple[str, ...], str, str]:
        """Tasks with equal identity replace each other (spec 4.5)."""
        return (self.process_ids, self.target_type, self.trigger_type)

    def same_task(self, other: ProfilingTask) -> bool:
        return (
            self.task_id == other.task_id
            and self.identity == other.identity
            and self.start_time_ms == other.start_time_ms
        )

    @property
    def end_time_ms(self) -> int:
        """When the task would end if it started on time (for expiry)."""
        return self.start_time_ms + self.duration_s * 1000

    @property
    def supported(self) -> bool:
        return self.target_type in SUPPORTED_TARGETS


def parse_task_command(args: Mapping[str, str]) -> ProfilingTask:
    """Parse the arguments of one ``EBPFProfilingTaskQuery`` command.

    Arguments are looked up by key (the OAP adds ``SerialNumber`` and may add
    others); every key Rover requires must be present and well-formed.
    """
    missing = [k for k in REQUIRED_ARGS if k not in args]
    if missing:
        raise TaskCommandError(f"missing argument(s) {', '.join(missing)}")
    task_id = args["TaskId"].strip()
    if not task_id:
        raise TaskCommandError("empty TaskId")
    process_ids = tuple(sorted(p.strip() for p in args["ProcessId"].split(",") if p.strip()))
    if not process_ids:
        raise TaskCommandError(f"task {task_id}: empty ProcessId")
    trigger = args["TriggerType"].strip()
    if trigger != "FIXED_TIME":
        raise TaskCommandError(f"task {task_id}: unsupported TriggerType {trigger!r}")
    target = args["TargetType"].strip()
    if target not in KNOWN_TARGETS:
        raise TaskCommandError(f"task {task_id}: unknown TargetType {target!r}")
    if "FixedTriggerDuration" not in args:
        raise TaskCommandError(f"task {task_id}: missing argument FixedTriggerDuration")
    duration = _integer(args, "FixedTriggerDuration", task_id)
    if duration <= 0:
        raise TaskCommandError(f"task {task_id}: FixedTriggerDuration must be positive")
    try:
        extension = json.loads(args["ExtensionConfigJSON"])
    except (json.JSONDecodeError, TypeError) as exc:
        raise TaskCommandError(f"task {task_id}: ExtensionConfigJSON is not JSON ({exc})") from None
    return ProfilingTask(
        task_id=task_id,
        process_ids=process_ids,
        update_time_ms=_integer(args, "TaskUpdateTime", task_id),
        trigger_type=trigger,
        target_type=target,
        start_time_ms=_integer(args, "TaskStartTime", task_id),
        duration_s=duration,
        extension_config=extension,
    )


def _integer(args: Mapping[str, str], key: str, task_id: str) -> int:
    text = args[key].strip()
    try:
        return int(text)
    except ValueError:
        raise TaskCommandError(f"task {task_id}: {key} is not an integer: {text!r}") from None
