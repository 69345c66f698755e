"""The typed settings of the agent, one dataclass per section of ``rover_configs.yaml``.

Defaults equal the shipped file's, which equal current Rover's except where a
comment says otherwise; a key left out of a custom file takes the default here.
Durations are float seconds. Empty strings mean "not set", as in Rover. Templates
(analyzers, regex finders) are carried as raw strings: process discovery
(``rover.process``) compiles them and uses these classes as its own rule types.
"""

from __future__ import annotations

import enum
import logging
import os
from dataclasses import dataclass, field


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class UnwindMode(enum.StrEnum):
    """``profiling.unwind``: how user stacks are unwound (see ``rover.unwind``)."""

    AUTO = "auto"  # per process: eh_frame when its code lacks frame pointers
    FRAME_POINTER = "frame_pointer"  # in the kernel, by frame pointers
    EH_FRAME = "eh_frame"  # in user space, with the files' .eh_frame CFI


class ScanMode(enum.StrEnum):
    """``process_discovery.scanner.mode``; only REGEX turns the host scanner on here."""

    REGEX = "REGEX"
    AGENT_SENSOR = "AGENT_SENSOR"  # Rover's default; not implemented by this agent


# Rover's logger levels (logrus names) and what they mean to Python's logging.
LOG_LEVELS: dict[str, int] = {
    "TRACE": logging.DEBUG,
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
    "PANIC": logging.CRITICAL,
}


@dataclass(frozen=True, slots=True)
class LoggerConfig:
    level: str = "INFO"  # one of LOG_LEVELS' keys (``warn`` is stored as WARNING)
    format: LogFormat = LogFormat.TEXT

    @property
    def python_level(self) -> int:
        return LOG_LEVELS[self.level]


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """Where the backend (OAP) is and how to talk to it; ``rover.backend`` takes it as is.

    ``check_period`` is how often a disconnected channel is nudged to reconnect (Rover's
    connection-state check period); ``call_timeout`` is the deadline of every call, streams
    included (Rover sets none; an agent must not hang forever on a half-dead backend).
    """

    addr: str = "localhost:11800"
    enable_tls: bool = False
    ca_pem_path: str = ""  # empty: the system's trust roots
    client_pem_path: str = ""  # client certificate: used only when the key is set too
    client_key_path: str = ""
    insecure_skip_verify: bool = False
    check_period: float = 5.0
    authentication: str = ""  # empty: no ``authentication`` metadata
    call_timeout: float = 10.0  # ours: Rover sets no deadline on calls
    upload_buffer_size: int = 100_000  # ours: bound on data kept while the backend is away

    def __post_init__(self) -> None:
        # The file's checks name the key first (rover.config.build); these hold the
        # invariants for a configuration built in code.
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


@dataclass(frozen=True, slots=True)
class HealthConfig:
    address: str = ""  # ``host:port`` of the health endpoint; empty: no endpoint


