"""The agent configuration: shipped defaults, Rover's environment names, typing, errors."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from rover.config import (
    DEFAULT_ANALYZERS,
    SHIPPED_CONFIG,
    AgentConfig,
    ConfigError,
    LogFormat,
    ScanMode,
    load_cache_config,
    load_config,
)
from rover.config.placeholders import PlaceholderError, placeholder_names, resolve

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
ANALYZER = "ROVER_PROCESS_DISCOVERY_KUBERNETES_ANALYZER_"
REGEX = "ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_"


def shipped(**env: str) -> AgentConfig:
    """The shipped file read with exactly ``env`` as the environment."""
    return load_config(None, env)


def write(tmp_path: Path, text: str, name: str = "rover.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _scalars(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [text for value in node.values() for text in _scalars(value)]
    if isinstance(node, list):
        return [text for item in node for text in _scalars(item)]
    return [node]


def shipped_env_names() -> list[str]:
    """Environment names in the values of the shipped file (walking the YAML, not comments)."""
    tree = yaml.load(SHIPPED_CONFIG.read_text(), Loader=yaml.BaseLoader)
    return [name for text in _scalars(tree) for name in placeholder_names(text)]


def error_of(**env: str) -> str:
    with pytest.raises(ConfigError) as info:
        shipped(**env)
    return str(info.value)


# --- shipped defaults --------------------------------------------------------------------


def test_shipped_file_equals_the_code_defaults():
    config = shipped()
    assert config.source == str(SHIPPED_CONFIG)
    assert config.warnings == ()
    assert dataclasses.replace(config, source="") == AgentConfig()


def test_shipped_defaults_are_rovers():
    c = shipped()
    assert c.logger.level == "INFO"
    assert c.logger.format is LogFormat.TEXT
    assert c.core.cluster_name == ""
    assert c.core.host_root == "/"
    assert c.core.proc_dir == "/proc"
    b = c.core.backend
    assert (b.addr, b.enable_tls, b.insecure_skip_verify) == ("localhost:11800", False, False)
    assert (b.ca_pem_path, b.client_pem_path, b.client_key_path, b.authentication) == ("",) * 4
    assert b.check_period == 5.0
    assert (b.call_timeout, b.upload_buffer_size) == (10.0, 100_000)
    assert c.core.health.address == ""
    pd = c.process_discovery
    assert (pd.heartbeat_period, pd.properties_report_period) == (20.0, 10)
    assert (pd.scanner.mode, pd.scanner.period) == (ScanMode.AGENT_SENSOR, 3.0)
    assert not pd.scanner.active
    assert pd.scanner.agent.process_status_refresh_period == 60.0
    (finder,) = pd.scanner.regex
    assert finder.match_cmd == "" and finder.layer == "OS_LINUX" and finder.service_name == ""
    assert finder.instance_name == "{{.Rover.HostName}}"  # ours: Rover's "en0" fails on Linux
    assert finder.process_name == "{{.Process.ExeName}}"
    assert finder.labels == ()
    k8s = pd.kubernetes
    assert (k8s.active, k8s.node_name, k8s.namespaces) == (False, "", ())
    p = c.profiling
    assert (p.active, p.check_interval, p.flush_interval, p.kernel_headers) == (True, 10, 5, "")
    assert p.task.on_cpu.dump_period == 0.009
    cont = p.continuous
    assert (cont.meter_prefix, cont.fetch_interval, cont.check_interval) == ("rover_con_p", 1, 5)
    assert (cont.trigger.execute_duration, cont.trigger.silence_duration) == (600, 1200)


def test_shipped_analyzers_are_rovers_three():
    """Current Rover's service names, ``<name>.<namespace>`` (the spec, section 4.2)."""
    envoy, application, service = shipped().process_discovery.kubernetes.analyzers
    istio_name = (
        '{{.Pod.LabelValue "service.istio.io/canonical-name,app.kubernetes.io/name,app" ""}}'
        ".{{.Pod.Namespace}}"
    )
    assert envoy.active and application.active and service.active
    assert envoy.filters == ('.Pod.HasContainer "istio-proxy"', 'eq .Container.Name "istio-proxy"')
    assert (envoy.layer, envoy.service_name, envoy.labels) == (
        "MESH_DP",
        istio_name,
        ("mesh-envoy",),
    )
    assert application.filters == (
        '.Pod.HasContainer "istio-proxy"',
        'ne .Container.Name "istio-proxy"',
    )
    assert (application.layer, application.service_name) == ("MESH", istio_name)
    assert application.labels == ("mesh-application",)
    assert service.filters == (".Pod.HasServiceName",)
    assert service.layer == "K8S_SERVICE"
    assert service.service_name == "{{.Pod.ServiceName}}.{{.Pod.Namespace}}"
    assert service.labels == ("k8s-service",)
    for analyzer in (envoy, application, service):
        assert analyzer.instance_name == "{{.Pod.Name}}"
        assert analyzer.process_name == "{{.Process.ExeName}}"
    assert (envoy, application, service) == DEFAULT_ANALYZERS


# --- every environment name overrides its default ------------------------------------------


def _analyzer(index: int, field: str) -> Callable[[AgentConfig], Any]:
    return lambda c: getattr(c.process_discovery.kubernetes.analyzers[index], field)


def _finder(field: str) -> Callable[[AgentConfig], Any]:
    return lambda c: getattr(c.process_discovery.scanner.regex[0], field)


