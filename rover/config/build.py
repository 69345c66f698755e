"""From the YAML tree to :class:`AgentConfig`: one function per section, then checks
that need more than one value (a scanner in REGEX mode needs a command regex, ...).
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Mapping
from typing import Any

from rover.bpf.sample_rate import SampleRateTooHigh, check_sample_rate
from rover.config.errors import ConfigError
from rover.config.model import (
    MIN_CACHE_BYTES,
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
from rover.config.reader import Section
from rover.hostfs import HostFS

_LEVELS = {
    "trace": "TRACE",
    "debug": "DEBUG",
    "info": "INFO",
    "warn": "WARNING",
    "warning": "WARNING",
    "error": "ERROR",
    "fatal": "FATAL",
    "panic": "PANIC",
}
_FORMATS = {f.value: f for f in LogFormat}
_SCAN_MODES = {m.value: m for m in ScanMode}
_UNWIND_MODES = {m.value: m for m in UnwindMode}
_MAX_UNWIND_STACK_BYTES = 32768
_MIN_UNWIND_TABLE_BYTES = 1 << 20

# Rover features outside this agent's scope: accepted so a Rover file loads, then warned about.
_ROVER_ONLY_TOP = {
    "access_log": "Rover's access log module is not implemented by this agent",
    "pprof": "Rover's pprof module is not implemented by this agent (see core.health)",
}


def build_agent_config(tree: Any, env: Mapping[str, str], source: str = "") -> AgentConfig:
    root = Section.root(tree, env)
    logger = _logger(root.section("logger"))
    core = _core(root.section("core"))
    process_discovery = _process_discovery(root.section("process_discovery"))
    profiling = _profiling(root.section("profiling"), HostFS(core.host_root, core.proc_dir))
    cache = build_cache_config(root.section("cache"))
    root.finish(_ROVER_ONLY_TOP)
    return AgentConfig(
        logger=logger,
        core=core,
        process_discovery=process_discovery,
        profiling=profiling,
        cache=cache,
        source=source,
        warnings=tuple(root.warnings),
    )


def _logger(s: Section) -> LoggerConfig:
    d = LoggerConfig()
    config = LoggerConfig(
        level=s.choice("level", d.level, _LEVELS),
        format=s.choice("format", d.format, _FORMATS),
    )
    s.finish()
    return config


def _core(s: Section) -> CoreConfig:
    d = CoreConfig()
    config = CoreConfig(
        cluster_name=s.text("cluster_name", d.cluster_name),
        host_root=_absolute_path(s, "host_root", d.host_root, allow_empty=False),
        host_proc_mapping=_absolute_path(s, "host_proc_mapping", d.host_proc_mapping),
        backend=_backend(s.section("backend")),
        health=_health(s.section("health")),
    )
    s.finish()
    return config


def _backend(s: Section) -> BackendConfig:
    d = BackendConfig()
    config = BackendConfig(
        addr=s.required_text("addr", d.addr, "host:port of the OAP gRPC receiver"),
        enable_tls=s.boolean("enable_TLS", d.enable_tls),
        ca_pem_path=s.text("ca_pem_path", d.ca_pem_path),
        client_pem_path=s.text("client_pem_path", d.client_pem_path),
        client_key_path=s.text("client_key_path", d.client_key_path),
        insecure_skip_verify=s.boolean("insecure_skip_verify", d.insecure_skip_verify),
        check_period=s.duration("check_period", d.check_period),
        authentication=s.text("authentication", d.authentication),
        call_timeout=s.duration("call_timeout", d.call_timeout),
        upload_buffer_size=s.integer("upload_buffer_size", d.upload_buffer_size, minimum=1),
    )
    s.finish()
    if config.enable_tls:
        _check_tls_files(s, config)
    return config


def _check_tls_files(s: Section, config: BackendConfig) -> None:
    """Rover's start-up checks, here so the message names the key, not only the file."""
    _tls_file(s, "ca_pem_path", config.ca_pem_path)
    # Like Rover: the client pair is used (and checked) only when both halves are set.
    if config.client_pem_path and config.client_key_path:
        _tls_file(s, "client_pem_path", config.client_pem_path)
        _tls_file(s, "client_key_path", config.client_key_path)
    elif config.client_pem_path or config.client_key_path:
        s.warnings.append(
            f"{s.path}.client_pem_path, client_key_path: ignored, mutual TLS needs both"
        )


