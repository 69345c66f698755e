"""Does a process's code keep frame pointers? The cheap test behind ``unwind: auto``.

A function built with frame pointers starts with ``push %rbp; mov %rsp,%rbp``
(after ``endbr64`` with CET). Function starts in ``.text`` (not ``_start``) are
read from ``.eh_frame_hdr``'s sorted table (one small read, no CFI decoding)
and up to 256 of them, evenly spread, are checked; at least half must have
that prologue. Go binaries keep frame pointers by the Go ABI (their prologue
checks the stack bound first), so they are recognised by their sections.

Checked: the main executable, and the biggest library by executable size when
it is bigger than the executable (where a launcher's code really lives),
except the C runtime (libc, ld.so, libm...), which every process maps: in a
binary built with frame pointers a libc leaf loses only its direct caller.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import defaultdict
from dataclasses import dataclass
from typing import BinaryIO

from rover.bpf.engine import CFI as EH_FRAME
from rover.bpf.engine import FRAME_POINTER, UnwindChoice
from rover.hostfs import HostFS
from rover.symbols.elf_file import ElfImage
from rover.symbols.mapped_files import open_mapped_file
from rover.symbols.maps import Mapping, MappingKind, parse_maps

log = logging.getLogger(__name__)

_GO_SECTIONS = (".go.buildinfo", ".gopclntab", ".note.go.buildid")
_SAMPLE = 256
_THRESHOLD = 0.5
_ENDBR64 = b"\xf3\x0f\x1e\xfa"
_FP_PROLOGUES = (b"\x55\x48\x89\xe5", b"\x55\x48\x8b\xec")  # push %rbp; mov %rsp,%rbp
_C_RUNTIME = ("libc.so", "libc-", "ld-linux", "libm.so", "libpthread", "libdl.so", "librt.so")


@dataclass(frozen=True)
class FilePointers:
    """What one file says: True/False keeps frame pointers, None unknown."""

    keeps: bool | None
    reason: str


def choose_unwind(hostfs: HostFS, pid: int) -> UnwindChoice:
    """The unwinding mode for ``pid``; eh_frame whenever its code lacks frame pointers."""
    try:
        with open(hostfs.proc_path(pid, "exe"), "rb") as stream:
            main = file_keeps_frame_pointers(stream)
    except OSError as exc:
        return UnwindChoice(EH_FRAME, f"executable unreadable ({exc.strerror or exc})")
    if main.keeps is False:
        return UnwindChoice(EH_FRAME, f"executable: {main.reason}")
    library = _biggest_library(hostfs, pid)
    if library is not None:
        name, result = library
        if result.keeps is False:
            return UnwindChoice(EH_FRAME, f"{name}: {result.reason}")
    if main.keeps is None:
        return UnwindChoice(EH_FRAME, f"executable: {main.reason}")
    return UnwindChoice(FRAME_POINTER, f"executable: {main.reason}")


def file_keeps_frame_pointers(stream: BinaryIO) -> FilePointers:
    try:
        image = ElfImage(stream)
    except Exception as exc:  # noqa: BLE001 - untrusted input
        return FilePointers(None, f"not a readable ELF file ({exc!r})")
    if any(image.section(name) for name in _GO_SECTIONS):
        return FilePointers(True, "Go binary (frame pointers by ABI)")
    header = image.section(".eh_frame_hdr")
    if header is None:
        return FilePointers(None, "no .eh_frame_hdr to find functions")
    try:
        starts = _function_starts(image.read(header.offset, header.size), header.addr)
    except (ValueError, struct.error, Exception) as exc:  # noqa: BLE001
        return FilePointers(None, f"unreadable .eh_frame_hdr ({exc})")
    # Only compiled functions: not PLT stubs, nor _start (hand-written, at e_entry).
    text = image.section(".text")
    if text is not None:
        starts = [a for a in starts if text.addr <= a < text.addr + text.size and a != image.entry]
    if not starts:
        return FilePointers(None, "no functions in .eh_frame_hdr")
    step = max(1, len(starts) // _SAMPLE)
    checked = with_fp = 0
    for vaddr in starts[::step][:_SAMPLE]:
        code = _read_code(image, vaddr, 8)
        if code is None:
            continue
        checked += 1
        if code.startswith(_ENDBR64):
            code = code[4:]
        with_fp += code[:4] in _FP_PROLOGUES
    if not checked:
        return FilePointers(None, "function code not found in the file")
    share = with_fp / checked
    keeps = share >= _THRESHOLD
    return FilePointers(keeps, f"{with_fp}/{checked} sampled functions set up a frame pointer")


def _function_starts(data: bytes, hdr_addr: int) -> list[int]:
    """Initial locations from ``.eh_frame_hdr``'s binary search table (datarel sdata4)."""
    version, ptr_enc, count_enc, table_enc = data[0], data[1], data[2], data[3]
    if version != 1 or table_enc != 0x3B or count_enc != 0x03:
        raise ValueError(f"unsupported encodings {ptr_enc:#x}/{count_enc:#x}/{table_enc:#x}")
    pos = 4 + (4 if ptr_enc & 0x0F in (0x03, 0x0B) else 8)
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    count = min(count, (len(data) - pos) // 8)
    pairs = struct.unpack_from(f"<{2 * count}i", data, pos)
    return sorted(hdr_addr + pairs[i] for i in range(0, 2 * count, 2))


def _read_code(image: ElfImage, vaddr: int, size: int) -> bytes | None:
    for segment in image.segments:
        if segment.executable and segment.vaddr <= vaddr < segment.vaddr + segment.filesz:
            try:
                return image.read(segment.offset + vaddr - segment.vaddr, size)
            except Exception:  # noqa: BLE001
                return None
    return None


def _biggest_library(hostfs: HostFS, pid: int) -> tuple[str, FilePointers] | None:
    try:
        mappings = parse_maps(hostfs.read_text(pid, "maps"))
        exe = os.readlink(hostfs.proc_path(pid, "exe"))
    except Exception:  # noqa: BLE001 - a vanished process: the executable decides
        return None
    sizes: dict[str, int] = defaultdict(int)
    first: dict[str, Mapping] = {}
    for m in mappings:
        if m.kind is MappingKind.FILE:
            sizes[m.path] += m.end - m.start
            first.setdefault(m.path, m)
    main_size = sizes.get(exe.removesuffix(" (deleted)"), 0)
    candidates = [
        (size, path)
        for path, size in sizes.items()
        if path != exe and not os.path.basename(path).startswith(_C_RUNTIME)
    ]
    if not candidates:
        return None
    size, path = max(candidates)
    if size <= main_size:
        return None
    try:
        stream, _ = open_mapped_file(hostfs, pid, first[path])
        with stream:
            return os.path.basename(path), file_keeps_frame_pointers(stream)
    except OSError:
        return None
