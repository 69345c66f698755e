"""The kernel's CFI walk and the user-space decoder agree, stack for stack.

A thread blocked in a system call is frozen: the off-CPU program walked its stack
(in the kernel, over the rows ``kernel_rows`` made) when it switched out, and
ptrace then reads the very same registers and stack. The user-space unwinder
(``rover.unwind.unwinder``: the decoder's CFI table, DWARF expressions evaluated
in full) unwinds that snapshot; both must give the same addresses.
"""

from __future__ import annotations

import ctypes as ct
import os
import time
from pathlib import Path

import pytest

from rover.bpf.engine import EngineConfig
from rover.bpf.headers import HeaderSearch
from rover.profile import ProfileType
from rover.symbols import Symbolizer
from rover.unwind.markers import SIGALTSTACK
from rover.unwind.modes import make_engine
from rover.unwind.process_space import ProcessSpaces
from rover.unwind.unwinder import Unwinder

pytestmark = pytest.mark.bpf

_PTRACE_GETREGS, _PTRACE_ATTACH, _PTRACE_DETACH = 12, 16, 17
_WALL = 0x40000000
# struct user_regs_struct (x86-64), and where each DWARF register is in it.
_USER_REGS = (
    *("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx"),
    *("rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base"),
    *("gs_base", "ds", "es", "fs", "gs"),
)
_DWARF = (
    *("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11"),
    *("r12", "r13", "r14", "r15", "rip"),
)
_STACK_BYTES = 256 << 10

_libc = ct.CDLL(None, use_errno=True)
_libc.ptrace.restype = ct.c_long
_libc.ptrace.argtypes = [ct.c_long, ct.c_int, ct.c_void_p, ct.c_void_p]


@pytest.fixture(scope="module")
def engine():
    engine = make_engine(ProfileType.OFF_CPU, HeaderSearch().find(), EngineConfig(), "eh_frame")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def unwind_expr(workloads) -> Path:
    return workloads.build("unwind_expr")


def frozen(pid: int, tid: int) -> tuple[dict[str, int], bytes]:
    """The registers and the stack (from rsp up) of thread ``tid``, stopped by ptrace."""
    if _libc.ptrace(_PTRACE_ATTACH, tid, None, None) != 0:
        raise OSError(ct.get_errno(), "PTRACE_ATTACH")
    try:
        os.waitpid(tid, _WALL)
        raw = (ct.c_ulonglong * len(_USER_REGS))()
        if _libc.ptrace(_PTRACE_GETREGS, tid, None, ct.addressof(raw)) != 0:
            raise OSError(ct.get_errno(), "PTRACE_GETREGS")
        regs = dict(zip(_USER_REGS, raw, strict=True))
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(regs["rsp"])
            stack = b""
            while len(stack) < _STACK_BYTES:  # up to the end of the stack's mapping
                try:
                    chunk = mem.read(4096 - (regs["rsp"] + len(stack)) % 4096)
                except OSError:
                    break
                if not chunk:
                    break
                stack += chunk
        return regs, stack
    finally:
        _libc.ptrace(_PTRACE_DETACH, tid, None, None)


def walked_by_the_kernel(engine, tid: int) -> tuple[int, ...]:
    start = engine._program.map("start")[ct.c_uint32(tid)]
    assert start.user_hash, "the walk stored no stack"
    stack = engine._program.map("user_stacks")[ct.c_uint64(start.user_hash)]
    return tuple(stack.ips[: stack.len])


def compare(engine, pid: int, tid: int | None = None) -> tuple[tuple[int, ...], list[str]]:
    """Both walks of ``tid`` (default: the main thread), frozen; asserts they agree and
    returns the kernel's addresses and their names."""
    tid = tid or pid
    regs, stack = frozen(pid, tid)  # the stop is a switch-out: walked again, same state
    time.sleep(0.05)
    kernel = walked_by_the_kernel(engine, tid)
    spaces = ProcessSpaces()
    registers = [regs[name] for name in _DWARF]
    reference = Unwinder(spaces).unwind(
        pid, regs["rip"], regs["rsp"], regs["rbp"], stack, registers=registers
    )
    expected = reference.addresses
    if expected[-1:] == (SIGALTSTACK,):  # the snapshot ends there; the kernel goes on
        expected = expected[:-1]
        kernel_part = kernel[: len(expected)]
    else:
        kernel_part = kernel
    symbolizer = Symbolizer()
    names = [f.name for f in symbolizer.user_frames(pid, kernel)]
    assert kernel_part == expected, (names, [f.name for f in symbolizer.user_frames(pid, expected)])
    return kernel, names


def blocked(process, engine) -> None:
    """``process`` added to the engine and blocked (its "ready" printed)."""
    engine.add_pid(process.pid)
    assert engine.settle(30)


def test_c_chain_into_libc(engine, spawn, workloads):
    process = spawn([workloads.build("chain_c"), "sleep", "1", "100000"])
    blocked(process, engine)
    process.send_line("go")
    time.sleep(0.3)  # in nanosleep, 100 s long
    _, names = compare(engine, process.pid)
    assert names[-3:] == ["__libc_start_call_main", "__libc_start_main", "_start"]
    assert [n for n in names if n in ("main", "chain_a", "chain_b")] == [
        "chain_b",
        "chain_a",
        "main",
    ]


def test_two_paths_with_equal_registers(engine, spawn, workloads):
    process = spawn([workloads.build("repeat_c"), "400", "4", "200"])
    blocked(process, engine)
    process.send_line("go")
    time.sleep(0.1)
    _, names = compare(engine, process.pid)
    assert "wait_leaf" in names and "main" in names


@pytest.mark.parametrize("mode", ["drap_block", "altstack_block"])
def test_realigned_frames_and_signal_frames(engine, spawn, unwind_expr, tmp_path, mode):
    """DW_OP_breg6 -8; DW_OP_deref CFAs (a DRAP frame), and a handler on a sigaltstack."""
    process = spawn([unwind_expr, tmp_path / "unused", mode])
    blocked(process, engine)
    kernel, names = compare(engine, process.pid)
    assert names[-1] == "_start"
    # (expr_take calls expr_wait last: a tail call, so it has no frame of its own)
    if mode == "drap_block":
        chain = ["expr_wait", "drap_frame", "expr_outer", "main"]
        assert [n for n in names if n in chain] == chain, names
    else:  # through the signal frame on the alternate stack, into the interrupted loop
        chain = ["expr_wait", "alt_burn", "alt_handler", "alt_spin", "main"]
        assert [n for n in names if n in chain] == chain, names
        # __restore_rt (no symbol in Debian's libc) between the handler and alt_spin
        assert names.index("alt_spin") == names.index("alt_handler") + 2, names


def test_python_interpreter_in_select(engine, spawn):
    """Debian's python3.11: libpython code built without frame pointers."""
    script = "import select; print('ready', flush=True); select.select([], [], [], 1000)"
    process = spawn(["/usr/bin/python3", "-c", script])
    blocked(process, engine)
    time.sleep(0.1)
    _, names = compare(engine, process.pid)
    assert "_PyEval_EvalFrameDefault" in names and names[-1] == "_start", names


def test_nginx_worker_in_epoll_wait(engine, tmp_path):
    from nginx_server import nginx

    with nginx(tmp_path) as (server, _port):
        worker = server.pid
        engine.add_pid(worker)
        assert engine.settle(30)
        time.sleep(0.2)
        _, names = compare(engine, worker)
    assert "ngx_process_events_and_timers" in names and names[-1] == "_start", names
