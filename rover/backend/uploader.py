"""Buffers profiling data and ships it with ``collectProfilingData`` (spec 4.6).

:meth:`ProfileUploader.add` turns one interval's Profile into messages and
queues them; :meth:`ProfileUploader.flush` sends everything queued in one
stream. If the backend cannot be reached the messages stay queued and go out
with a later flush: nothing is lost unless the queue exceeds ``buffer_size``
messages, when the oldest are dropped (counted in ``dropped``, logged once per
episode). Delivery is at least once: a stream that breaks half way is sent
again whole, and the backend may then count its first part twice. Until its
stream is answered a message counts as not delivered (:meth:`undelivered`), so
a stream the backend accepted but never answered is not reported as delivered.

Task metadata: each add() is one batch with its own ``currentTime`` (the time
the data was taken, kept strictly increasing per run) and the first message
of a batch in a stream carries the metadata, so metadata opens every task and
is repeated whenever the task changes. Keeping batches apart matters after an
outage: the OAP keys a record by (schedule, stack ids, currentTime), so two
intervals sent with one currentTime would overwrite each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from rover.backend.client import BackendClient
from rover.backend.errors import BackendUnavailable
from rover.backend.profile_messages import StackIds, profile_to_messages
from rover.backend.proto.ebpf.profiling import Profile_pb2
from rover.profile import Profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _RunKey:
    """One profiling run: the OAP's schedule (taskId, processId, profilingStartTime)."""

    task_id: str
    process_id: str
    profiling_start_ms: int


@dataclass
class _Run:
    stack_ids: StackIds = field(default_factory=StackIds)
    last_current_ms: int = 0


@dataclass(frozen=True)
class _Pending:
    run: _RunKey
    current_ms: int
    data: Profile_pb2.EBPFProfilingData


@dataclass(frozen=True)
class Undelivered:
    """Data not (yet) acknowledged by the backend: queued or in a stream not answered."""

    messages: int = 0
    samples: int = 0  # on-CPU dumpCount
    switches: int = 0  # off-CPU switchCount

    def __str__(self) -> str:
        return (
            f"{self.messages} messages ({self.samples} on-CPU samples, "
            f"{self.switches} off-CPU switches)"
        )


class ProfileUploader:
    """Queue of profiling data for the backend, bounded to ``buffer_size`` messages.

    Thread-safe: add() may run while a flush is sending. Counters:
    ``uploaded`` (messages delivered), ``upload_failures`` (failed flushes),
    ``dropped`` (messages discarded because the queue was full).
    """

    def __init__(self, client: BackendClient, buffer_size: int) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        self.client = client
        self.buffer_size = buffer_size
        self.uploaded = 0
        self.upload_failures = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._pending: deque[_Pending] = deque()
        self._in_flight: list[_Pending] = []  # the stream being sent, until it is answered
        self._runs: dict[_RunKey, _Run] = {}
        self._dropping = False

    @property
    def pending(self) -> int:
        """Messages waiting for delivery."""
        with self._lock:
            return len(self._pending)

    def add(self, task_id: str, process_id: str, profiling_start_ms: int, profile: Profile) -> int:
        """Queue one interval of ``profile`` for the run; returns the number of messages queued."""
        key = _RunKey(task_id, process_id, profiling_start_ms)
        with self._lock:
            run = self._runs.setdefault(key, _Run())
            messages = profile_to_messages(profile, run.stack_ids)
            if not messages:
                return 0
            run.last_current_ms = max(int(time.time() * 1000), run.last_current_ms + 1)
            self._pending.extend(_Pending(key, run.last_current_ms, m) for m in messages)
            self._trim_locked()
        return len(messages)

    def forget_task(self, task_id: str, process_id: str | None = None) -> None:
        """Drop the stack-id tables of a finished task (queued data is still delivered)."""
        with self._lock:
            for key in [k for k in self._runs if k.task_id == task_id]:
                if process_id is None or key.process_id == process_id:
                    del self._runs[key]

    def undelivered(self) -> Undelivered:
        """What the backend has not acknowledged: the queue and the stream in flight."""
        with self._lock:
            messages = [*self._pending, *self._in_flight]
        samples = sum(m.data.onCPU.dumpCount for m in messages if m.data.HasField("onCPU"))
        switches = sum(m.data.offCPU.switchCount for m in messages if m.data.HasField("offCPU"))
        return Undelivered(len(messages), samples, switches)

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued in one stream; False (data kept) if the backend failed.

        ``timeout`` bounds the whole call, waiting for another flush included (a final
        flush at shutdown); None waits for the other flush and uses the client's deadline.
        """
        if not self._flush_lock.acquire(timeout=-1 if timeout is None else timeout):
            return False  # another flush is still sending (the backend may be hung)
        started = time.monotonic()
        try:
            with self._lock:
                batch = list(self._pending)
                self._pending.clear()
                self._in_flight = batch
            if not batch:
                return True
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
            try:
                self.client.upload(_with_metadata(batch), timeout=left)
            except BackendUnavailable as e:
                with self._lock:
                    self.upload_failures += 1
                    self._in_flight = []
                    self._pending.extendleft(reversed(batch))
                    self._trim_locked()
                log.debug("upload of %d messages failed, kept for later: %s", len(batch), e)
                return False
            with self._lock:
                self._in_flight = []
                self.uploaded += len(batch)
                self._dropping = False
            return True
        finally:
            self._flush_lock.release()

    def _trim_locked(self) -> None:
        excess = len(self._pending) - self.buffer_size
        if excess <= 0:
            return
        for _ in range(excess):
            self._pending.popleft()
        self.dropped += excess
        if not self._dropping:
            self._dropping = True
            log.warning(
                "profiling upload buffer is full (%d messages, backend %s unreachable?): "
                "dropping the oldest data until an upload succeeds",
                self.buffer_size,
                self.client.config.addr,
            )


def _with_metadata(batch: list[_Pending]) -> list[Profile_pb2.EBPFProfilingData]:
    """The stream: each batch's first message carries its task metadata."""
    stream = []
    previous: tuple[_RunKey, int] | None = None
    for pending in batch:
        marker = (pending.run, pending.current_ms)
        if marker == previous:
            stream.append(pending.data)
            continue
        previous = marker
        message = Profile_pb2.EBPFProfilingData()
        message.CopyFrom(pending.data)  # the queued one stays bare for a retry
        message.task.CopyFrom(
            Profile_pb2.EBPFProfilingTaskMetadata(
                taskId=pending.run.task_id,
                processId=pending.run.process_id,
                profilingStartTime=pending.run.profiling_start_ms,
                currentTime=pending.current_ms,
            )
        )
        stream.append(message)
    return stream
