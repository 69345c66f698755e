"""A per-interval Profile -> EBPFProfilingData messages (spec 4.6), without task metadata.

One message per distinct (kernel stack, user stack) pair; counts of pairs that
symbolize alike (several pids, or frames differing only in module) are summed,
because the OAP stores one record per (schedule, stack id pair, upload time)
and a second message with the same pair would overwrite the first.

Stack ids: the kernel's stack-map ids do not reach this layer, so each distinct
symbol list gets an id from :class:`StackIds`, kept per profiling run
(task, process, start time) so the same stack has the same id in every flush.
Kernel and user stacks share one counter starting at 1: the OAP joins the ids
of the entries present with ``_``, so a kernel-only and a user-only stack must
not both be ``"3"``.

Symbols: frames keep the names symbolization gave them, including
``module+0xoffset`` for addresses no symbol covers; that says more than the
reference agent's ``[MISSING]``, which is only used for a frame with no name.
"""

from __future__ import annotations

from rover.backend.proto.ebpf.profiling import Profile_pb2
from rover.profile import Frame, Profile, ProfileType

MISSING_SYMBOL = "[MISSING]"
INT32_MAX = 2**31 - 1

KERNEL = Profile_pb2.PROCESS_KERNEL_SPACE
USER = Profile_pb2.PROCESS_USER_SPACE

Symbols = tuple[str, ...]


class StackIds:
    """Stable int32 ids for the distinct stacks of one profiling run."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, Symbols], int] = {}

    def id_of(self, stack_type: int, symbols: Symbols) -> int:
        key = (stack_type, symbols)
        stack_id = self._ids.get(key)
        if stack_id is None:
            # wraps only after 2**31 distinct stacks in one run, far past any real run
            stack_id = self._ids[key] = len(self._ids) % INT32_MAX + 1
        return stack_id

    def __len__(self) -> int:
        return len(self._ids)


def leaf_first_symbols(frames: tuple[Frame, ...]) -> tuple[Symbols, Symbols]:
    """(kernel symbols, user symbols), each leaf first, from root-first frames."""
    kernel = tuple(f.name or MISSING_SYMBOL for f in reversed(frames) if f.is_kernel)
    user = tuple(f.name or MISSING_SYMBOL for f in reversed(frames) if not f.is_kernel)
    return kernel, user


def profile_to_messages(
    profile: Profile, stack_ids: StackIds
) -> list[Profile_pb2.EBPFProfilingData]:
    """One message per distinct stack pair with a non-zero count; no ``task`` set."""
    on_cpu = profile.type is ProfileType.ON_CPU
    counted = (
        [profile.value_index("samples")]
        if on_cpu
        else [
            profile.value_index("switches"),
            profile.value_index("off_cpu"),
        ]
    )
    totals: dict[tuple[Symbols, Symbols], list[int]] = {}
    for key, values in profile:
        pair = leaf_first_symbols(key.frames)
        if not pair[0] and not pair[1]:
            continue  # nothing to show for it
        total = totals.setdefault(pair, [0] * len(counted))
        for i, index in enumerate(counted):
            total[i] += values[index]

    messages = []
    for (kernel, user), total in totals.items():
        if all(v <= 0 for v in total):
            continue
        stacks = []
        if kernel:
            stacks.append(_stack(stack_ids, KERNEL, kernel))
        if user:
            stacks.append(_stack(stack_ids, USER, user))
        if on_cpu:
            profiling = Profile_pb2.EBPFOnCPUProfiling(
                stacks=stacks, dumpCount=min(total[0], INT32_MAX)
            )
            messages.append(Profile_pb2.EBPFProfilingData(onCPU=profiling))
        else:
            off_cpu = Profile_pb2.EBPFOffCPUProfiling(
                stacks=stacks, switchCount=min(total[0], INT32_MAX), duration=total[1]
            )
            messages.append(Profile_pb2.EBPFProfilingData(offCPU=off_cpu))
    return messages


def _stack(
    stack_ids: StackIds, stack_type: Profile_pb2.EBPFProfilingStackType, symbols: Symbols
) -> Profile_pb2.EBPFProfilingStackMetadata:
    return Profile_pb2.EBPFProfilingStackMetadata(
        stackType=stack_type, stackId=stack_ids.id_of(stack_type, symbols), stackSymbols=symbols
    )