OVERRIDES: list[tuple[str, str, Callable[[AgentConfig], Any], Any]] = [
    ("ROVER_LOGGER_LEVEL", "debug", lambda c: c.logger.level, "DEBUG"),
    ("ROVER_LOGGER_LEVEL", "warn", lambda c: c.logger.level, "WARNING"),
    ("ROVER_LOGGER_FORMAT", "json", lambda c: c.logger.format, LogFormat.JSON),
    ("ROVER_CORE_CLUSTER_NAME", "prod", lambda c: c.core.cluster_name, "prod"),
    ("ROVER_HOST_MAPPING", "/host", lambda c: c.core.proc_dir, "/host/proc"),
    ("ROVER_HOST_PROC_MAPPING", "/hp", lambda c: c.core.proc_dir, "/hp"),
    ("ROVER_BACKEND_ADDR", "oap:11800", lambda c: c.core.backend.addr, "oap:11800"),
    ("ROVER_BACKEND_ENABLE_TLS", "true", lambda c: c.core.backend.enable_tls, True),
    (
        "ROVER_BACKEND_INSECURE_SKIP_VERIFY",
        "TRUE",
        lambda c: c.core.backend.insecure_skip_verify,
        True,
    ),
    ("ROVER_BACKEND_CA_PEM_PATH", "/ca.pem", lambda c: c.core.backend.ca_pem_path, "/ca.pem"),
    ("ROVER_BACKEND_PEM_PATH", "/c.pem", lambda c: c.core.backend.client_pem_path, "/c.pem"),
    ("ROVER_BACKEND_KEY_PATH", "/c.key", lambda c: c.core.backend.client_key_path, "/c.key"),
    ("ROVER_BACKEND_CHECK_PERIOD", "7", lambda c: c.core.backend.check_period, 7.0),
    ("ROVER_BACKEND_AUTHENTICATION", "tok", lambda c: c.core.backend.authentication, "tok"),
    ("ROVER_BACKEND_CALL_TIMEOUT", "500ms", lambda c: c.core.backend.call_timeout, 0.5),
    ("ROVER_BACKEND_UPLOAD_BUFFER_SIZE", "5", lambda c: c.core.backend.upload_buffer_size, 5),
    ("ROVER_HEALTH_ADDRESS", ":8080", lambda c: c.core.health.address, ":8080"),
    (
        "ROVER_PROCESS_DISCOVERY_HEARTBEAT_PERIOD",
        "1m",
        lambda c: c.process_discovery.heartbeat_period,
        60.0,
    ),
    (
        "ROVER_PROCESS_DISCOVERY_PROPERTIES_REPORT_PERIOD",
        "3",
        lambda c: c.process_discovery.properties_report_period,
        3,
    ),
    (
        "ROVER_PROCESS_DISCOVERY_SCAN_MODE",
        "regex",
        lambda c: c.process_discovery.scanner.mode,
        ScanMode.REGEX,
    ),
    (
        "ROVER_PROCESS_DISCOVERY_SCAN_PERIOD",
        "10s",
        lambda c: c.process_discovery.scanner.period,
        10.0,
    ),
    (
        "ROVER_PROCESS_DISCOVERY_AGENT_PROCESS_STATUS_REFRESH_PERIOD",
        "2m",
        lambda c: c.process_discovery.scanner.agent.process_status_refresh_period,
        120.0,
    ),
    (REGEX + "MATCH_CMD", "^java .*", _finder("match_cmd"), "^java .*"),
    (REGEX + "LAYER", "GENERAL", _finder("layer"), "GENERAL"),
    (REGEX + "SERVICE_NAME", "svc", _finder("service_name"), "svc"),
    (
        REGEX + "INSTANCE_NAME",
        '{{.Rover.HostIPV4 "eth0"}}',
        _finder("instance_name"),
        '{{.Rover.HostIPV4 "eth0"}}',
    ),
    (REGEX + "PROCESS_NAME", "p", _finder("process_name"), "p"),
    (REGEX + "LABELS", "a, b,,c", _finder("labels"), ("a", "b", "c")),
    (
        "ROVER_PROCESS_DISCOVERY_KUBERNETES_ACTIVE",
        "true",
        lambda c: c.process_discovery.kubernetes.active,
        True,
    ),
    (
        "ROVER_PROCESS_DISCOVERY_KUBERNETES_NODE_NAME",
        "node-1",
        lambda c: c.process_discovery.kubernetes.node_name,
        "node-1",
    ),
    (
        "ROVER_PROCESS_DISCOVERY_KUBERNETES_NAMESPACES",
        "default,shop",
        lambda c: c.process_discovery.kubernetes.namespaces,
        ("default", "shop"),
    ),
    (ANALYZER + "ISTIO_ENVOY_ACTIVE", "false", _analyzer(0, "active"), False),
    (
        ANALYZER + "ISTIO_ENVOY_HAS_ENVOY",
        "x",
        lambda c: c.process_discovery.kubernetes.analyzers[0].filters[0],
        "x",
    ),
    (
        ANALYZER + "ISTIO_ENVOY_CONTAINER_IS_ENVOY",
        "y",
        lambda c: c.process_discovery.kubernetes.analyzers[0].filters[1],
        "y",
    ),
    (ANALYZER + "ISTIO_ENVOY_LAYER", "L", _analyzer(0, "layer"), "L"),
    (ANALYZER + "ISTIO_ENVOY_SERVICE_NAME", "s", _analyzer(0, "service_name"), "s"),
    (ANALYZER + "ISTIO_ENVOY_INSTANCE_NAME", "i", _analyzer(0, "instance_name"), "i"),
    (ANALYZER + "ISTIO_ENVOY_PROCESS_NAME", "p", _analyzer(0, "process_name"), "p"),
    (ANALYZER + "ISTIO_ENVOY_LABELS", "e1,e2", _analyzer(0, "labels"), ("e1", "e2")),
    (ANALYZER + "ISTIO_APPLICATION_ACTIVE", "false", _analyzer(1, "active"), False),
    (
        ANALYZER + "ISTIO_APPLICATION_HAS_ENVOY",
        "x",
        lambda c: c.process_discovery.kubernetes.analyzers[1].filters[0],
        "x",
    ),
    (
        ANALYZER + "ISTIO_APPLICATION_CONTAINER_NOT_ENVOY",
        "y",
        lambda c: c.process_discovery.kubernetes.analyzers[1].filters[1],
        "y",
    ),
    (ANALYZER + "ISTIO_APPLICATION_LAYER", "L", _analyzer(1, "layer"), "L"),
    (ANALYZER + "ISTIO_APPLICATION_SERVICE_NAME", "s", _analyzer(1, "service_name"), "s"),
    (ANALYZER + "ISTIO_APPLICATION_INSTANCE_NAME", "i", _analyzer(1, "instance_name"), "i"),
    (ANALYZER + "ISTIO_APPLICATION_PROCESS_NAME", "p", _analyzer(1, "process_name"), "p"),
    (ANALYZER + "ISTIO_APPLICATION_LABELS", "a", _analyzer(1, "labels"), ("a",)),
    (ANALYZER + "K8S_SERVICE_ACTIVE", "false", _analyzer(2, "active"), False),
    (
        ANALYZER + "K8S_SERVICE_HAS_SERVICE",
        "x",
        lambda c: c.process_discovery.kubernetes.analyzers[2].filters[0],
        "x",
    ),
    (ANALYZER + "K8S_SERVICE_LAYER", "L", _analyzer(2, "layer"), "L"),
    (ANALYZER + "K8S_SERVICE_NAME", "s", _analyzer(2, "service_name"), "s"),
    (ANALYZER + "K8S_SERVICE_INSTANCE_NAME", "i", _analyzer(2, "instance_name"), "i"),
    (ANALYZER + "K8S_SERVICE_PROCESS_NAME", "p", _analyzer(2, "process_name"), "p"),
    (ANALYZER + "K8S_SERVICE_LABLES", "k", _analyzer(2, "labels"), ("k",)),
    ("ROVER_PROFILING_ACTIVE", "false", lambda c: c.profiling.active, False),
    ("ROVER_PROFILING_CHECK_INTERVAL", "30s", lambda c: c.profiling.check_interval, 30.0),
    ("ROVER_PROFILING_FLUSH_INTERVAL", "2s", lambda c: c.profiling.flush_interval, 2.0),
    ("ROVER_PROFILING_KERNEL_HEADERS", "/kh", lambda c: c.profiling.kernel_headers, "/kh"),
    ("ROVER_PROFILING_UNWIND", "eh_frame", lambda c: c.profiling.unwind, "eh_frame"),
    ("ROVER_PROFILING_UNWIND_STACK_BYTES", "8192", lambda c: c.profiling.unwind_stack_bytes, 8192),
    (
        "ROVER_PROFILING_UNWIND_TABLE_BYTES",
        "33554432",
        lambda c: c.profiling.unwind_table_bytes,
        32 << 20,
    ),
    (
        "ROVER_PROFILING_TASK_ON_CPU_DUMP_PERIOD",
        "10ms",
        lambda c: c.profiling.task.on_cpu.dump_period,
        0.01,
    ),
    (
        "ROVER_PROFILING_CONTINUOUS_METER_PREFIX",
        "my_p",
        lambda c: c.profiling.continuous.meter_prefix,
        "my_p",
    ),
    (
        "ROVER_PROFILING_CONTINUOUS_FETCH_INTERVAL",
        "2s",
        lambda c: c.profiling.continuous.fetch_interval,
        2.0,
    ),
    (
        "ROVER_PROFILING_CONTINUOUS_CHECK_INTERVAL",
        "15s",
        lambda c: c.profiling.continuous.check_interval,
        15.0,
    ),
    (
        "ROVER_PROFILING_CONTINUOUS_TRIGGER_EXECUTE_DURATION",
        "1m",
        lambda c: c.profiling.continuous.trigger.execute_duration,
        60.0,
    ),
    (
        "ROVER_PROFILING_CONTINUOUS_TRIGGER_SILENCE_DURATION",
        "1h",
        lambda c: c.profiling.continuous.trigger.silence_duration,
        3600.0,
    ),
    (
        "ROVER_PROFILING_TASK_NETWORK_TOPOLOGY_REPORT_INTERVAL",
        "5s",
        lambda c: c.profiling.task.network.report_interval,
        5.0,
    ),
    (
        "ROVER_PROFILING_TASK_NETWORK_TOPOLOGY_METER_PREFIX",
        "net_p",
        lambda c: c.profiling.task.network.meter_prefix,
        "net_p",
    ),
    (
        "ROVER_PROFILING_TASK_NETWORK_MAX_CONNECTIONS",
        "1000",
        lambda c: c.profiling.task.network.max_connections,
        1000,
    ),
    (
        "ROVER_PROFILING_TASK_NETWORK_PROTOCOL_ANALYZE_PER_CPU_BUFFER",
        "1MB",
        lambda c: c.profiling.task.network.protocol_analyze.per_cpu_buffer,
        1 << 20,
    ),
    (
        "ROVER_PROFILING_TASK_NETWORK_PROTOCOL_ANALYZE_PARALLELS",
        "4",
        lambda c: c.profiling.task.network.protocol_analyze.parallels,
        4,
    ),
    (
        "ROVER_PROFILING_TASK_NETWORK_PROTOCOL_ANALYZE_QUEUE_SIZE",
        "100",
        lambda c: c.profiling.task.network.protocol_analyze.queue_size,
        100,
    ),
    (
        "ROVER_PROFILING_TASK_NETWORK_PROTOCOL_ANALYZE_CAPTURE_BYTES",
        "256",
        lambda c: c.profiling.task.network.protocol_analyze.capture_bytes,
        256,
    ),
    (
        "ROVER_PROFILING_TASK_NETWORK_PROTOCOL_ANALYZE_SAMPLING_HTTP_DEFAULT_REQUEST_ENCODING",
        "GBK",
        lambda c: c.profiling.task.network.protocol_analyze.sampling_http.default_request_encoding,
        "GBK",
    ),
    (
        "ROVER_PROFILING_TASK_NETWORK_PROTOCOL_ANALYZE_SAMPLING_HTTP_DEFAULT_RESPONSE_ENCODING",
        "GBK",
        lambda c: c.profiling.task.network.protocol_analyze.sampling_http.default_response_encoding,
        "GBK",
    ),
    ("ROVER_CACHE_SYMBOL_TABLE_BYTES", "1048576", lambda c: c.cache.symbol_table_bytes, 1 << 20),
    ("ROVER_CACHE_CFI_TABLE_BYTES", "33554432", lambda c: c.cache.cfi_table_bytes, 32 << 20),
    ("ROVER_CACHE_PERF_MAP_BYTES", "2097152", lambda c: c.cache.perf_map_bytes, 2 << 20),
    (
        "ROVER_CACHE_DEMANGLED_NAME_BYTES",
        "65536",
        lambda c: c.cache.demangled_name_bytes,
        64 << 10,
    ),
    (
        "ROVER_CACHE_KUBERNETES_OWNER_BYTES",
        "200000",
        lambda c: c.cache.kubernetes_owner_bytes,
        200_000,
    ),
]