def _tls_file(s: Section, key: str, path: str) -> None:
    if not path:
        return
    if not os.path.isfile(path):
        raise s.fail(key, f"no such file {path!r} (TLS is enabled)")
    if os.path.getsize(path) == 0:
        raise s.fail(key, f"file {path!r} is empty (TLS is enabled)")


def _health(s: Section) -> HealthConfig:
    setting = s.setting("address")
    s.finish()
    if setting is None or not setting.text.strip():
        return HealthConfig()
    address = setting.text.strip()
    _, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise setting.error(f"expected host:port (or :port), got {setting.text!r}")
    return HealthConfig(address=address)


def _absolute_path(s: Section, key: str, default: str, allow_empty: bool = True) -> str:
    setting = s.setting(key)
    if setting is None:
        return default
    path = setting.text.strip()
    if not path and allow_empty:
        return ""
    if not path.startswith("/"):
        raise setting.error(f"expected an absolute path, got {setting.text!r}")
    return path


def _process_discovery(s: Section) -> ProcessDiscoveryConfig:
    d = ProcessDiscoveryConfig()
    config = ProcessDiscoveryConfig(
        heartbeat_period=s.duration("heartbeat_period", d.heartbeat_period),
        properties_report_period=s.integer(
            "properties_report_period", d.properties_report_period, minimum=1
        ),
        scanner=_scanner(s.section("scanner")),
        kubernetes=_kubernetes(s.section("kubernetes")),
    )
    s.finish()
    return config


def _scanner(s: Section) -> ScannerConfig:
    d = ScannerConfig()
    mode = s.choice("mode", d.mode, _SCAN_MODES)
    period = s.duration("period", d.period)
    agent_section = s.section("agent")
    agent = ScannerAgentConfig(
        process_status_refresh_period=agent_section.duration(
            "process_status_refresh_period", d.agent.process_status_refresh_period
        )
    )
    agent_section.finish()
    entries = s.sections("regex")
    finders = d.regex if entries is None else tuple(_regex_finder(e) for e in entries)
    s.finish()
    if mode is ScanMode.REGEX:
        _check_regex_finders(s, entries, finders)
    return ScannerConfig(mode=mode, period=period, agent=agent, regex=finders)


def _regex_finder(s: Section) -> RegexFinderConfig:
    d = RegexFinderConfig()
    config = RegexFinderConfig(
        match_cmd=s.text("match_cmd", d.match_cmd),
        layer=s.text("layer", d.layer).strip(),
        service_name=s.text("service_name", d.service_name),
        instance_name=s.text("instance_name", d.instance_name),
        process_name=s.text("process_name", d.process_name),
        labels=s.words("labels", d.labels),
    )
    s.finish()
    return config


def _check_regex_finders(
    s: Section, entries: list[Section] | None, finders: tuple[RegexFinderConfig, ...]
) -> None:
    """Rover refuses to start a REGEX scanner whose finders cannot work; so do we."""
    if not finders:
        raise s.fail("regex", "needs at least one finder when mode is REGEX")
    for index, finder in enumerate(finders):
        path = entries[index].path if entries else f"{s.path}.regex[{index}]"
        why = " (mode is REGEX)"
        if not finder.match_cmd:
            raise ConfigError(f"{path}.match_cmd: must not be empty{why}", key=f"{path}.match_cmd")
        try:
            re.compile(finder.match_cmd)
        except re.error as exc:
            raise ConfigError(
                f"{path}.match_cmd: invalid regular expression {finder.match_cmd!r}: {exc}",
                key=f"{path}.match_cmd",
            ) from None
        for key in ("layer", "service_name", "instance_name", "process_name"):
            if not getattr(finder, key).strip():
                raise ConfigError(f"{path}.{key}: must not be empty{why}", key=f"{path}.{key}")


