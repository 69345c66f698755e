"""Run the real `rover` command line in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROVER = [sys.executable, "-m", "rover.cli"]


def rover(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `rover ARGS`; ``env`` is added to this process's environment."""
    return subprocess.run(
        [*ROVER, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def start_rover(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*ROVER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_stderr_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60) -> str:
    """Read rover's stderr until a line starting with ``prefix`` (e.g. the first progress line)."""
    import select
    import time

    deadline = time.monotonic() + timeout
    seen = []
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"rover never printed {prefix!r}; stderr so far: {''.join(seen)}")


def folded_stacks(path: Path) -> list[tuple[list[str], int]]:
    from rover.export import read_folded

    return read_folded(str(path))


def user_frames(frames: list[str]) -> list[str]:
    return [f for f in frames if not f.endswith("_[k]")]