# Settings that are only valid together with others (checked at load time).
_COMPANIONS = {
    "ROVER_PROCESS_DISCOVERY_KUBERNETES_ACTIVE": {
        "ROVER_PROCESS_DISCOVERY_KUBERNETES_NODE_NAME": "node-1"
    },
    "ROVER_PROCESS_DISCOVERY_SCAN_MODE": {REGEX + "MATCH_CMD": "java", REGEX + "SERVICE_NAME": "s"},
}


@pytest.mark.parametrize(
    ("name", "value", "read", "expected"),
    OVERRIDES,
    ids=[f"{case[0]}={case[1]}" for case in OVERRIDES],
)
def test_environment_variable_overrides_the_shipped_default(name, value, read, expected):
    default = read(shipped(**_COMPANIONS.get(name, {})))
    assert default != expected
    assert read(shipped(**{name: value}, **_COMPANIONS.get(name, {}))) == expected


def test_every_placeholder_of_the_shipped_file_is_covered_by_an_override_test():
    named = set(shipped_env_names())
    assert named == {case[0] for case in OVERRIDES}


def test_empty_environment_variable_counts_as_unset_like_rover():
    config = shipped(ROVER_BACKEND_ADDR="", ROVER_PROFILING_CHECK_INTERVAL="")
    assert config.core.backend.addr == "localhost:11800"
    assert config.profiling.check_interval == 10.0


