"""Marker addresses that end unwound stacks, and the frames they stand for.

``TRUNCATED``: the stack went on past the copied window. ``SIGALTSTACK``: a
signal handler ran on an alternate signal stack, and the interrupted code's
stack was not copied. Neither is ever a user address (x86-64 user space ends
at 0x00007fffffffffff), so ``rover.tasks.stacks`` can turn them into
``[truncated]`` / ``[sigaltstack]`` frames before the symbolizer sees the
addresses.
"""

from __future__ import annotations

from rover.profile import Frame, FrameKind

TRUNCATED = 0xFFFF_FFFF_FFFF_FFF0
SIGALTSTACK = 0xFFFF_FFFF_FFFF_FFF1
TRUNCATED_FRAME = Frame("[truncated]", FrameKind.USER, "", symbolized=False)
SIGALTSTACK_FRAME = Frame("[sigaltstack]", FrameKind.USER, "", symbolized=False)
MARKER_FRAMES = {TRUNCATED: TRUNCATED_FRAME, SIGALTSTACK: SIGALTSTACK_FRAME}


def split_marker(addresses: tuple[int, ...]) -> tuple[tuple[int, ...], Frame | None]:
    """``addresses`` without a trailing marker, and the marker's frame (None: none)."""
    if addresses:
        frame = MARKER_FRAMES.get(addresses[-1])
        if frame is not None:
            return addresses[:-1], frame
    return addresses, None


def is_marker_frame(frame: Frame) -> bool:
    """Whether ``frame`` is one of the marker frames (not an unsymbolized address)."""
    return frame is TRUNCATED_FRAME or frame is SIGALTSTACK_FRAME
