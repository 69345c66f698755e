"""The agent's configuration: ``rover_configs.yaml`` with Rover's keys and ``${ENV:default}``
placeholders, turned into frozen dataclasses; any bad value is a ConfigError naming its key.

Modules: ``placeholders`` (``${...}``), ``yaml_file`` (reading), ``reader`` (typing one
value, unknown keys), ``model`` (the dataclasses), ``build`` (sections and checks),
``loader`` (which file).
"""

from rover.config.errors import ConfigError
from rover.config.loader import (
    SHIPPED_CONFIG,
    default_config_path,
    load_cache_config,
    load_config,
)
from rover.config.model import (
    DEFAULT_ANALYZERS,
    AgentConfig,
    AnalyzerConfig,
    BackendConfig,
    CacheConfig,
    ContinuousConfig,
    CoreConfig,
    HealthConfig,
    HttpSamplingConfig,
    KubernetesConfig,
    LogFormat,
    LoggerConfig,
    NetworkConfig,
    OnCpuConfig,
    ProcessDiscoveryConfig,
    ProfilingConfig,
    ProtocolAnalyzeConfig,
    RegexFinderConfig,
    ScanMode,
    ScannerAgentConfig,
    ScannerConfig,
    TaskConfig,
    TriggerConfig,
    UnwindMode,
)

__all__ = [
    "DEFAULT_ANALYZERS",
    "SHIPPED_CONFIG",
    "AgentConfig",
    "AnalyzerConfig",
    "BackendConfig",
    "CacheConfig",
    "ConfigError",
    "ContinuousConfig",
    "CoreConfig",
    "HealthConfig",
    "KubernetesConfig",
    "LogFormat",
    "LoggerConfig",
    "HttpSamplingConfig",
    "NetworkConfig",
    "OnCpuConfig",
    "ProtocolAnalyzeConfig",
    "ProcessDiscoveryConfig",
    "ProfilingConfig",
    "RegexFinderConfig",
    "ScanMode",
    "UnwindMode",
    "ScannerAgentConfig",
    "ScannerConfig",
    "TaskConfig",
    "TriggerConfig",
    "default_config_path",
    "load_cache_config",
    "load_config",
]