def _kubernetes(s: Section) -> KubernetesConfig:
    d = KubernetesConfig()
    active = s.boolean("active", d.active)
    node_name = s.text("node_name", d.node_name).strip()
    namespaces = s.words("namespaces", d.namespaces)
    entries = s.sections("analyzers")
    analyzers = d.analyzers if entries is None else tuple(_analyzer(e) for e in entries)
    s.finish()
    if active:
        if not node_name:
            raise s.fail(
                "node_name",
                "must be set when Kubernetes discovery is active"
                " (e.g. ROVER_PROCESS_DISCOVERY_KUBERNETES_NODE_NAME from spec.nodeName)",
            )
        _check_analyzers(s, entries, analyzers)
    return KubernetesConfig(
        active=active, node_name=node_name, namespaces=namespaces, analyzers=analyzers
    )


def _analyzer(s: Section) -> AnalyzerConfig:
    d = AnalyzerConfig()
    config = AnalyzerConfig(
        active=s.boolean("active", d.active),
        filters=s.strings("filters", d.filters),
        layer=s.text("layer", d.layer).strip(),
        service_name=s.text("service_name", d.service_name),
        instance_name=s.text("instance_name", d.instance_name),
        process_name=s.text("process_name", d.process_name),
        labels=s.words("labels", d.labels),
    )
    s.finish()
    return config


def _check_analyzers(
    s: Section, entries: list[Section] | None, analyzers: tuple[AnalyzerConfig, ...]
) -> None:
    for index, analyzer in enumerate(analyzers):
        if not analyzer.active:
            continue
        path = entries[index].path if entries else f"{s.path}.analyzers[{index}]"
        for pos, expression in enumerate(analyzer.filters):
            if not expression:
                key = f"{path}.filters[{pos}]"
                raise ConfigError(f"{key}: must not be empty", key=key)
        for key in ("layer", "service_name", "instance_name", "process_name"):
            if not getattr(analyzer, key).strip():
                raise ConfigError(
                    f"{path}.{key}: must not be empty (the analyzer is active)", key=f"{path}.{key}"
                )


def _profiling(s: Section, hostfs: HostFS) -> ProfilingConfig:
    d = ProfilingConfig()
    config = ProfilingConfig(
        active=s.boolean("active", d.active),
        check_interval=s.duration("check_interval", d.check_interval),
        flush_interval=s.duration("flush_interval", d.flush_interval),
        kernel_headers=s.text("kernel_headers", d.kernel_headers).strip(),
        unwind=s.choice("unwind", d.unwind, _UNWIND_MODES),
        unwind_stack_bytes=_unwind_stack_bytes(s, d.unwind_stack_bytes),
        unwind_table_bytes=_unwind_table_bytes(s, d.unwind_table_bytes),
        task=_task(s.section("task"), hostfs),
        continuous=_continuous(s.section("continuous")),
    )
    s.finish()
    return config


def _unwind_stack_bytes(s: Section, default: int) -> int:
    found = s.setting("unwind_stack_bytes")
    if found is None:
        return default
    size = found.as_int(512)
    if size > _MAX_UNWIND_STACK_BYTES or size % 8:
        raise found.error(f"must be a multiple of 8 up to {_MAX_UNWIND_STACK_BYTES}, got {size}")
    if size != default:
        s.warnings.append(
            f"{s.path}.unwind_stack_bytes: ignored since stacks are walked in the kernel "
            "(profiling.unwind_table_bytes bounds what eh_frame unwinding holds)"
        )
    return size


def _unwind_table_bytes(s: Section, default: int) -> int:
    """Kernel memory for unwind rows: at least one busy library's worth."""
    found = s.setting("unwind_table_bytes")
    return default if found is None else found.as_int(_MIN_UNWIND_TABLE_BYTES)


def build_cache_config(s: Section) -> CacheConfig:
    """``cache``: byte budgets, whole numbers of bytes, each at least its minimum."""
    d = CacheConfig()
    config = CacheConfig(
        **{
            name: _byte_budget(s, name, getattr(d, name), minimum)
            for name, minimum in MIN_CACHE_BYTES.items()
        }
    )
    s.finish()
    return config