def test_rover_config_env_picks_the_file(tmp_path):
    path = write(tmp_path, "core:\n  backend:\n    addr: picked:1\n")
    assert load_config(None, {"ROVER_CONFIG": path}).core.backend.addr == "picked:1"
    assert load_config(None, {"ROVER_CONFIG": ""}).source == str(SHIPPED_CONFIG)


def test_keys_left_out_of_a_custom_file_take_the_defaults(tmp_path):
    config = load_config(write(tmp_path, "profiling:\n  check_interval: 1s\n"), {})
    assert config.profiling.check_interval == 1.0
    assert (
        dataclasses.replace(config, source="", profiling=AgentConfig().profiling) == AgentConfig()
    )
    assert load_config(write(tmp_path, "", "empty.yaml"), {}).core == AgentConfig().core


# --- typing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("20m", 1200.0), ("1h", 3600.0), ("1.5h", 5400.0), ("7", 7.0)],
)
def test_durations_parse(text, seconds):
    assert shipped(ROVER_PROFILING_FLUSH_INTERVAL=text).profiling.flush_interval == seconds


@pytest.mark.parametrize(("text", "value"), [("t", True), ("1", True), ("F", False), ("0", False)])
def test_booleans_accept_gos_parsebool_spellings(text, value):
    assert shipped(ROVER_PROFILING_ACTIVE=text).profiling.active is value


def test_file_scalars_are_typed_like_environment_values(tmp_path):
    # YAML 1.1 would read "yes" as true; Rover's and our rule is true/false only.
    path = write(tmp_path, "core:\n  backend:\n    enable_TLS: yes\n")
    with pytest.raises(ConfigError, match=r"core\.backend\.enable_TLS: expected true or false"):
        load_config(path, {})


def test_lists_accept_yaml_lists(tmp_path):
    path = write(
        tmp_path,
        "process_discovery:\n  kubernetes:\n    namespaces: [a, 'b,c']\n    analyzers:\n"
        "      - layer: L\n        labels: [x, y]\n        filters: .Pod.HasServiceName\n",
    )
    k8s = load_config(path, {}).process_discovery.kubernetes
    assert k8s.namespaces == ("a", "b", "c")
    (analyzer,) = k8s.analyzers
    assert analyzer.labels == ("x", "y")
    assert analyzer.filters == (".Pod.HasServiceName",)
    assert analyzer.active and analyzer.service_name == ""


def test_keys_match_case_insensitively_like_rover(tmp_path):
    path = write(tmp_path, "core:\n  backend:\n    ENABLE_tls: 'true'\n")
    assert load_config(path, {}).core.backend.enable_tls is True


