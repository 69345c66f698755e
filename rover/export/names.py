"""Frame and process names as exports show them."""

from __future__ import annotations

import re

from rover.profile import Frame, FrameKind, Profile

# Folded stacks use ';' between frames and one line per stack.
_FOLDED_UNSAFE = re.compile(r"[;\x00-\x1f\x7f]")
# XML 1.0 forbids these even when escaped.
_XML_INVALID = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

# How the symbolizer names an address no symbol covers: module+0xoffset.
_UNSYMBOLIZED = re.compile(r"^(?P<module>.+)\+0x[0-9a-fA-F]+$")

UNKNOWN = "[unknown]"
KERNEL_SUFFIX = "_[k]"
KERNEL_MODULE = "[kernel]"  # the symbolizer's module of core kernel frames
KERNEL_MAPPING = "[kernel.kallsyms]"  # perf's (and so pprof users') name for the kernel image


def process_name(profile: Profile, pid: int) -> str:
    """The process's name, or its pid when the name is not known."""
    info = profile.processes.get(pid)
    return info.name if info is not None and info.name else str(pid)


def process_label(profile: Profile, pid: int) -> str:
    """``name (pid)``; just the name when the pid is not a real one (read from a file)."""
    name = process_name(profile, pid)
    return f"{name} ({pid})" if pid > 0 and name != str(pid) else name


def frame_from_name(name: str, kind: FrameKind = FrameKind.USER, module: str = "") -> Frame:
    """A frame read back from a file that kept only names (and maybe the module).

    ``module+0xoffset`` names (and ``[unknown]``) were unsymbolized addresses.
    """
    unsymbolized = _UNSYMBOLIZED.match(name)
    if unsymbolized and not module:
        module = unsymbolized.group("module")
    if kind is FrameKind.KERNEL and not module:
        module = KERNEL_MODULE
    symbolized = unsymbolized is None and name != UNKNOWN
    return Frame(name, kind, module, symbolized)


def frame_from_folded(field: str) -> Frame:
    """The frame of one folded-stacks field: ``_[k]`` marks kernel frames."""
    if field.endswith(KERNEL_SUFFIX) and len(field) > len(KERNEL_SUFFIX):
        return frame_from_name(field[: -len(KERNEL_SUFFIX)], FrameKind.KERNEL)
    return frame_from_name(field)


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
