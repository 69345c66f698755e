"""A loaded BPF program held by file descriptors: its maps, its functions, its attachments.

The agent never compiles: a short-lived helper process does, with bcc, and hands
over the file descriptors of the loaded functions and maps over a Unix socket
(``rover.bpf.compile_helper``). The compiler (libLLVM, libclang-cpp and its
~100 MB of parse state) lives and dies with the helper, so the agent's memory is
its own work, not the compiler's. Attaching (perf events, tracepoints) and every
map access happen here, by system call (``rover.bpf.syscall``).

When the helper cannot run at all (it cannot be started, or says it has no
bcc), the program is compiled in this process, handed over the same way (the
same file descriptors, duplicated), and the reason is logged: profiling works,
at the old memory cost.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

from rover.bpf import syscall
from rover.bpf.headers import KernelHeaders
from rover.bpf.loader import COMPILE_LOCK, BPFLoadError
from rover.bpf.maps import BpfMap, cpu_list
from rover.bpf.tracefs import ensure_tracefs, tracepoint_dir

log = logging.getLogger(__name__)

COMPILE_TIMEOUT = 300.0  # seconds: a compile takes seconds idle, a minute on a starved node
HELPER_ATTEMPTS = 2  # a helper that dies mid-compile (OOM kill, a crash) is tried once more
MAX_FDS = 250  # SCM_MAX_FD is 253 per message


@dataclass(frozen=True)
class ProgramSpec:
    """What to load from ``bpf/<source>.c``: the entry function attached to events and,
    optionally, a function put in slot 0 of a tail-call map (the kernel's verifier may
    refuse it: that is reported, not an error), and more functions of the same kind
    (``functions``: a program with many tracepoints), and functions of kprobe type
    (``probe_functions``: uprobes and uretprobes, attached with
    :meth:`LoadedProgram.attach_uprobe`)."""

    source: str
    defines: dict[str, int]
    entry: str
    kind: str  # "perf_event" or "tracepoint"
    tail_call: str | None = None
    tail_call_map: str | None = None
    functions: tuple[str, ...] = ()
    probe_functions: tuple[str, ...] = ()


@dataclass
class Handover:
    """File descriptors of a compiled program's maps and functions, by name."""

    maps: dict[str, int]
    functions: dict[str, int]
    tail_call_refused: str | None = None


class HelperUnavailable(Exception):
    """The helper process could not be used at all (compile in-process instead)."""


class HelperDied(Exception):
    """The helper died before handing the program over (killed, crashed)."""


class CompileCancelled(BPFLoadError):
    """The compile was cancelled (:func:`cancel_compiles`): the caller is stopping."""


