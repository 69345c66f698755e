"""Spawn test workloads, wait until they say "ready", and always clean them up."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

READY_LINE = "ready"
DEFAULT_READY_TIMEOUT = 15.0


class ProcessStartError(RuntimeError):
    """A spawned process died or stayed silent before printing its ready line."""


class RunningProcess:
    """A child process with line-oriented stdout reading (with timeouts) and stop()."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr: IO[bytes], *, argv: Sequence[str]):
        self.proc = proc
        self.argv = list(argv)
        self._stderr = stderr
        self._buffer = b""
        self._cleanups: list[Callable[[], object]] = []
        self._final_stderr: str | None = None  # kept once the temp file is removed

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stderr_text(self) -> str:
        """Everything the process wrote to stderr so far."""
        if self._final_stderr is not None:
            return self._final_stderr
        with open(self._stderr.name, "rb") as f:
            return f.read().decode(errors="replace")

    def read_line(self, timeout: float = DEFAULT_READY_TIMEOUT) -> str | None:
        """Next stdout line without its newline; None at EOF. Raises TimeoutError."""
        assert self.proc.stdout is not None, "spawned without stdout=PIPE"
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line from pid {self.pid} within {timeout:.1f}s")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                if not self._buffer:
                    return None
                self._buffer += b"\n"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode(errors="replace")

    def send_line(self, line: str = "go") -> None:
        """Write one line to the process's stdin."""
        assert self.proc.stdin is not None, "spawned without stdin=PIPE"
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def wait_ready(self, timeout: float = DEFAULT_READY_TIMEOUT) -> None:
        """Wait for the "ready" line; on failure stop the process and raise with its stderr."""
        try:
            line = self.read_line(timeout)
        except TimeoutError:
            problem = f"printed no {READY_LINE!r} line within {timeout:.1f}s"
        else:
            if line == READY_LINE:
                return
            time.sleep(0.05)  # let a dying process finish writing stderr
            exit_code = self.proc.poll()
            status = "still running" if exit_code is None else f"exit code {exit_code}"
            seen = "closed stdout" if line is None else f"printed {line!r}"
            problem = f"{seen} instead of {READY_LINE!r} ({status})"
        stderr = self.stderr_text()
        self.stop()
        raise ProcessStartError(f"{self.argv} {problem}; stderr:\n{stderr}")

    def add_cleanup(self, cleanup: Callable[[], object]) -> None:
        """Run `cleanup()` after the process has been stopped."""
        self._cleanups.append(cleanup)

    def stop(self) -> int:
        """Kill (SIGKILL) and reap the process; idempotent. Returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        code = self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):
                    stream.close()
        if not self._stderr.closed:
            self._final_stderr = self.stderr_text()
            self._stderr.close()
            Path(self._stderr.name).unlink(missing_ok=True)
        while self._cleanups:
            self._cleanups.pop()()
        return code

    def __enter__(self) -> RunningProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningProcess(pid={self.pid}, argv={self.argv!r})"


def _launch(
    argv: Sequence[str],
    stdin: int | IO[bytes] | None,
    env: dict[str, str] | None,
    cwd: str | os.PathLike[str] | None,
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """Popen with stdout piped (unbuffered) and stderr captured in a temp file."""
    stderr = tempfile.NamedTemporaryFile(prefix="rover-test-stderr-", delete=False)  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            argv, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=cwd, bufsize=0
        )
    except BaseException:
        stderr.close()
        os.unlink(stderr.name)
        raise
    return proc, stderr


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdin: int | IO[bytes] | None = subprocess.PIPE,
    env: dict[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    wait_ready: bool = True,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
) -> RunningProcess:
    """Start `argv` with stdout piped and, by default, wait for its "ready" line."""
    command = [os.fspath(a) for a in argv]
    process = RunningProcess(*_launch(command, stdin, env, cwd), argv=command)
    if wait_ready:
        process.wait_ready(ready_timeout)
    return process


class NamespacedProcess(RunningProcess):
    """A workload running from a private tmpfs in its own mount namespace."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        stderr: IO[bytes],
        *,
        argv: Sequence[str],
        exe_path: str,
    ):
        super().__init__(proc, stderr, argv=argv)
        self.exe_path = exe_path  # the binary's path inside the namespace (absent on the host)


# Runs inside the new mount namespace: $1 = host dir, $2 = binary, $3 = its name, rest = args.
_NAMESPACE_SCRIPT = (
    'mount -t tmpfs rover-test "$1" && cp "$2" "$1/" && '
    'dir="$1" name="$3" && shift 3 && exec "$dir/$name" "$@"'
)


def spawn_in_mount_namespace(
    binary: str | os.PathLike[str],
    args: Sequence[str] = (),
    *,
    stdin: int | IO[bytes] | None = subprocess.PIPE,
    env: dict[str, str] | None = None,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
) -> NamespacedProcess:
    """Run `binary` in its own mount namespace, copied onto a tmpfs only that namespace sees.

    An empty host dir /tmp/rover-mntns-XXXX is created; inside a new mount namespace
    (private propagation) a tmpfs is mounted over it and the binary copied there, so
    `exe_path` exists only through /proc/PID/root. `unshare` (without --fork) and `sh`
    both exec, so the returned pid is the workload's own pid.
    """
    binary = Path(binary).resolve()
    host_dir = tempfile.mkdtemp(prefix="rover-mntns-", dir="/tmp")
    exe_path = os.path.join(host_dir, binary.name)
    argv = [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", _NAMESPACE_SCRIPT, "sh", host_dir, str(binary), binary.name, *args,
    ]  # fmt: skip
    try:
        launched = _launch(argv, stdin, env, None)
    except BaseException:
        shutil.rmtree(host_dir, ignore_errors=True)
        raise
    process = NamespacedProcess(*launched, argv=argv, exe_path=exe_path)
    process.add_cleanup(lambda: shutil.rmtree(host_dir, ignore_errors=True))
    try:
        process.wait_ready(ready_timeout)
        _check_hidden_from_host(process)
    except BaseException:
        process.stop()
        raise
    return process


def _check_hidden_from_host(process: NamespacedProcess) -> None:
    """The binary must be reachable only through /proc/PID/root, and PID must be the workload."""
    exe_path = process.exe_path
    if os.path.exists(exe_path):
        raise ProcessStartError(f"{exe_path} is visible on the host")
    in_namespace = f"/proc/{process.pid}/root{exe_path}"
    if not os.path.exists(in_namespace):
        raise ProcessStartError(f"{in_namespace} does not exist")
    running, expected = os.stat(f"/proc/{process.pid}/exe"), os.stat(in_namespace)
    if (running.st_dev, running.st_ino) != (expected.st_dev, expected.st_ino):
        raise ProcessStartError(f"pid {process.pid} is not running {exe_path} (unshare forked?)")
