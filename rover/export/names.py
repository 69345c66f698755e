"""Frame and process names as exports show them."""

from __future__ import annotations

import re

from rover.profile import Frame, Profile

# Folded stacks use ';' between frames and one line per stack.
_FOLDED_UNSAFE = re.compile(r"[;\x00-\x1f\x7f]")
# XML 1.0 forbids these even when escaped.
_XML_INVALID = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

UNKNOWN = "[unknown]"
KERNEL_SUFFIX = "_[k]"


def process_name(profile: Profile, pid: int) -> str:
    """The process's name, or its pid when the name is not known."""
    info = profile.processes.get(pid)
    return info.name if info is not None and info.name else str(pid)


def folded_name(name: str) -> str:
    """``name`` made safe for one folded-stacks field (no ';', no line breaks)."""
    cleaned = _FOLDED_UNSAFE.sub(lambda m: ":" if m.group() == ";" else " ", name)
    return cleaned if cleaned.strip() else UNKNOWN


def folded_frame(frame: Frame) -> str:
    """A frame as bcc's ``profile -f`` prints it: kernel frames end in ``_[k]``."""
    name = folded_name(frame.name)
    return name + KERNEL_SUFFIX if frame.is_kernel else name


def xml_text(name: str) -> str:
    """``name`` with characters XML cannot carry replaced (escaping is separate)."""
    return _XML_INVALID.sub("\ufffd", name)
