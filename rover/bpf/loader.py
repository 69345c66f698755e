"""Compile and load one bpf/*.c program with bcc (in the compile helper process).

bcc compiles are not safe in parallel threads of one process, so every compile
takes one process-wide lock (:data:`COMPILE_LOCK`, also held while a child process
compiles for us: one compile at a time keeps the memory peak to one compiler's).
Compiler warnings go to a temporary file and are shown only when the compile
fails, so a person running `rover profile` sees a clean terminal.

After a compile, the C heap's free memory is handed back to the system: LLVM
frees ~100 MB of parse and codegen state, and without a trim that memory stays
in the arena of the thread that compiled, so a later compile on another thread
(tasks start on the scheduler's thread, continuous triggers on theirs) adds its
own peak on top instead of reusing it.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from rover._data import data_dir
from rover.bpf.headers import KernelHeaders
from rover.heap import release_free_heap

COMPILE_LOCK = threading.RLock()  # re-entered by an in-process compile under the helper lock


class BPFLoadError(Exception):
    """The program could not be compiled or loaded; the message says why."""


def bpf_source_dir() -> Path:
    """Where bpf/*.c live: ``ROVER_BPF_DIR``, else the installed package's copy or the
    repository's bpf/ (see rover._data)."""
    env = os.environ.get("ROVER_BPF_DIR")
    if env:
        return Path(env)
    return data_dir("bpf")


def compile_with_bcc(name: str, headers: KernelHeaders, defines: dict[str, int]):  # noqa: ANN201
    """Compile ``bpf/<name>.c`` and return the loaded ``bcc.BPF`` object (in the compile
    helper: ``rover.bpf.program.load_program`` is what the rest of rover calls)."""
    try:
        from bcc import BPF
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise BPFLoadError(
            "the bcc Python module is missing: install Debian's python3-bpfcc "
            "(not the unrelated PyPI package 'bcc')"
        ) from exc
    src_dir = bpf_source_dir()
    source = src_dir / f"{name}.c"
    if not source.is_file():
        raise BPFLoadError(f"BPF source {source} not found (set ROVER_BPF_DIR)")
    cflags = list(headers.bcc_cflags())
    cflags += [f"-D{k}={v}" for k, v in sorted(defines.items())]
    with COMPILE_LOCK, _environment(headers.bcc_environment()), _captured_stderr() as err:
        try:
            return BPF(text=inline_local_includes(source).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception on compile/load errors
            detail = _last_lines(err())
            raise BPFLoadError(
                f"could not load {name}.c with {headers.describe()}: {exc}"
                + (f"\n{detail}" if detail else "")
            ) from exc
        finally:
            release_free_heap()


def inline_local_includes(source: Path, seen: set[Path] | None = None) -> str:
    """The program text with every ``#include "local.h"`` replaced by the file itself.

    bcc rewrites map methods (``stats.lookup(...)``) only in the main file, so
    shared code in our own headers must become part of it. Nested local
    includes are followed; each header is inlined once (``#pragma once``).
    """
    seen = set() if seen is None else seen
    out = []
    for line in source.read_text().splitlines():
        m = re.match(r'\s*#\s*include\s+"([^"]+)"', line)
        local = source.parent / m.group(1) if m else None
        if local is not None and local.is_file():
            if local.resolve() not in seen:
                seen.add(local.resolve())
                out.append(inline_local_includes(local, seen).replace("#pragma once", ""))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Callable[[], str]]:
    """Redirect fd 2 (where clang writes) to a temporary file for the duration; yields a
    function returning what was written. The file is unlinked as soon as it is open, so a
    process killed mid-compile (SIGKILL, a crash in LLVM) leaves nothing in /tmp."""
    fd, path = tempfile.mkstemp(prefix="rover-bcc-", suffix=".log")
    os.unlink(path)  # fd keeps it; /proc/PID/fd/2 shows "/tmp/rover-bcc-....log (deleted)"
    saved = os.dup(2)
    try:
        os.dup2(fd, 2)
        yield lambda: _read_from_start(fd)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def _read_from_start(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _last_lines(text: str, n: int = 15) -> str:
    lines = [ln for ln in text.splitlines() if "error" in ln.lower()] or text.splitlines()
    return "\n".join(lines[-n:])
