"""Run `rover agent` as a real subprocess against a test backend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

FAST_PERIODS = {
    "ROVER_PROCESS_DISCOVERY_HEARTBEAT_PERIOD": "1s",
    "ROVER_PROCESS_DISCOVERY_SCAN_PERIOD": "500ms",
    "ROVER_PROFILING_CHECK_INTERVAL": "1s",
    "ROVER_PROFILING_FLUSH_INTERVAL": "1s",
    "ROVER_BACKEND_CHECK_PERIOD": "1s",
    "ROVER_LOGGER_LEVEL": "INFO",
}


def scanner_env(backend_addr: str, match_cmd: str, service: str, **extra: str) -> dict[str, str]:
    """Settings for the regex scanner finding one workload."""
    return {
        **FAST_PERIODS,
        "ROVER_BACKEND_ADDR": backend_addr,
        "ROVER_PROCESS_DISCOVERY_SCAN_MODE": "REGEX",
        "ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_MATCH_CMD": match_cmd,
        "ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_SERVICE_NAME": service,
        "ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_INSTANCE_NAME": "test-instance",
        "ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_LABELS": "team-a,tier-1",
        **extra,
    }


class AgentProcess:
    def __init__(self, env: dict[str, str], log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("ROVER_")}
        full_env.update(env)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rover.cli", "agent", *args],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> tuple[int | None, float]:
        """Signal the agent and wait; returns (exit code, seconds it took)."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode, time.monotonic() - started
