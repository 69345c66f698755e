"""Periodic loops: one thread each, a period, a stop event, errors logged not fatal."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class PeriodicLoop:
    """Calls ``action`` now and then every ``period`` seconds until stopped.

    An exception in ``action`` is logged (once per distinct message in a
    row, so a backend that stays down does not flood the log) and the loop
    goes on.
    """

    def __init__(
        self,
        name: str,
        period: float,
        action: Callable[[], object],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if period <= 0:
            raise ValueError(f"{name}: period must be positive, got {period}")
        self.name = name
        self.period = period
        self.action = action
        self._clock = clock
        self.runs = 0
        self.failures = 0
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._soon: float | None = None  # an earlier run asked for (run_by)
        self._thread: threading.Thread | None = None
        self._last_error = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_run = self._clock()
        while True:
            with self._wake:
                while not self._stop.is_set():
                    now = self._clock()
                    due = next_run if self._soon is None else min(next_run, self._soon)
                    if due <= now:
                        break
                    self._wake.wait(due - now)
                if self._stop.is_set():
                    return
                now = self._clock()
                if self._soon is not None and self._soon <= now:
                    self._soon = None
                if next_run <= now:  # a regular run (else an early one: the cadence stays)
                    next_run += self.period
                    if next_run <= now:  # fell behind (a slow call): do not burst to catch up
                        next_run = now + self.period
            self.run_once()

    def run_by(self, when: float) -> None:
        """Run once no later than ``when`` (this loop's clock), besides the regular runs:
        e.g. a profiling task's first flush soon after it starts."""
        with self._wake:
            if self._soon is None or when < self._soon:
                self._soon = when
            self._wake.notify()

    def run_once(self) -> None:
        try:
            self.action()
            self.runs += 1
            if self._last_error:
                log.info("%s: working again", self.name)
                self._last_error = ""
        except Exception as exc:  # noqa: BLE001 - a loop must survive any failure
            self.failures += 1
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:
                log.warning("%s failed: %s", self.name, message, exc_info=log.isEnabledFor(10))
                self._last_error = message

    def request_stop(self) -> None:
        """Ask the loop to end after its current run, without waiting (to stop many at once)."""
        self._stop.set()
        with self._wake:
            self._wake.notify()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread to end; True when it has."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self.request_stop()
        self.join(timeout)