@dataclass
class LoadedProgram:
    """A program's maps (:class:`BpfMap`, raw-typed until :meth:`map` types them), its
    functions and attachments; :meth:`close` releases every descriptor it holds."""

    name: str
    handover: Handover
    compiled_here: str | None = None  # why, when the helper could not compile it
    _maps: dict[str, BpfMap] = field(default_factory=dict)
    _attachments: list[int] = field(default_factory=list)

    @property
    def tail_call_refused(self) -> str | None:
        return self.handover.tail_call_refused

    def has_function(self, name: str) -> bool:
        return name in self.handover.functions

    def map(self, name: str, key_type: type | None = None, leaf_type: type | None = None) -> BpfMap:
        """Map ``name``, read and written as ``key_type``/``leaf_type`` (checked against the
        kernel's sizes; raw bytes when not given)."""
        known = self._maps.get(name)
        if known is not None and key_type is None and leaf_type is None:
            return known
        try:
            fd = self.handover.maps[name]
        except KeyError:
            raise BPFLoadError(f"{self.name}.c has no map {name}") from None
        typed = BpfMap(name, fd, key_type, leaf_type)
        self._maps[name] = typed
        return typed

    def attach_cpu_clock(self, function: str, frequency: int) -> None:
        """Run ``function`` ``frequency`` times a second on every online CPU."""
        try:
            for cpu in cpu_list("online"):
                fd = syscall.perf_event_open(syscall.cpu_clock_attr(frequency), -1, cpu)
                self._attachments.append(fd)
                syscall.attach_perf_event(fd, self.handover.functions[function])
        except OSError as exc:
            raise BPFLoadError(
                f"could not attach the CPU-clock perf event: {exc.strerror or exc} "
                "(needs CAP_PERFMON or CAP_SYS_ADMIN and perf_event_paranoid <= 2)"
            ) from exc

    def attach_tracepoint(self, function: str, category: str, event: str) -> None:
        ensure_tracefs()
        directory = tracepoint_dir(category, event)
        if directory is None:
            raise BPFLoadError(f"tracepoint {category}:{event} not found (is tracefs mounted?)")
        try:
            tracepoint_id = int((directory / "id").read_text())
            fd = syscall.perf_event_open(syscall.tracepoint_attr(tracepoint_id), -1, 0)
            self._attachments.append(fd)
            syscall.attach_perf_event(fd, self.handover.functions[function])
        except OSError as exc:
            raise BPFLoadError(
                f"could not attach to tracepoint {category}:{event}: {exc.strerror or exc}"
            ) from exc

    def attach_uprobe(
        self, function: str, path: str, offset: int, pid: int = -1, retprobe: bool = False
    ) -> int:
        """Run ``function`` (a ``probe_functions`` one) when the code at file offset
        ``offset`` of ``path`` runs (at its return when ``retprobe``) in process ``pid``
        (-1: any). Returns the attachment, for :meth:`detach`; raises BPFLoadError."""
        try:
            program_fd = self.handover.functions[function]
        except KeyError:
            raise BPFLoadError(f"{self.name}.c has no function {function}") from None
        kind = "uretprobe" if retprobe else "uprobe"
        try:
            fd = syscall.open_uprobe(path, offset, pid, retprobe)
        except OSError as exc:
            hint = ""
            if exc.errno in (errno.EACCES, errno.EPERM):
                hint = (
                    " (this kernel opens uprobe events for CAP_SYS_ADMIN only: give the agent "
                    "SYS_ADMIN to capture TLS plaintext)"
                )
            raise BPFLoadError(
                f"could not open a {kind} at {path}+{offset:#x} (pid {pid}): "
                f"{exc.strerror or exc}{hint}"
            ) from exc
        try:
            syscall.attach_perf_event(fd, program_fd)
        except OSError as exc:
            os.close(fd)
            raise BPFLoadError(
                f"could not attach {function} as a {kind} at {path}+{offset:#x}: "
                f"{exc.strerror or exc}"
            ) from exc
        self._attachments.append(fd)
        return fd

    def detach(self, attachment: int) -> None:
        """End one attachment made by :meth:`attach_uprobe` (unknown ones are ignored)."""
        if attachment in self._attachments:
            self._attachments.remove(attachment)
            with contextlib.suppress(OSError):
                os.close(attachment)

    def close(self) -> None:
        """Detach, then release the maps and functions (the kernel frees them with the last
        descriptor)."""
        for fd in self._attachments:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._attachments.clear()
        for fd in (*self.handover.maps.values(), *self.handover.functions.values()):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.handover.maps.clear()
        self.handover.functions.clear()
        self._maps.clear()


def load_program(spec: ProgramSpec, headers: KernelHeaders) -> LoadedProgram:
    """Compile and load ``spec`` in the helper (in this process if the helper cannot run).

    Raises BPFLoadError saying why when the program cannot be compiled or loaded.
    """
    with COMPILE_LOCK:  # one compile at a time: the node's peak is one compiler's
        for attempt in range(1, HELPER_ATTEMPTS + 1):
            try:
                return LoadedProgram(spec.source, compile_in_helper(spec, headers))
            except HelperUnavailable as exc:
                log.warning("compiling %s.c in the agent: the compile helper %s", spec.source, exc)
                return LoadedProgram(spec.source, compile_here(spec, headers), str(exc))
            except HelperDied as exc:
                if attempt == HELPER_ATTEMPTS:
                    raise BPFLoadError(
                        f"could not load {spec.source}.c: the compile helper {exc} "
                        f"({HELPER_ATTEMPTS} attempts)"
                    ) from exc
                log.warning("the compile helper %s compiling %s.c; trying again", exc, spec.source)
    raise AssertionError("unreachable")


