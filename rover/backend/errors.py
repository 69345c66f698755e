"""The two ways talking to the backend fails."""

from __future__ import annotations


class BackendConfigError(ValueError):
    """The backend settings cannot work (e.g. a TLS file is missing or empty)."""


class BackendUnavailable(Exception):
    """An RPC failed: unreachable, refused, timed out or rejected.

    ``code`` is the gRPC status code name (e.g. ``"UNAVAILABLE"``,
    ``"PERMISSION_DENIED"``, ``"DEADLINE_EXCEEDED"``) or ``""`` when the failure
    was not a gRPC status; ``reason`` says what happened, for a person.
    """

    def __init__(self, method: str, code: str, reason: str) -> None:
        self.method = method
        self.code = code
        self.reason = reason
        super().__init__(f"{method}: {code or 'error'}: {reason}" if method else reason)
