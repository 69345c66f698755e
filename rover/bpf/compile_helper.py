"""The compile helper: compile one BPF program with bcc, hand its descriptors over, exit.

Run by ``rover.bpf.program`` as ``python -m rover.bpf.compile_helper FD`` with one
end of a Unix socketpair as FD. It reads the :class:`ProgramSpec` and the kernel
headers (a pickle, from its own parent only), compiles, loads the entry function,
the spec's other functions and the tail-call function (the kernel's verifier may
refuse that one: the reason goes back, the program still works without it), and
sends one message: the map and function names, their file descriptors attached
(SCM_RIGHTS). Then it exits
at once, without running bcc's or LLVM's teardown; the kernel keeps every object
the parent received a descriptor for. It dies with its parent (PR_SET_PDEATHSIG),
so an agent killed mid-compile leaves no compiler running.
"""

from __future__ import annotations

import ctypes as ct
import os
import pickle
import signal
import socket
import sys
from typing import Any

from rover.bpf.headers import KernelHeaders
from rover.bpf.loader import BPFLoadError, compile_with_bcc
from rover.bpf.program import Handover, ProgramSpec

_PR_SET_PDEATHSIG = 1


def compile_and_collect(spec: ProgramSpec, headers: KernelHeaders) -> tuple[Any, Handover]:
    """Compile ``spec`` here; the ``bcc.BPF`` object and the descriptors it holds (still
    owned by it: closed by its ``cleanup``)."""
    from bcc import BPF, libbcc

    kinds = {"perf_event": BPF.PERF_EVENT, "tracepoint": BPF.TRACEPOINT, "kprobe": BPF.KPROBE}
    bpf = compile_with_bcc(spec.source, headers, spec.defines)
    try:
        functions = {spec.entry: bpf.load_func(spec.entry.encode(), kinds[spec.kind]).fd}
        for name in spec.functions:
            functions[name] = bpf.load_func(name.encode(), kinds[spec.kind]).fd
        for name in spec.probe_functions:
            functions[name] = bpf.load_func(name.encode(), BPF.KPROBE).fd
        refused = None
        if spec.tail_call is not None and spec.tail_call_map is not None:
            try:
                walk = bpf.load_func(spec.tail_call.encode(), kinds[spec.kind])
            except Exception as exc:  # noqa: BLE001 - bcc raises bare Exception: the verdict
                refused = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            else:
                bpf[spec.tail_call_map.encode()][ct.c_int(0)] = ct.c_int(walk.fd)
                functions[spec.tail_call] = walk.fd
        lib = _declare_table_calls(libbcc.lib)
        maps = {
            lib.bpf_table_name(bpf.module, i).decode(): lib.bpf_table_fd_id(bpf.module, i)
            for i in range(lib.bpf_num_tables(bpf.module))
        }
    except BaseException:
        bpf.cleanup()
        raise
    return bpf, Handover(maps, functions, refused)


def _declare_table_calls(lib: Any) -> Any:
    """libbcc's table enumeration, which bcc's Python module does not declare (without
    these, ctypes would truncate the module pointer and the names to ints)."""
    lib.bpf_num_tables.argtypes = [ct.c_void_p]
    lib.bpf_num_tables.restype = ct.c_size_t
    lib.bpf_table_name.argtypes = [ct.c_void_p, ct.c_size_t]
    lib.bpf_table_name.restype = ct.c_char_p
    lib.bpf_table_fd_id.argtypes = [ct.c_void_p, ct.c_size_t]
    lib.bpf_table_fd_id.restype = ct.c_int
    return lib


def _serve(sock: socket.socket) -> None:
    spec, headers = pickle.loads(sock.recv(1 << 20))  # noqa: S301 - from our own parent
    try:
        import bcc  # noqa: F401 - only to say so when it is missing
    except ImportError:
        reply: dict[str, Any] = {
            "error": "has no bcc (install Debian's python3-bpfcc)",
            "no_bcc": True,
        }
        sock.send(pickle.dumps(reply))
        return
    try:
        _, handover = compile_and_collect(spec, headers)
    except BPFLoadError as exc:
        sock.send(pickle.dumps({"error": str(exc)}))
        return
    except Exception as exc:  # noqa: BLE001 - whatever failed, the parent shows why
        sock.send(pickle.dumps({"error": f"could not load {spec.source}.c: {exc}"}))
        return
    reply = {
        "maps": list(handover.maps),
        "functions": list(handover.functions),
        "tail_call_refused": handover.tail_call_refused,
    }
    fds = [*handover.maps.values(), *handover.functions.values()]
    socket.send_fds(sock, [pickle.dumps(reply)], fds)


def main() -> int:
    libc = ct.CDLL(None)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        return 1
    sock = socket.socket(fileno=int(sys.argv[1]))
    try:
        _serve(sock)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # No interpreter teardown: bcc's and LLVM's destructors have nothing to give back
        # that exit does not, and have crashed at exit before.
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
