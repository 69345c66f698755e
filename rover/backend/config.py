"""Settings of the connection to the SkyWalking backend (spec section 5)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendConfig:
    """Where the backend is and how to talk to it.

    Paths are empty when not set. ``check_period`` is how often a disconnected
    channel is nudged to reconnect (Rover's connection-state check period);
    ``call_timeout`` is the deadline of every call, streams included (Rover sets
    none; an agent must not hang forever on a half-dead backend).
    """

    addr: str = "localhost:11800"
    enable_tls: bool = False
    ca_pem_path: str = ""
    client_pem_path: str = ""
    client_key_path: str = ""
    insecure_skip_verify: bool = False
    authentication: str = ""
    check_period: float = 5.0
    call_timeout: float = 10.0
    # profiling-data messages kept while the backend is unreachable
    upload_buffer_size: int = 100_000

    def __post_init__(self) -> None:
        if not self.addr:
            raise ValueError("backend addr must be host:port, got an empty string")
        if self.check_period <= 0:
            raise ValueError(f"backend check_period must be > 0 s, got {self.check_period}")
        if self.call_timeout <= 0:
            raise ValueError(f"backend call_timeout must be > 0 s, got {self.call_timeout}")
        if self.upload_buffer_size < 1:
            raise ValueError(
                f"backend upload_buffer_size must be >= 1, got {self.upload_buffer_size}"
            )
