"""What every process finder offers the reporter, and the error of a finder that cannot work."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from rover.process.model import DiscoveredProcess


class FinderConfigError(ValueError):
    """A finder's configuration cannot work (empty or invalid field); raised at start-up."""


@runtime_checkable
class ProcessFinder(Protocol):
    """``scan()`` returns the full current set each time; the reporter diffs consecutive sets.
    ``start()``/``stop()`` run and end background work (watches); they are no-ops for finders
    without any. ``wait_synced()`` waits until the finder's view is complete (its watched
    collections listed once); finders without watches are complete at once."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def wait_synced(self, timeout_s: float) -> bool: ...

    def scan(self) -> list[DiscoveredProcess]: ...