# --- bad values name key and value -----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"ROVER_PROFILING_CHECK_INTERVAL": "abc"},
            "profiling.check_interval: invalid duration 'abc'",
        ),
        (
            {"ROVER_BACKEND_ENABLE_TLS": "yes please"},
            "core.backend.enable_TLS: expected true or false, got 'yes please'",
        ),
        (
            {"ROVER_PROCESS_DISCOVERY_PROPERTIES_REPORT_PERIOD": "ten"},
            "process_discovery.properties_report_period: expected a whole number, got 'ten'",
        ),
        (
            {"ROVER_PROCESS_DISCOVERY_PROPERTIES_REPORT_PERIOD": "0"},
            "process_discovery.properties_report_period: must be at least 1, got '0'",
        ),
        (
            {"ROVER_BACKEND_UPLOAD_BUFFER_SIZE": "0"},
            "core.backend.upload_buffer_size: must be at least 1, got '0'",
        ),
        (
            {"ROVER_PROCESS_DISCOVERY_HEARTBEAT_PERIOD": "0s"},
            "process_discovery.heartbeat_period: must be greater than zero, got '0s'",
        ),
        (
            {"ROVER_PROFILING_CONTINUOUS_FETCH_INTERVAL": "-1s"},
            "profiling.continuous.fetch_interval: invalid duration '-1s'",
        ),
        (
            {"ROVER_PROFILING_TASK_ON_CPU_DUMP_PERIOD": "9 parsecs"},
            "profiling.task.on_cpu.dump_period: invalid duration '9 parsecs'",
        ),
        ({"ROVER_LOGGER_LEVEL": "loud"}, "logger.level: expected one of trace, debug"),
        ({"ROVER_LOGGER_FORMAT": "xml"}, "logger.format: expected one of text, json, got 'xml'"),
        (
            {"ROVER_PROCESS_DISCOVERY_SCAN_MODE": "magic"},
            "process_discovery.scanner.mode: expected one of REGEX, AGENT_SENSOR, got 'magic'",
        ),
        ({"ROVER_HEALTH_ADDRESS": "nowhere"}, "core.health.address: expected host:port"),
        ({"ROVER_HOST_MAPPING": "host"}, "core.host_root: expected an absolute path, got 'host'"),
        ({"ROVER_BACKEND_ADDR": " "}, "core.backend.addr: must not be empty"),
        (
            {"ROVER_PROFILING_CONTINUOUS_METER_PREFIX": " "},
            "profiling.continuous.meter_prefix: must not be empty",
        ),
    ],
)
def test_bad_value_names_key_and_value(env, message):
    text = error_of(**env)
    assert text.startswith(message)
    (name,) = env
    assert f"(from {name})" in text


def host_with_sample_rate_limit(tmp_path: Path, limit: int) -> str:
    """A host root whose /proc says the kernel allows ``limit`` samples per second."""
    path = tmp_path / "proc/sys/kernel/perf_event_max_sample_rate"
    path.parent.mkdir(parents=True)
    path.write_text(f"{limit}\n")
    return str(tmp_path)


@pytest.mark.parametrize(
    ("period", "message"),
    [
        ("1ns", "1ns gives 1000000000 samples per second, above the kernel's limit of 2000"),
        ("400us", "400us gives 2500 samples per second, above the kernel's limit of 2000"),
        ("0.1ns", "must be at least 1ns"),
    ],
)
def test_dump_period_above_the_host_kernels_sample_rate_is_refused(tmp_path, period, message):
    root = host_with_sample_rate_limit(tmp_path, 2000)
    with pytest.raises(ConfigError) as info:
        shipped(ROVER_HOST_MAPPING=root, ROVER_PROFILING_TASK_ON_CPU_DUMP_PERIOD=period)
    assert info.value.key == "profiling.task.on_cpu.dump_period"
    assert message in str(info.value)
    if "kernel" in message:
        assert "use 500us or longer" in str(info.value)


def test_dump_period_within_the_host_kernels_sample_rate_is_kept(tmp_path):
    root = host_with_sample_rate_limit(tmp_path, 2000)
    config = shipped(ROVER_HOST_MAPPING=root, ROVER_PROFILING_TASK_ON_CPU_DUMP_PERIOD="500us")
    assert config.profiling.task.on_cpu.frequency == 2000


def test_error_carries_the_key():
    with pytest.raises(ConfigError) as info:
        shipped(ROVER_PROFILING_FLUSH_INTERVAL="soon")
    assert info.value.key == "profiling.flush_interval"


def test_bad_value_in_the_file_names_key_and_value(tmp_path):
    path = write(tmp_path, "profiling:\n  continuous:\n    trigger:\n      execute_duration: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith(
        "profiling.continuous.trigger.execute_duration: invalid duration 'x'"
    )
    assert "(from" not in str(info.value)


def test_silence_duration_may_be_zero():
    assert (
        shipped(
            ROVER_PROFILING_CONTINUOUS_TRIGGER_SILENCE_DURATION="0"
        ).profiling.continuous.trigger.silence_duration
        == 0
    )


def test_section_given_a_value_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^core\.backend: expected a section of keys, got 'x'"):
        load_config(write(tmp_path, "core:\n  backend: x\n"), {})


def test_list_given_for_a_single_value_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^core\.backend\.addr: expected a single value"):
        load_config(write(tmp_path, "core:\n  backend:\n    addr: [a, b]\n"), {})


# --- checks that involve several values ------------------------------------------------------


def test_regex_mode_needs_a_command_regex():
    text = error_of(ROVER_PROCESS_DISCOVERY_SCAN_MODE="REGEX")
    assert text.startswith("process_discovery.scanner.regex[0].match_cmd: must not be empty")


def test_regex_mode_rejects_a_broken_regex():
    text = error_of(
        ROVER_PROCESS_DISCOVERY_SCAN_MODE="REGEX",
        ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_MATCH_CMD="java(",
        ROVER_PROCESS_DISCOVERY_REGEX_SCANNER_SERVICE_NAME="svc",
    )
    assert text.startswith(
        "process_discovery.scanner.regex[0].match_cmd: invalid regular expression 'java('"
    )


def test_regex_mode_needs_a_service_name():
    text = error_of(ROVER_PROCESS_DISCOVERY_SCAN_MODE="REGEX", **{REGEX + "MATCH_CMD": "java"})
    assert text.startswith("process_discovery.scanner.regex[0].service_name: must not be empty")


def test_regex_mode_with_a_finder_is_active():
    scanner = shipped(
        ROVER_PROCESS_DISCOVERY_SCAN_MODE="REGEX",
        **{REGEX + "MATCH_CMD": "java", REGEX + "SERVICE_NAME": "svc"},
    ).process_discovery.scanner
    assert scanner.active


def test_regex_mode_needs_at_least_one_finder(tmp_path):
    path = write(tmp_path, "process_discovery:\n  scanner:\n    mode: REGEX\n    regex: []\n")
    with pytest.raises(ConfigError, match=r"^process_discovery\.scanner\.regex: needs at least"):
        load_config(path, {})


