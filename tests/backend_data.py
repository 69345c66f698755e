"""Reading what the test backend received, as the OAP would interpret it."""

from __future__ import annotations

from dataclasses import dataclass

KERNEL, USER = 0, 1  # EBPFProfilingStackType


@dataclass
class Sample:
    task_id: str
    process_id: str
    start_ms: int
    user: list[str]  # leaf first, as on the wire
    kernel: list[str]
    dump_count: int = 0
    switch_count: int = 0
    duration_ns: int = 0


def samples(fake_oap) -> list[Sample]:  # noqa: ANN001
    """Every EBPFProfilingData with the task metadata the OAP would apply to it.

    Within a stream the latest metadata applies to the messages after it (spec 4.6).
    A message the agent re-sent (a stream that failed after the backend had
    stored it) is counted once: the OAP keys a record by its schedule (task,
    process, profiling start), stack ids and currentTime, so a resend overwrites.
    """
    result = []
    seen = set()
    for stream in fake_oap.requests("collectProfilingData"):
        meta = None
        for message in stream:
            if message.HasField("task"):
                meta = message.task
            assert meta is not None, "a stream must start with task metadata"
            body = message.onCPU if message.HasField("onCPU") else message.offCPU
            record = (
                meta.taskId, meta.processId, meta.profilingStartTime, meta.currentTime,
                tuple((s.stackType, s.stackId) for s in body.stacks),
            )  # fmt: skip
            if record in seen:
                continue
            seen.add(record)
            stacks = {s.stackType: list(s.stackSymbols) for s in body.stacks}
            sample = Sample(
                meta.taskId, meta.processId, meta.profilingStartTime,
                stacks.get(USER, []), stacks.get(KERNEL, []),
            )  # fmt: skip
            if message.HasField("onCPU"):
                sample.dump_count = message.onCPU.dumpCount
            else:
                sample.switch_count = message.offCPU.switchCount
                sample.duration_ns = message.offCPU.duration
            result.append(sample)
    return result


def of_task(fake_oap, task_id: str) -> list[Sample]:  # noqa: ANN001
    return [s for s in samples(fake_oap) if s.task_id == task_id]


def reported(fake_oap, service: str):  # noqa: ANN001, ANN201
    """Processes the backend holds for ``service``."""
    return [p for p in fake_oap.processes.values() if p.entity.serviceName == service]
