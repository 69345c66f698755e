"""Turn raw drained stacks (addresses) into profile samples (names)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from rover.bpf.engine import RawStack
from rover.profile import Frame, Profile, ProfileType
from rover.symbols import Symbolizer
from rover.unwind.markers import is_marker_frame, split_marker

log = logging.getLogger(__name__)


def add_raw_stacks(
    profile: Profile,
    raw: Iterable[RawStack],
    symbolizer: Symbolizer,
    pids: frozenset[int] | set[int],
) -> None:
    """Symbolize the stacks of ``pids`` and add them to ``profile``.

    Root first: the user stack (outermost caller first), then the kernel
    stack on top of it, as flame graphs draw a syscall above its caller. A user
    stack unwound past its copied window (eh_frame mode) starts with a
    ``[truncated]`` frame (the engine counts those as ``unwind_truncated``); one
    interrupted by a signal handler on an alternate signal stack, whose own stack
    was not copied, starts with ``[sigaltstack]`` (``unwind_sigaltstack``).
    """
    period = profile.period_ns
    for stack in raw:
        if stack.tgid not in pids:
            continue
        addresses, marker = split_marker(stack.user)
        user = symbolizer.user_frames(stack.tgid, addresses) if addresses else []
        if marker is not None:
            user.append(marker)
        kernel = symbolizer.kernel_frames(stack.kernel) if stack.kernel else []
        frames: tuple[Frame, ...] = (*reversed(user), *reversed(kernel))
        if not frames:
            profile.count("stacks_empty")
            continue
        if profile.type is ProfileType.ON_CPU:
            samples = stack.values[0]
            values = [samples, samples * period]
        else:
            values = list(stack.values)
        profile.add(stack.tgid, frames, values)
        unsymbolized = sum(1 for f in frames if not f.symbolized and not is_marker_frame(f))
        profile.count("unsymbolized_frames", unsymbolized)