def test_kubernetes_discovery_needs_the_node_name():
    text = error_of(ROVER_PROCESS_DISCOVERY_KUBERNETES_ACTIVE="true")
    assert text.startswith("process_discovery.kubernetes.node_name: must be set")
    assert "ROVER_PROCESS_DISCOVERY_KUBERNETES_NODE_NAME" in text


def test_active_analyzer_needs_its_names(tmp_path):
    path = write(
        tmp_path,
        "process_discovery:\n  kubernetes:\n    active: true\n    node_name: n\n"
        "    analyzers:\n      - layer: L\n        service_name: s\n        instance_name: i\n",
    )
    with pytest.raises(ConfigError, match=r"analyzers\[0\]\.process_name: must not be empty"):
        load_config(path, {})


def test_tls_files_must_exist_and_not_be_empty(tmp_path):
    empty = tmp_path / "ca.pem"
    empty.write_text("")
    text = error_of(ROVER_BACKEND_ENABLE_TLS="true", ROVER_BACKEND_CA_PEM_PATH=str(tmp_path / "x"))
    assert text.startswith("core.backend.ca_pem_path: no such file")
    text = error_of(ROVER_BACKEND_ENABLE_TLS="true", ROVER_BACKEND_CA_PEM_PATH=str(empty))
    assert text.startswith("core.backend.ca_pem_path: file") and "is empty" in text
    empty.write_text("-----BEGIN CERTIFICATE-----\n")
    tls = shipped(ROVER_BACKEND_ENABLE_TLS="true", ROVER_BACKEND_CA_PEM_PATH=str(empty))
    assert tls.core.backend.ca_pem_path == str(empty)
    # A lone client certificate is ignored with a warning, as Rover ignores it.
    lone = shipped(ROVER_BACKEND_ENABLE_TLS="true", ROVER_BACKEND_PEM_PATH="/nope.pem")
    assert lone.warnings == (
        "core.backend.client_pem_path, client_key_path: ignored, mutual TLS needs both",
    )
    text = error_of(
        ROVER_BACKEND_ENABLE_TLS="true",
        ROVER_BACKEND_PEM_PATH=str(empty),
        ROVER_BACKEND_KEY_PATH="/nope.key",
    )
    assert text.startswith("core.backend.client_key_path: no such file '/nope.key'")
    # Without TLS the paths are not used, so they are not checked (as in Rover).
    assert shipped(ROVER_BACKEND_CA_PEM_PATH="/nope").core.backend.ca_pem_path == "/nope"


# --- files, YAML and unknown keys ------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: configuration file not found"):
        load_config(str(tmp_path / "nope.yaml"), {})


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read configuration file"):
        load_config(str(tmp_path), {})


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "core:\n  backend:\n    addr: [oops\n  health: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    text = str(info.value)
    assert text.startswith(f"{path}: invalid YAML at line ")
    assert re.search(r"line \d+, column \d+", text)


def test_invalid_yaml_shows_the_line(tmp_path):
    path = write(tmp_path, "logger:\n  level: INFO\n   format: text\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert "invalid YAML at line 3" in str(info.value)
    assert "format: text" in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"), {})


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, "core:\n  cluster_name: a\n  cluster_name: b\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'cluster_name' \(first on line 2\)"):
        load_config(path, {})


def test_same_key_in_two_spellings_is_an_error(tmp_path):
    path = write(tmp_path, "core:\n  backend:\n    enable_TLS: 'true'\n    enable_tls: 'false'\n")
    with pytest.raises(ConfigError, match=r"^core\.backend\.enable_tls: given twice"):
        load_config(path, {})


def test_unknown_key_is_an_error_with_a_hint(tmp_path):
    path = write(tmp_path, "profiling:\n  chek_interval: 5s\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert (
        str(info.value) == "profiling.chek_interval: unknown key (did you mean 'check_interval'?)"
    )
    assert info.value.key == "profiling.chek_interval"


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^tracing: unknown key \(known keys: logger, core"):
        load_config(write(tmp_path, "tracing:\n  on: true\n"), {})


def test_unknown_key_in_a_list_entry_names_its_index(tmp_path):
    path = write(
        tmp_path,
        "process_discovery:\n  scanner:\n    regex:\n      - match_cmd: a\n        lyer: L\n",
    )
    with pytest.raises(
        ConfigError, match=r"^process_discovery\.scanner\.regex\[0\]\.lyer: unknown"
    ):
        load_config(path, {})


ROVER_ERA_FILE = """
logger:
  level: ${ROVER_LOGGER_LEVEL:INFO}
core:
  backend:
    addr: ${ROVER_BACKEND_ADDR:localhost:11800}
    enable_TLS: ${ROVER_BACKEND_ENABLE_TLS:false}
    client_pem_path: ${ROVER_BACKEND_PEM_PATH:"client.pem"}
    authentication: ${ROVER_BACKEND_AUTHENTICATION:""}
    check_period: ${ROVER_BACKEND_CHECK_PERIOD:5}
profiling:
  task:
    on_cpu:
      dump_period: ${ROVER_PROFILING_TASK_ON_CPU_DUMP_PERIOD:9ms}
    network:
      report_interval: ${ROVER_PROFILING_TASK_NETWORK_TOPOLOGY_REPORT_INTERVAL:2s}
      protocol_analyze:
        per_cpu_buffer: 400KB
access_log:
  active: ${ROVER_ACCESS_LOG_ACTIVE:false}
pprof:
  active: false
"""


def test_a_rover_file_loads_with_warnings_for_what_is_not_implemented(tmp_path):
    config = load_config(write(tmp_path, ROVER_ERA_FILE), {"ROVER_BACKEND_ADDR": "oap:11800"})
    assert config.core.backend.addr == "oap:11800"
    assert config.core.backend.client_pem_path == "client.pem"  # quotes dropped
    assert config.core.backend.authentication == ""  # Rover's "" means empty
    assert config.profiling.task.network.report_interval == 2.0
    assert config.profiling.task.network.protocol_analyze.per_cpu_buffer == 400 << 10
    assert [w.split(":")[0] for w in config.warnings] == [
        "access_log",
        "pprof",
    ]
    assert all("ignored" in w for w in config.warnings)


# --- placeholders -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A:localhost:11800}", {}, "localhost:11800"),  # colons belong to the default
        ("${A:localhost:11800}", {"A": "oap:1"}, "oap:1"),
        ("${A:{{.Pod.Name}}}", {}, "{{.Pod.Name}}"),  # nested braces
        (
            '${A:{{.Pod.Namespace}}::{{.Pod.LabelValue "a,b" }}}',
            {},
            '{{.Pod.Namespace}}::{{.Pod.LabelValue "a,b" }}',
        ),
        ('${A:{{.Rover.HostIPV4 "en0"}}}', {}, '{{.Rover.HostIPV4 "en0"}}'),
        (
            '${A:{{.Pod.LabelValue "a,b" ""}}.{{.Pod.Namespace}}}',
            {},
            '{{.Pod.LabelValue "a,b" ""}}.{{.Pod.Namespace}}',
        ),
        ("${A}", {}, ""),  # no default
        ("${A}", {"A": "x"}, "x"),
        ("${A:}", {}, ""),
        ("${A:d}", {"A": ""}, "d"),  # empty counts as unset, as in Rover
        ("$${A:d}", {"A": "x"}, "${A:d}"),  # escaped
        ("cost $${A} is ${A:d}", {"A": "x"}, "cost ${A} is x"),
        ("oap-${ZONE:a}:11800", {"ZONE": "b"}, "oap-b:11800"),  # embedded
        ("${A:1}${B:2}", {"B": "3"}, "13"),
        ('${A:"quoted: yes"}', {}, "quoted: yes"),
        ("${A:''}", {}, ""),
        ("${A:x}", {"A": "${B:y}"}, "${B:y}"),  # environment values are verbatim
        ("${A:${B:y}}", {}, "${B:y}"),  # defaults are not resolved again
        ("plain {{.Pod.Name}} $5 $ {x}", {}, "plain {{.Pod.Name}} $5 $ {x}"),
        ("${lower_case:d}", {"lower_case": "v"}, "v"),
    ],
)
def test_placeholder_resolution(text, env, expected):
    assert resolve(text, env).text == expected