def _byte_budget(s: Section, key: str, default: int, minimum: int) -> int:
    found = s.setting(key)
    if found is None:
        return default
    size = found.as_int()
    if size < minimum:
        raise found.error(
            f"must be at least {minimum} bytes ({_size(minimum)}), got {found.text!r}"
        )
    return size


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _task(s: Section, hostfs: HostFS) -> TaskConfig:
    on_cpu = s.section("on_cpu")
    network = s.section("network")
    config = TaskConfig(on_cpu=_on_cpu(on_cpu, hostfs), network=_network(network))
    on_cpu.finish()
    network.finish()
    s.finish()
    return config


MAX_CAPTURE_BYTES = 4096  # the BPF program's scratch buffer


def _network(s: Section) -> NetworkConfig:
    d = NetworkConfig()
    analyze = s.section("protocol_analyze")
    sampling = analyze.section("sampling")
    http = sampling.section("http")
    da = d.protocol_analyze
    capture = analyze.integer("capture_bytes", da.capture_bytes, minimum=16)
    if capture > MAX_CAPTURE_BYTES:
        raise analyze.fail("capture_bytes", f"must be at most {MAX_CAPTURE_BYTES}, got {capture}")
    config = NetworkConfig(
        report_interval=s.duration("report_interval", d.report_interval),
        meter_prefix=s.required_text(
            "meter_prefix", d.meter_prefix, "the backend's meter rules expect a name"
        ),
        max_connections=s.integer("max_connections", d.max_connections, minimum=16),
        protocol_analyze=ProtocolAnalyzeConfig(
            per_cpu_buffer=analyze.byte_size("per_cpu_buffer", da.per_cpu_buffer, 4096),
            parallels=analyze.integer("parallels", da.parallels, minimum=1),
            queue_size=analyze.integer("queue_size", da.queue_size, minimum=1),
            capture_bytes=capture,
            sampling_http=HttpSamplingConfig(
                default_request_encoding=_encoding(
                    http, "default_request_encoding", da.sampling_http.default_request_encoding
                ),
                default_response_encoding=_encoding(
                    http, "default_response_encoding", da.sampling_http.default_response_encoding
                ),
            ),
        ),
    )
    for section in (http, sampling, analyze):
        section.finish()
    return config


def _encoding(s: Section, key: str, default: str) -> str:
    name = s.text(key, default).strip() or default
    try:
        codecs.lookup(name)
    except LookupError:
        raise s.fail(key, f"unknown character encoding {name!r}") from None
    return name


def _on_cpu(s: Section, hostfs: HostFS) -> OnCpuConfig:
    """The sampling period, checked against the host kernel's rate limit: above it every
    ON_CPU task would fail to attach, with no word about the period."""
    found = s.setting("dump_period")
    if found is None:
        return OnCpuConfig()
    period = found.as_duration()
    if period <= 0:  # below a nanosecond rounds to zero
        raise found.error(f"must be at least 1ns, got {found.text!r}")
    config = OnCpuConfig(dump_period=period)
    try:
        check_sample_rate(config.frequency, hostfs)
    except SampleRateTooHigh as exc:
        raise found.error(
            f"{found.text.strip()} gives {exc}; use {exc.shortest_period} or longer"
        ) from None
    return config


def _continuous(s: Section) -> ContinuousConfig:
    d = ContinuousConfig()
    trigger = s.section("trigger")
    config = ContinuousConfig(
        meter_prefix=s.required_text(
            "meter_prefix", d.meter_prefix, "the backend's meter rules expect a name"
        ),
        fetch_interval=s.duration("fetch_interval", d.fetch_interval),
        check_interval=s.duration("check_interval", d.check_interval),
        trigger=TriggerConfig(
            execute_duration=trigger.duration("execute_duration", d.trigger.execute_duration),
            silence_duration=trigger.duration(
                "silence_duration", d.trigger.silence_duration, allow_zero=True
            ),
        ),
    )
    trigger.finish()
    s.finish()
    return config