@dataclass(frozen=True, slots=True)
class CoreConfig:
    cluster_name: str = ""
    host_root: str = "/"  # where the host's / is mounted (Rover's ROVER_HOST_MAPPING)
    host_proc_mapping: str = ""  # the host's /proc (Rover 0.7+); empty: <host_root>/proc
    backend: BackendConfig = field(default_factory=BackendConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    @property
    def proc_dir(self) -> str:
        """Where the host's ``/proc`` is readable from here."""
        return self.host_proc_mapping or os.path.join(self.host_root, "proc")


@dataclass(frozen=True, slots=True, kw_only=True)
class AnalyzerConfig:
    """One Kubernetes process analyzer: Go-template filters and entity templates.

    A key left out of a file is empty here, as in Rover (an error while active)."""

    active: bool = True
    filters: tuple[str, ...] = ()  # each a template expression without the {{ }}
    layer: str = ""
    service_name: str = ""
    instance_name: str = ""
    process_name: str = ""
    labels: tuple[str, ...] = ()


# Current Rover's defaults: ``<name>.<namespace>`` (older Rover wrote ``<namespace>::<name>``).
_ISTIO_SERVICE_NAME = (
    '{{.Pod.LabelValue "service.istio.io/canonical-name,app.kubernetes.io/name,app" ""}}'
    ".{{.Pod.Namespace}}"
)
_K8S_SERVICE_NAME = "{{.Pod.ServiceName}}.{{.Pod.Namespace}}"
_POD_INSTANCE_NAME = "{{.Pod.Name}}"
_EXE_PROCESS_NAME = "{{.Process.ExeName}}"

# Rover's three shipped analyzers: Istio sidecar, Istio application, Kubernetes service.
DEFAULT_ANALYZERS: tuple[AnalyzerConfig, ...] = (
    AnalyzerConfig(
        filters=('.Pod.HasContainer "istio-proxy"', 'eq .Container.Name "istio-proxy"'),
        layer="MESH_DP",
        service_name=_ISTIO_SERVICE_NAME,
        instance_name=_POD_INSTANCE_NAME,
        process_name=_EXE_PROCESS_NAME,
        labels=("mesh-envoy",),
    ),
    AnalyzerConfig(
        filters=('.Pod.HasContainer "istio-proxy"', 'ne .Container.Name "istio-proxy"'),
        layer="MESH",
        service_name=_ISTIO_SERVICE_NAME,
        instance_name=_POD_INSTANCE_NAME,
        process_name=_EXE_PROCESS_NAME,
        labels=("mesh-application",),
    ),
    AnalyzerConfig(
        filters=(".Pod.HasServiceName",),
        layer="K8S_SERVICE",
        service_name=_K8S_SERVICE_NAME,
        instance_name=_POD_INSTANCE_NAME,
        process_name=_EXE_PROCESS_NAME,
        labels=("k8s-service",),
    ),
)


@dataclass(frozen=True, slots=True)
class KubernetesConfig:
    active: bool = False
    node_name: str = ""
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    analyzers: tuple[AnalyzerConfig, ...] = DEFAULT_ANALYZERS


@dataclass(frozen=True, slots=True, kw_only=True)
class RegexFinderConfig:
    """One host-process finder of the REGEX scanner (Rover removed it in Dec 2023)."""

    match_cmd: str = ""  # regular expression searched in the command line
    layer: str = "OS_LINUX"
    service_name: str = ""
    # Ours: Rover's {{.Rover.HostIPV4 "en0"}} fails on Linux hosts (no interface en0), which
    # skipped every matched process.
    instance_name: str = "{{.Rover.HostName}}"
    process_name: str = _EXE_PROCESS_NAME
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScannerAgentConfig:
    process_status_refresh_period: float = 60.0  # AGENT_SENSOR mode only


@dataclass(frozen=True, slots=True)
class ScannerConfig:
    mode: ScanMode = ScanMode.AGENT_SENSOR
    period: float = 3.0
    agent: ScannerAgentConfig = field(default_factory=ScannerAgentConfig)
    regex: tuple[RegexFinderConfig, ...] = (RegexFinderConfig(),)

    @property
    def active(self) -> bool:
        return self.mode is ScanMode.REGEX


@dataclass(frozen=True, slots=True)
class ProcessDiscoveryConfig:
    heartbeat_period: float = 20.0
    properties_report_period: int = 10  # full re-report every N heartbeats
    scanner: ScannerConfig = field(default_factory=ScannerConfig)
    kubernetes: KubernetesConfig = field(default_factory=KubernetesConfig)


@dataclass(frozen=True, slots=True)
class OnCpuConfig:
    dump_period: float = 0.009  # sampling period: 9 ms is 111 samples per second

    @property
    def frequency(self) -> int:
        """Samples per second per CPU: the nearest whole number, at least 1."""
        return max(1, round(1.0 / self.dump_period))


@dataclass(frozen=True, slots=True)
class HttpSamplingConfig:
    """Charsets assumed for sampled bodies whose Content-Type names none (spec 8.10)."""

    default_request_encoding: str = "UTF-8"
    default_response_encoding: str = "UTF-8"


@dataclass(frozen=True, slots=True)
class ProtocolAnalyzeConfig:
    # Kernel-to-agent event buffer per CPU (Rover's perf buffer size); the ring buffer is
    # this times the CPUs, rounded up to a power of two.
    per_cpu_buffer: int = 400 << 10
    parallels: int = 2  # Rover's analyzer goroutines; accepted, one analyzer thread here
    queue_size: int = 5000  # Rover's analyzer queue; accepted: events wait in the ring buffer
    capture_bytes: int = 1024  # ours: payload bytes copied per data syscall (max 4096)
    sampling_http: HttpSamplingConfig = field(default_factory=HttpSamplingConfig)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """``profiling.task.network``: NETWORK tasks (spec 8)."""

    report_interval: float = 2.0
    meter_prefix: str = "rover_net_p"
    max_connections: int = 8192  # ours: connections tracked at once (kernel and agent)
    protocol_analyze: ProtocolAnalyzeConfig = field(default_factory=ProtocolAnalyzeConfig)


@dataclass(frozen=True, slots=True)
class TaskConfig:
    on_cpu: OnCpuConfig = field(default_factory=OnCpuConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)


@dataclass(frozen=True, slots=True)
class TriggerConfig:
    execute_duration: float = 600.0  # seconds a triggered task runs
    silence_duration: float = 1200.0  # seconds after a task's start before it may trigger again

    def __post_init__(self) -> None:
        if self.execute_duration <= 0:
            raise ValueError("continuous profiling: execute_duration must be > 0")
        if self.silence_duration < 0:
            raise ValueError("continuous profiling: silence_duration must be >= 0")


@dataclass(frozen=True, slots=True)
class ContinuousConfig:
    """``profiling.continuous``; ``rover.continuous`` takes it as is."""

    meter_prefix: str = "rover_con_p"
    fetch_interval: float = 1.0  # seconds between metric reads (one window slot each)
    check_interval: float = 5.0  # seconds between policy syncs, checks and meter sends
    trigger: TriggerConfig = field(default_factory=TriggerConfig)

    def __post_init__(self) -> None:
        if not self.meter_prefix:
            raise ValueError("continuous profiling: meter_prefix must not be empty")
        for name in ("fetch_interval", "check_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"continuous profiling: {name} must be > 0")


@dataclass(frozen=True, slots=True)
class ProfilingConfig:
    active: bool = True
    check_interval: float = 10.0
    flush_interval: float = 5.0
    kernel_headers: str = ""  # empty: search the host for headers
    unwind: UnwindMode = UnwindMode.AUTO  # ours
    unwind_stack_bytes: int = 16384  # ours, no longer used (stacks are walked in the kernel)
    unwind_table_bytes: int = 64 << 20  # ours: kernel memory for eh_frame unwind rows
    task: TaskConfig = field(default_factory=TaskConfig)
    continuous: ContinuousConfig = field(default_factory=ContinuousConfig)


# The least each cache may be given (``cache.*``): below these a busy node's working set
# (one big library's symbols or CFI, one JIT's map, a deployment's owners) cannot fit.
MIN_CACHE_BYTES: dict[str, int] = {
    "symbol_table_bytes": 1 << 20,
    "cfi_table_bytes": 1 << 20,
    "perf_map_bytes": 1 << 20,
    "demangled_name_bytes": 64 << 10,
    "kubernetes_owner_bytes": 64 << 10,
}


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """``cache`` (ours): byte budgets of the agent's caches, each a least-recently-used
    cache that evicts beyond its budget (docs/architecture.md, "Memory bounds"). The
    defaults add up to 49 MiB, so the agent stays well under 120 MiB resident."""

    symbol_table_bytes: int = 20 << 20  # ELF symbol tables (rover.symbols.cache)
    cfi_table_bytes: int = 12 << 20  # decoded .eh_frame/.debug_frame tables (rover.unwind)
    perf_map_bytes: int = 12 << 20  # JIT perf maps of profiled processes
    demangled_name_bytes: int = 4 << 20  # demangled C++/Rust names
    kubernetes_owner_bytes: int = 1 << 20  # pods' owners read from the API server

    def __post_init__(self) -> None:
        for name, minimum in MIN_CACHE_BYTES.items():
            value = getattr(self, name)
            if value < minimum:
                raise ValueError(f"cache {name} must be at least {minimum}, got {value}")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    core: CoreConfig = field(default_factory=CoreConfig)
    process_discovery: ProcessDiscoveryConfig = field(default_factory=ProcessDiscoveryConfig)
    profiling: ProfilingConfig = field(default_factory=ProfilingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    source: str = ""  # the file this was loaded from
    # Rover settings this agent does not implement, found in the file: log them once
    # logging is set up (it cannot be before the logger section is read).
    warnings: tuple[str, ...] = ()