def compile_here(spec: ProgramSpec, headers: KernelHeaders) -> Handover:
    """Compile in this process, keeping duplicates of the program's descriptors."""
    from rover.bpf.compile_helper import compile_and_collect

    bpf, handover = compile_and_collect(spec, headers)
    try:
        return Handover(
            {name: os.dup(fd) for name, fd in handover.maps.items()},
            {name: os.dup(fd) for name, fd in handover.functions.items()},
            handover.tail_call_refused,
        )
    finally:
        bpf.cleanup()


# Live helpers, so that a caller stopping can end them (see cancel_compiles); the value
# says whether it was cancelled.
_helpers: dict[subprocess.Popen[bytes], bool] = {}
_helpers_lock = threading.RLock()  # re-entered by cancel_compiles from a signal handler


def cancel_compiles() -> None:
    """Kill every helper compiling now (Ctrl-C, agent shutdown): their callers get
    CompileCancelled at once instead of waiting seconds for the compile. Safe in a signal
    handler. Compiles started afterwards run as usual."""
    with _helpers_lock:
        for child in _helpers:
            _helpers[child] = True
            with contextlib.suppress(OSError):
                child.kill()


def compile_in_helper(
    spec: ProgramSpec, headers: KernelHeaders, timeout: float = COMPILE_TIMEOUT
) -> Handover:
    """Compile ``spec`` in a new helper process and receive its descriptors."""
    # stderr to a file, not a pipe: nobody reads it until the helper ends
    with tempfile.TemporaryFile() as err_file:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            try:
                child = subprocess.Popen(
                    [sys.executable, "-m", "rover.bpf.compile_helper", str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err_file,
                )
            except OSError as exc:
                raise HelperUnavailable(f"cannot start ({exc})") from exc
            theirs.close()
            with _helpers_lock:
                _helpers[child] = False
            try:
                ours.sendall(pickle.dumps((spec, headers)))
                return _receive(ours, child, spec, timeout)
            except (HelperDied, OSError) as exc:
                with _helpers_lock:
                    if _helpers.get(child):
                        raise CompileCancelled(f"compiling {spec.source}.c was cancelled") from exc
                if isinstance(exc, HelperDied):
                    raise
                raise HelperDied(f"could not be reached ({exc})") from exc
            finally:
                with _helpers_lock:
                    _helpers.pop(child, None)
                if child.poll() is None:
                    child.kill()
                child.wait()
        finally:
            ours.close()
            theirs.close()
            err_file.seek(0)
            _log_stderr(err_file.read())


def _receive(
    sock: socket.socket, child: subprocess.Popen[bytes], spec: ProgramSpec, timeout: float
) -> Handover:
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        message, fds, _, _ = socket.recv_fds(sock, 1 << 20, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
    except TimeoutError:
        raise BPFLoadError(f"compiling {spec.source}.c took over {timeout:.0f}s") from None
    except ConnectionResetError:
        message, fds = b"", []
    if not message:
        for fd in fds:
            os.close(fd)
        code = child.wait()
        raise HelperDied(_exit_reason(code)) from None
    reply = pickle.loads(message)  # noqa: S301 - from our own child, over a private socketpair
    if reply.get("error") is not None:
        for fd in fds:
            os.close(fd)
        if reply.get("no_bcc"):
            raise HelperUnavailable(reply["error"])
        raise BPFLoadError(reply["error"])
    names: list[str] = reply["maps"] + reply["functions"]
    if len(names) != len(fds):
        for fd in fds:
            os.close(fd)
        raise BPFLoadError(
            f"the compile helper sent {len(fds)} descriptors for {len(names)} objects"
        )
    count = len(reply["maps"])
    log.debug("%s.c compiled by the helper in %.2fs", spec.source, time.monotonic() - started)
    return Handover(
        dict(zip(reply["maps"], fds[:count], strict=True)),
        dict(zip(reply["functions"], fds[count:], strict=True)),
        reply.get("tail_call_refused"),
    )


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name} before handing the program over"
        except ValueError:
            return f"was killed by signal {-code} before handing the program over"
    return f"exited with code {code} before handing the program over"


def _log_stderr(err: bytes) -> None:
    text = err.decode(errors="replace").strip()
    if text:
        log.debug("compile helper said: %s", text[-2000:])
