"""Check that the profiling programs compile, load and attach here, in a child process.

The agent's readiness needs to know that BPF works before any task asks for it. Doing
that in the agent itself would put two whole compiles (LLVM's parse and codegen state,
~100 MB each, plus the pages of LLVM itself) into the agent's peak memory for programs
it may never use; a child returns all of it when it exits. The parent holds the
compile lock meanwhile, so the child's compile never overlaps one of the agent's and
the pod's memory peak stays that of a single compile.

The child reads what to check (the kernel headers, the engine settings) as a pickle
on stdin, from its own parent only, and says why on stderr when it fails.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading

from rover.bpf.engine import EngineConfig, ProfilerEngine
from rover.bpf.headers import KernelHeaders
from rover.bpf.loader import COMPILE_LOCK, BPFLoadError
from rover.profile import ProfileType

CHECK_TIMEOUT = 300.0  # seconds: two compiles take seconds idle, a minute on a starved node


class CheckCancelled(Exception):
    """The check was cancelled before it could tell."""


class LoadCheck:
    """One check, run once with :meth:`run`; :meth:`cancel` ends it (agent shutdown)."""

    def __init__(
        self, headers: KernelHeaders, config: EngineConfig, timeout: float = CHECK_TIMEOUT
    ) -> None:
        self._request = pickle.dumps((headers, config))
        self._timeout = timeout
        self._lock = threading.Lock()
        self._child: subprocess.Popen[bytes] | None = None
        self._cancelled = False

    def run(self) -> None:
        """Compile, load and attach every program once in a child.

        Raises BPFLoadError saying why when they cannot, CheckCancelled after cancel().
        """
        with COMPILE_LOCK:
            with self._lock:
                if self._cancelled:
                    raise CheckCancelled()
                self._child = subprocess.Popen(
                    [sys.executable, "-m", __name__],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            try:
                _, err = self._child.communicate(self._request, timeout=self._timeout)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.communicate()
                raise BPFLoadError(f"loading the programs took over {self._timeout:.0f}s") from None
        if self._cancelled:
            raise CheckCancelled()
        if self._child.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise BPFLoadError(lines[-1] if lines else f"exit code {self._child.returncode}")

    def cancel(self) -> None:
        """End the check now: the child is killed, run() raises."""
        with self._lock:
            self._cancelled = True
            if self._child is not None and self._child.poll() is None:
                self._child.kill()


def _check(headers: KernelHeaders, config: EngineConfig) -> None:
    for profile_type in ProfileType:
        ProfilerEngine(profile_type, headers, config).close()


def main() -> int:
    headers, config = pickle.load(sys.stdin.buffer)  # noqa: S301 - written by our parent
    try:
        _check(headers, config)
    except BPFLoadError as exc:
        print(str(exc).splitlines()[0], file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the parent shows one line, whatever failed
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
