"""Logging a per-process problem once, not on every scan of a process that stays."""

from __future__ import annotations

import logging
from collections.abc import Hashable


class OncePerProcess:
    """Keys are (pid, start time, ...) tuples; forgetting the dead ones keeps memory bounded."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[tuple[Hashable, ...]] = set()

    def log(self, level: int, key: tuple[Hashable, ...], message: str, *args: object) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self._logger.log(level, message, *args)
        else:
            self._logger.debug(message, *args)

    def retain(self, alive: set[tuple[int, int]]) -> None:
        self._seen = {key for key in self._seen if tuple(key[:2]) in alive}
