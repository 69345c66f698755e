"""Marker addresses that end unwound stacks, and the frames they stand for.

``TRUNCATED``: the stack went deeper than the frame limit. ``LOADING``: the walk
reached a file whose unwind rows were still being loaded into the kernel (the
stack is counted with the frames found so far). ``SIGALTSTACK`` (the user-space
reference unwinder only): a signal handler ran on an alternate signal stack whose
interrupted stack it was not given. None is ever a user address (x86-64 user
space ends at 0x00007fffffffffff), so ``rover.tasks.stacks`` turns them into
frames before the symbolizer sees the addresses. The kernel's values come from
``bpf/cfi_walk.h``.
"""

from __future__ import annotations

from rover.bpf.contract import header
from rover.profile import Frame, FrameKind

_DEFINES = header("cfi_walk.h").defines
TRUNCATED: int = _DEFINES["MARKER_TRUNCATED"]
LOADING: int = _DEFINES["MARKER_LOADING"]
SIGALTSTACK = 0xFFFF_FFFF_FFFF_FFF1
TRUNCATED_FRAME = Frame("[truncated]", FrameKind.USER, "", symbolized=False)
LOADING_FRAME = Frame("[unwind tables loading]", FrameKind.USER, "", symbolized=False)
SIGALTSTACK_FRAME = Frame("[sigaltstack]", FrameKind.USER, "", symbolized=False)
MARKER_FRAMES = {
    TRUNCATED: TRUNCATED_FRAME,
    LOADING: LOADING_FRAME,
    SIGALTSTACK: SIGALTSTACK_FRAME,
}


def split_marker(addresses: tuple[int, ...]) -> tuple[tuple[int, ...], Frame | None]:
    """``addresses`` without a trailing marker, and the marker's frame (None: none)."""
    if addresses:
        frame = MARKER_FRAMES.get(addresses[-1])
        if frame is not None:
            return addresses[:-1], frame
    return addresses, None


def is_marker_frame(frame: Frame) -> bool:
    """Whether ``frame`` is one of the marker frames (not an unsymbolized address)."""
    return any(frame is marker for marker in MARKER_FRAMES.values())
