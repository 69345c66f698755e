"""The one exception the configuration raises."""

from __future__ import annotations


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key (or file) and the value.

    Raised before anything starts, so a bad value stops the agent instead of
    surfacing later as a confusing runtime failure.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
