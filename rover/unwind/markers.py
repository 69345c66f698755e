"""A marker address in unwound stacks: the stack went on past the copied window.

It is never a user address (x86-64 user space ends at 0x00007fffffffffff), so
``rover.tasks.stacks`` can turn it into a ``[truncated]`` frame before the
symbolizer sees the addresses.
"""

from __future__ import annotations

from rover.profile import Frame, FrameKind

TRUNCATED = 0xFFFF_FFFF_FFFF_FFF0
TRUNCATED_FRAME = Frame("[truncated]", FrameKind.USER, "", symbolized=False)


def split_truncated(addresses: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
    """``addresses`` without a trailing marker, and whether it had one."""
    if addresses and addresses[-1] == TRUNCATED:
        return addresses[:-1], True
    return addresses, False
