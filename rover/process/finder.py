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
    without any."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def scan(self) -> list[DiscoveredProcess]: ...
