"""Profiling tasks as the backend sends them (spec 3.2), parsed and validated.

Everything in a command comes from the network, so every value is bounded: integers
fit the protocol's int64, a duration is at most :data:`MAX_DURATION_S` and a start
time at most :data:`MAX_START_AHEAD_S` ahead. A command outside them is malformed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

TASK_COMMAND = "EBPFProfilingTaskQuery"
SUPPORTED_TARGETS = ("ON_CPU", "OFF_CPU")
NETWORK = "NETWORK"  # run by the network monitor when the agent has one
KNOWN_TARGETS = ("ON_CPU", "OFF_CPU", NETWORK)
REQUIRED_ARGS = (
    "TaskId",
    "ProcessId",
    "TaskUpdateTime",
    "TriggerType",
    "TargetType",
    "TaskStartTime",
    "ExtensionConfigJSON",
)
MAX_DURATION_S = 24 * 3600  # a task longer than a day is a mistake (the OAP UI offers minutes)
MAX_START_AHEAD_S = 7 * 24 * 3600  # scheduling a week ahead is plausible; 50 years is not
_INT64 = (-(2**63), 2**63 - 1)  # the protocol's times are int64 (latestUpdateTime echoes one)


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


def parse_task_command(args: Mapping[str, str], now_ms: int | None = None) -> ProfilingTask:
    """Parse the arguments of one ``EBPFProfilingTaskQuery`` command.

    Arguments are looked up by key (the OAP adds ``SerialNumber`` and may add
    others); every key Rover requires must be present, well-formed and within
    bounds (``now_ms``, default the clock, is what "ahead" is measured from).
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
    if duration > MAX_DURATION_S:
        raise TaskCommandError(
            f"task {task_id}: FixedTriggerDuration {duration} s is longer than the maximum "
            f"of {MAX_DURATION_S} s"
        )
    start_ms = _integer(args, "TaskStartTime", task_id)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if start_ms > now_ms + MAX_START_AHEAD_S * 1000:
        raise TaskCommandError(
            f"task {task_id}: TaskStartTime {start_ms} is more than {MAX_START_AHEAD_S // 86400} "
            "days ahead"
        )
    return ProfilingTask(
        task_id=task_id,
        process_ids=process_ids,
        update_time_ms=_integer(args, "TaskUpdateTime", task_id),
        trigger_type=trigger,
        target_type=target,
        start_time_ms=start_ms,
        duration_s=duration,
        extension_config=_json(args["ExtensionConfigJSON"], task_id),
    )


def _integer(args: Mapping[str, str], key: str, task_id: str) -> int:
    text = args[key].strip()
    if len(text) > 20:  # int() of a huge digit string is slow (and refused past 4300 digits)
        raise TaskCommandError(f"task {task_id}: {key} is not a 64-bit integer: {text[:24]!r}...")
    try:
        number = int(text)
    except ValueError:
        raise TaskCommandError(f"task {task_id}: {key} is not an integer: {text!r}") from None
    if not _INT64[0] <= number <= _INT64[1]:
        raise TaskCommandError(f"task {task_id}: {key} is not a 64-bit integer: {text!r}")
    return number


def _json(text: str, task_id: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or a bad escape
        raise TaskCommandError(f"task {task_id}: ExtensionConfigJSON is not JSON ({exc})") from None
    except RecursionError:  # deeper than the interpreter's stack; no schema nests that deep
        raise TaskCommandError(f"task {task_id}: ExtensionConfigJSON nests too deeply") from None
