"""Make sure the tracing filesystem is mounted so tracepoints can be attached."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def tracepoint_dir(category: str, event: str) -> Path | None:
    for base in TRACEFS_DIRS:
        path = base / "events" / category / event
        if path.is_dir():
            return path
    return None


def ensure_tracefs() -> Path | None:
    """The directory of ``sched:sched_switch``, mounting tracefs/debugfs if needed."""
    found = tracepoint_dir("sched", "sched_switch")
    if found is not None:
        return found
    for fstype, target in (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug")):
        result = subprocess.run(
            ["mount", "-t", fstype, fstype, target], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            log.info("mounted %s at %s", fstype, target)
        else:
            log.debug("mount %s failed: %s", fstype, result.stderr.strip())
    return tracepoint_dir("sched", "sched_switch")
