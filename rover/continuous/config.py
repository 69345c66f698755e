"""Settings of continuous profiling (Rover's ``profiling.continuous`` section)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContinuousConfig:
    meter_prefix: str = "rover_con_p"
    fetch_interval: float = 1.0  # seconds between metric reads (one window slot each)
    check_interval: float = 5.0  # seconds between policy syncs, checks and meter sends
    execute_duration: float = 600.0  # seconds a triggered task runs
    silence_duration: float = (
        1200.0  # seconds after a task's start before its dimension may trigger again
    )

    def __post_init__(self) -> None:
        if not self.meter_prefix:
            raise ValueError("continuous profiling: meter_prefix must not be empty")
        for name in ("fetch_interval", "check_interval", "execute_duration"):
            if getattr(self, name) <= 0:
                raise ValueError(f"continuous profiling: {name} must be > 0")
        if self.silence_duration < 0:
            raise ValueError("continuous profiling: silence_duration must be >= 0")
