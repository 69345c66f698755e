"""Everything that speaks gRPC to the SkyWalking backend (OAP).

``BackendClient`` makes the calls; ``ProcessReporter`` keeps the backend's view
of our processes current; ``ProfileUploader`` buffers and ships profiling data.
Messages are generated from ``protos/`` into ``rover.backend.proto``. Settings are
``rover.config.BackendConfig``, as the configuration file gives them.
"""

from rover.backend.client import BackendClient
from rover.backend.commands import CommandData
from rover.backend.errors import BackendConfigError, BackendUnavailable
from rover.backend.process_reporter import ProcessReporter
from rover.backend.uploader import ProfileUploader

__all__ = [
    "BackendClient",
    "BackendConfigError",
    "BackendUnavailable",
    "CommandData",
    "ProcessReporter",
    "ProfileUploader",
]