def test_resolution_records_which_variables_were_used():
    assert resolve("${A:1}${B:2}${C}", {"A": "x", "C": ""}).env_names == ("A",)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("${A:{{.Pod.Name}}", "unterminated placeholder"),
        ("${A:x", "unterminated placeholder"),
        ("${A B}", "expected ':' or '}' after the name"),
        ("${}", "malformed placeholder"),
        ("${1A:x}", "malformed placeholder"),
    ],
)
def test_malformed_placeholders_are_rejected(text, problem):
    with pytest.raises(PlaceholderError, match=re.escape(problem)):
        resolve(text, {})


def test_malformed_placeholder_in_the_file_names_the_key(tmp_path):
    path = write(tmp_path, "core:\n  backend:\n    addr: ${ROVER_BACKEND_ADDR:localhost\n")
    with pytest.raises(ConfigError, match=r"^core\.backend\.addr: unterminated placeholder"):
        load_config(path, {})


# --- documentation ------------------------------------------------------------------------


def _key_paths(node: Any, prefix: str = "") -> list[str]:
    """Dotted key paths of the leaves of a YAML tree, list entries as ``key[]``."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _key_paths(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(node, list) and node and isinstance(node[0], dict):
        return [p for item in node for p in _key_paths(item, f"{prefix}[]")]
    return [prefix]


def test_every_environment_name_of_the_shipped_file_is_documented():
    docs = DOCS.read_text()
    names = shipped_env_names()
    assert names, "the shipped file has no placeholders?"
    missing = [
        name for name in names if f"`{name}`" not in docs and f"`{_short(name)}`" not in docs
    ]
    assert missing == []
    # The full names are all present too, so searching the docs for one finds it.
    assert [name for name in names if name not in docs] == []


def _short(name: str) -> str:
    return name.removeprefix(ANALYZER)


def test_every_key_of_the_shipped_file_is_documented():
    docs = DOCS.read_text()
    tree = yaml.safe_load(SHIPPED_CONFIG.read_text())
    paths = sorted(set(_key_paths(tree)))
    assert "process_discovery.kubernetes.analyzers[].filters" in paths
    assert [path for path in paths if f"`{path}`" not in docs] == []


def test_unwind_defaults_to_auto_and_rejects_unknown_modes():
    profiling = shipped().profiling
    assert (profiling.unwind, profiling.unwind_stack_bytes) == ("auto", 16384)
    assert shipped(ROVER_PROFILING_UNWIND="frame_pointer").profiling.unwind == "frame_pointer"
    text = error_of(ROVER_PROFILING_UNWIND="dwarf")
    assert text.startswith("profiling.unwind:") and "dwarf" in text


@pytest.mark.parametrize("size", ["256", "40000", "1001"])
def test_unwind_stack_bytes_is_bounded(size):
    text = error_of(ROVER_PROFILING_UNWIND_STACK_BYTES=size)
    assert text.startswith("profiling.unwind_stack_bytes:") and size in text


def test_unwind_stack_bytes_is_accepted_but_said_to_be_unused():
    config = shipped(ROVER_PROFILING_UNWIND_STACK_BYTES="8192")
    assert any("unwind_stack_bytes: ignored" in w for w in config.warnings), config.warnings
    assert shipped().warnings == ()


@pytest.mark.parametrize("size", ["1000", "-1", "64MiB"])
def test_unwind_table_bytes_is_checked(size):
    text = error_of(ROVER_PROFILING_UNWIND_TABLE_BYTES=size)
    assert text.startswith("profiling.unwind_table_bytes:") and size in text


def test_unwind_table_bytes_defaults_to_64_mib():
    assert shipped().profiling.unwind_table_bytes == 64 << 20


CACHE_KEYS = [
    ("SYMBOL_TABLE_BYTES", "symbol_table_bytes", 1 << 20),
    ("CFI_TABLE_BYTES", "cfi_table_bytes", 1 << 20),
    ("PERF_MAP_BYTES", "perf_map_bytes", 1 << 20),
    ("DEMANGLED_NAME_BYTES", "demangled_name_bytes", 64 << 10),
    ("KUBERNETES_OWNER_BYTES", "kubernetes_owner_bytes", 64 << 10),
]


def test_cache_budgets_default_to_the_caches_own_and_stay_well_under_60_mib():
    from rover.process.kubernetes.owner import DEFAULT_OWNER_BYTES
    from rover.symbols.cache import DEFAULT_SYMBOL_TABLE_BYTES
    from rover.symbols.demangle import DEFAULT_DEMANGLED_NAME_BYTES
    from rover.symbols.symbolizer import DEFAULT_PERF_MAP_BYTES
    from rover.unwind.tables import DEFAULT_CFI_TABLE_BYTES

    cache = shipped().cache
    assert dataclasses.astuple(cache) == (
        DEFAULT_SYMBOL_TABLE_BYTES,
        DEFAULT_CFI_TABLE_BYTES,
        DEFAULT_PERF_MAP_BYTES,
        DEFAULT_DEMANGLED_NAME_BYTES,
        DEFAULT_OWNER_BYTES,
    )
    assert sum(dataclasses.astuple(cache)) == 49 << 20


@pytest.mark.parametrize(("env", "key", "minimum"), CACHE_KEYS)
@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "4MiB", "below"])
def test_bad_cache_budgets_are_clear_errors(env, key, minimum, value):
    text_value = str(minimum - 1) if value == "below" else value
    text = error_of(**{f"ROVER_CACHE_{env}": text_value})
    assert text.startswith(f"cache.{key}: ")
    assert text.endswith(f"(from ROVER_CACHE_{env})")
    assert repr(text_value) in text
    if value in ("abc", "1.5", "4MiB"):
        assert "expected a whole number" in text
    else:
        size = "1 MiB" if minimum == 1 << 20 else "64 KiB"
        assert f"must be at least {minimum} bytes ({size}), got" in text


def test_cache_budgets_at_their_minimum_are_accepted(tmp_path):
    text = "cache:\n" + "".join(f"  {key}: {minimum}\n" for _, key, minimum in CACHE_KEYS)
    cache = load_config(write(tmp_path, text), {}).cache
    assert dataclasses.astuple(cache) == tuple(minimum for _, _, minimum in CACHE_KEYS)
    with pytest.raises(ConfigError, match=r"^cache\.perf_map_byte: unknown key"):
        load_config(write(tmp_path, "cache:\n  perf_map_byte: 1\n", "typo.yaml"), {})


def test_rover_profile_reads_the_cache_section_alone():
    """``rover profile`` takes the agent's cache budgets, with the same variables; the
    other sections' variables do not matter to it."""
    env = {"ROVER_CACHE_PERF_MAP_BYTES": "2097152", "ROVER_BACKEND_CHECK_PERIOD": "bad"}
    assert load_cache_config(env).perf_map_bytes == 2 << 20
    assert load_cache_config({}) == AgentConfig().cache
    with pytest.raises(ConfigError, match=r"^cache\.symbol_table_bytes: must be at least"):
        load_cache_config({"ROVER_CACHE_SYMBOL_TABLE_BYTES": "10"})


