"""ProfileUploader: message layout of spec 4.6, buffering while the backend is down, drops."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
from fake_oap import FakeOAP, fake_oap_fixture  # noqa: F401 - fixture

from rover.backend import BackendClient, ProfileUploader
from rover.backend.proto.ebpf.profiling import Profile_pb2
from rover.config import BackendConfig
from rover.profile import Frame, FrameKind, Profile, ProfileType

KERNEL = Profile_pb2.PROCESS_KERNEL_SPACE
USER = Profile_pb2.PROCESS_USER_SPACE
START_MS = 1_700_000_000_000


def stack(user: str = "", kernel: str = "") -> tuple[Frame, ...]:
    """Root-first frames from "a;b;c" strings: user frames, then kernel frames."""
    users = tuple(Frame(n, FrameKind.USER, "app") for n in user.split(";") if n)
    kernels = tuple(Frame(n, FrameKind.KERNEL, "[kernel]") for n in kernel.split(";") if n)
    return users + kernels


def on_cpu(*samples: tuple[tuple[Frame, ...], int], pid: int = 42) -> Profile:
    profile = Profile.new(ProfileType.ON_CPU)
    for frames, count in samples:
        profile.add(pid, frames, [count, count * 10_000_000])
    return profile


@pytest.fixture
def client(fake_oap: FakeOAP) -> Iterator[BackendClient]:
    with BackendClient(BackendConfig(addr=fake_oap.addr, check_period=0.1)) as c:
        yield c


def stacks_of(message: Profile_pb2.EBPFProfilingData) -> list[tuple[int, list[str]]]:
    profiling = getattr(message, message.WhichOneof("profiling"))
    return [(s.stackType, list(s.stackSymbols)) for s in profiling.stacks]


def test_on_cpu_message_layout(fake_oap: FakeOAP, client: BackendClient) -> None:
    uploader = ProfileUploader(client, buffer_size=100)
    profile = on_cpu(
        (stack("main;work;hot", "entry_SYSCALL_64;do_syscall_64;sys_read"), 5),
        (stack("main;idle"), 3),
        (stack(kernel="ret_from_fork;kthread"), 2),
        ((), 7),  # no frames at all: dropped
        (stack("main;never"), 0),  # nothing counted: dropped
    )
    before_ms = int(time.time() * 1000)
    assert uploader.add("task-1", "proc-1", START_MS, profile) == 3
    assert uploader.flush()

    first, second, third = fake_oap.profiling_data()
    assert first.HasField("task")
    assert first.task.taskId == "task-1"
    assert first.task.processId == "proc-1"
    assert first.task.profilingStartTime == START_MS
    assert before_ms <= first.task.currentTime <= int(time.time() * 1000)
    assert not second.HasField("task") and not third.HasField("task")

    # kernel entry first, then user; each leaf first
    assert stacks_of(first) == [
        (KERNEL, ["sys_read", "do_syscall_64", "entry_SYSCALL_64"]),
        (USER, ["hot", "work", "main"]),
    ]
    assert first.onCPU.dumpCount == 5
    assert stacks_of(second) == [(USER, ["idle", "main"])]  # no kernel frames: entry omitted
    assert second.onCPU.dumpCount == 3
    assert stacks_of(third) == [(KERNEL, ["kthread", "ret_from_fork"])]

    ids = [s.stackId for m in (first, second, third) for s in m.onCPU.stacks]
    assert len(set(ids)) == len(ids) and all(i > 0 for i in ids)
    assert (uploader.uploaded, uploader.upload_failures, uploader.dropped) == (3, 0, 0)


def test_off_cpu_counts_switches_and_duration(fake_oap: FakeOAP, client: BackendClient) -> None:
    uploader = ProfileUploader(client, buffer_size=100)
    profile = Profile.new(ProfileType.OFF_CPU)
    profile.add(7, stack("main;read_file", "schedule;io_schedule"), [4, 9_000_000_000])
    uploader.add("t", "p", START_MS, profile)
    uploader.flush()
    (message,) = fake_oap.profiling_data()
    assert message.WhichOneof("profiling") == "offCPU"
    assert message.offCPU.switchCount == 4
    assert message.offCPU.duration == 9_000_000_000
    assert stacks_of(message) == [
        (KERNEL, ["io_schedule", "schedule"]),
        (USER, ["read_file", "main"]),
    ]


def test_names_are_kept_and_identical_stacks_merged(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    uploader = ProfileUploader(client, buffer_size=100)
    unsymbolized = (Frame("main"), Frame("libfoo.so+0x1a2b", module="libfoo.so", symbolized=False))
    profile = on_cpu((unsymbolized, 2))
    profile.add(43, unsymbolized, [3, 0])  # another pid, same symbols: one message
    profile.add(42, (Frame("main"), Frame("")), [1, 0])  # a frame without any name
    uploader.add("t", "p", START_MS, profile)
    uploader.flush()
    merged, missing = fake_oap.profiling_data()
    assert stacks_of(merged) == [(USER, ["libfoo.so+0x1a2b", "main"])]
    assert merged.onCPU.dumpCount == 5
    assert stacks_of(missing) == [(USER, ["[MISSING]", "main"])]


def _tasks_in_stream(messages: list[Profile_pb2.EBPFProfilingData]) -> list[str]:
    return [m.task.taskId if m.HasField("task") else "-" for m in messages]


def test_metadata_opens_each_task_and_repeats_on_change(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    uploader = ProfileUploader(client, buffer_size=100)
    two = on_cpu((stack("main;a"), 1), (stack("main;b"), 1))
    uploader.add("A", "pa", START_MS, two)
    uploader.add("B", "pb", START_MS, two)
    uploader.add("A", "pa", START_MS, two)  # a later interval of A
    uploader.flush()
    (stream,) = fake_oap.requests("collectProfilingData")
    assert _tasks_in_stream(stream) == ["A", "-", "B", "-", "A", "-"]
    assert stream[4].task.currentTime > stream[0].task.currentTime  # never reused within a run
    assert stream[2].task.processId == "pb"


def test_stack_ids_are_stable_per_run_across_flushes(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    uploader = ProfileUploader(client, buffer_size=100)
    profile = on_cpu((stack("main;a", "k1"), 1), (stack("main;b"), 1))
    uploader.add("A", "p", START_MS, profile)
    uploader.flush()
    later = on_cpu((stack("main;c"), 1), (stack("main;b"), 1), (stack("main;a", "k1"), 1))
    uploader.add("A", "p", START_MS, later)
    uploader.flush()

    first, second = fake_oap.requests("collectProfilingData")

    def ids(stream: list) -> dict[tuple[int, tuple[str, ...]], int]:
        return {
            (s.stackType, tuple(s.stackSymbols)): s.stackId for m in stream for s in m.onCPU.stacks
        }

    before, after = ids(first), ids(second)
    assert all(after[key] == value for key, value in before.items())
    assert after[(USER, ("c", "main"))] not in before.values()
    assert second[0].HasField("task")  # every stream opens with metadata


def test_nothing_to_flush_makes_no_call(fake_oap: FakeOAP, client: BackendClient) -> None:
    uploader = ProfileUploader(client, buffer_size=10)
    assert uploader.add("t", "p", START_MS, Profile.new(ProfileType.ON_CPU)) == 0
    assert uploader.flush()
    assert fake_oap.calls == []


def _wait_connected(client: BackendClient, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not client.connected:
        assert time.monotonic() < deadline, "client did not reconnect"
        time.sleep(0.02)


def test_data_is_kept_while_the_backend_is_down_and_delivered_later(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    uploader = ProfileUploader(client, buffer_size=1000)
    uploader.add("A", "p", START_MS, on_cpu((stack("main;a"), 1)))
    assert uploader.flush()
    fake_oap.stop()

    for n in range(1, 4):  # three intervals collected during the outage
        uploader.add("A", "p", START_MS, on_cpu((stack("main;a"), n), (stack("main;b"), n)))
        assert not uploader.flush()
    assert (uploader.pending, uploader.upload_failures, uploader.dropped) == (6, 3, 0)

    fake_oap.start()
    _wait_connected(client)
    assert uploader.flush()
    assert uploader.pending == 0
    assert (uploader.uploaded, uploader.dropped) == (7, 0)

    _, stream = fake_oap.requests("collectProfilingData")
    assert [m.onCPU.dumpCount for m in stream] == [1, 1, 2, 2, 3, 3]
    assert _tasks_in_stream(stream) == ["A", "-", "A", "-", "A", "-"]
    times = [m.task.currentTime for m in stream if m.HasField("task")]
    assert times == sorted(set(times))  # one distinct upload time per interval


def test_full_buffer_drops_the_oldest_and_logs_once(
    fake_oap: FakeOAP, client: BackendClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rover.backend.uploader")
    uploader = ProfileUploader(client, buffer_size=5)
    fake_oap.stop()
    for n in range(1, 5):  # 4 intervals x 2 messages = 8 > 5
        uploader.add("A", "p", START_MS, on_cpu((stack("main;a"), n), (stack("main;b"), n)))
        uploader.flush()
    assert uploader.dropped == 3
    assert uploader.pending == 5
    full = [r for r in caplog.records if "buffer is full" in r.getMessage()]
    assert len(full) == 1

    fake_oap.start()
    _wait_connected(client)
    assert uploader.flush()
    (stream,) = fake_oap.requests("collectProfilingData")
    # interval 2 lost its first message; its remaining one still opens with metadata
    assert [m.onCPU.dumpCount for m in stream] == [2, 3, 3, 4, 4]
    assert _tasks_in_stream(stream) == ["A", "A", "-", "A", "-"]
    assert (uploader.uploaded, uploader.dropped) == (5, 3)


def test_rejects_a_zero_buffer(client: BackendClient) -> None:
    with pytest.raises(ValueError, match="buffer_size"):
        ProfileUploader(client, buffer_size=0)


def test_a_stream_the_backend_never_answers_counts_as_undelivered(
    fake_oap: FakeOAP, client: BackendClient
) -> None:
    """In flight is not delivered: until the backend answers, the stream's messages and
    samples are reported as undelivered, and a final flush is bounded by its timeout."""
    uploader = ProfileUploader(client, buffer_size=100)
    uploader.add("task-1", "proc-1", START_MS, on_cpu((stack("main;a"), 5), (stack("main;b"), 2)))
    fake_oap.hang("collectProfilingData")
    hung = threading.Thread(target=uploader.flush)  # the flush loop, stuck in its stream
    hung.start()
    fake_oap.wait_for(lambda o: o.calls_of("collectProfilingData"), what="the hung stream")
    assert uploader.pending == 0  # taken out of the queue for the stream...
    lost = uploader.undelivered()  # ...but not delivered
    assert (lost.messages, lost.samples, lost.switches) == (2, 7, 0)

    started = time.monotonic()
    assert not uploader.flush(timeout=0.5)  # waits for the stuck flush no longer than that
    assert time.monotonic() - started < 2

    fake_oap.stop()  # the hung call fails; the data goes back to the queue
    hung.join(10)
    assert uploader.pending == 2 and uploader.undelivered().samples == 7
    assert uploader.uploaded == 0


def test_a_final_flush_gives_up_at_its_timeout(fake_oap: FakeOAP, client: BackendClient) -> None:
    uploader = ProfileUploader(client, buffer_size=100)
    uploader.add("task-1", "proc-1", START_MS, on_cpu((stack("main;a"), 3)))
    fake_oap.hang()
    started = time.monotonic()
    assert not uploader.flush(timeout=1.0)  # client's deadline: 10 s
    assert 0.9 < time.monotonic() - started < 3
    assert uploader.undelivered().messages == 1