# --- NETWORK tasks ----------------------------------------------------------------------


def test_network_defaults_are_rovers():
    network = load_config(SHIPPED_CONFIG, {}).profiling.task.network
    assert network.report_interval == 2.0
    assert network.meter_prefix == "rover_net_p"
    assert network.protocol_analyze.per_cpu_buffer == 400 << 10
    assert network.protocol_analyze.queue_size == 5000
    assert network.protocol_analyze.sampling_http.default_request_encoding == "UTF-8"
    assert network.protocol_analyze.capture_bytes == 1024


def test_network_settings_come_from_rovers_environment_names():
    env = {
        "ROVER_PROFILING_TASK_NETWORK_TOPOLOGY_REPORT_INTERVAL": "500ms",
        "ROVER_PROFILING_TASK_NETWORK_TOPOLOGY_METER_PREFIX": "net",
        "ROVER_PROFILING_TASK_NETWORK_PROTOCOL_ANALYZE_PER_CPU_BUFFER": "1MiB",
        "ROVER_PROFILING_TASK_NETWORK_PROTOCOL_ANALYZE_SAMPLING_HTTP_DEFAULT_RESPONSE_ENCODING": (
            "latin-1"
        ),
        "ROVER_PROFILING_TASK_NETWORK_PROTOCOL_ANALYZE_CAPTURE_BYTES": "4096",
    }
    network = load_config(SHIPPED_CONFIG, env).profiling.task.network
    assert network.report_interval == 0.5
    assert network.meter_prefix == "net"
    assert network.protocol_analyze.per_cpu_buffer == 1 << 20
    assert network.protocol_analyze.sampling_http.default_response_encoding == "latin-1"
    assert network.protocol_analyze.capture_bytes == 4096


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("TOPOLOGY_REPORT_INTERVAL", "soon", "invalid duration"),
        ("PROTOCOL_ANALYZE_PER_CPU_BUFFER", "lots", "invalid size"),
        ("PROTOCOL_ANALYZE_PER_CPU_BUFFER", "1KB", "at least 4096"),
        ("PROTOCOL_ANALYZE_CAPTURE_BYTES", "8192", "at most 4096"),
        ("PROTOCOL_ANALYZE_QUEUE_SIZE", "0", "at least 1"),
        ("PROTOCOL_ANALYZE_SAMPLING_HTTP_DEFAULT_REQUEST_ENCODING", "klingon", "unknown"),
    ],
)
def test_bad_network_settings_are_clear_errors(name, value, problem):
    with pytest.raises(ConfigError, match=problem) as err:
        load_config(SHIPPED_CONFIG, {f"ROVER_PROFILING_TASK_NETWORK_{name}": value})
    assert "profiling.task.network" in str(err.value)
