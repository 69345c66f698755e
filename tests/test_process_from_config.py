"""Finders built from the agent's typed configuration."""

from __future__ import annotations

import dataclasses
import shutil
from typing import Any

import pytest
from fake_k8s import FakeKubernetes, fake_k8s  # noqa: F401

from rover.config import AgentConfig, RegexFinderConfig, ScanMode
from rover.process import finders_from_config
from rover.process.kubernetes.finder import KubernetesFinder
from rover.process.scanner import RegexScannerFinder
from rover.process.template import TemplateError

SLEEP = shutil.which("sleep") or "/bin/sleep"


def with_discovery(config: AgentConfig, **changes: dict[str, Any]) -> AgentConfig:
    discovery = config.process_discovery
    for section, values in changes.items():
        discovery = dataclasses.replace(
            discovery, **{section: dataclasses.replace(getattr(discovery, section), **values)}
        )
    return dataclasses.replace(config, process_discovery=discovery)


def test_nothing_is_active_by_default() -> None:
    assert finders_from_config(AgentConfig(), "agent-1") == []


def test_the_regex_scanner(spawn) -> None:
    child = spawn([SLEEP, "31337.271828"], wait_ready=False)
    rule = RegexFinderConfig(
        match_cmd=r"sleep 31337\.271828",
        service_name="{{.Rover.InstanceID}}",
        instance_name="i",
        labels=("x", "y"),
    )
    config = with_discovery(AgentConfig(), scanner={"mode": ScanMode.REGEX, "regex": (rule,)})
    [build] = finders_from_config(config, "agent-1")
    finder = build()
    assert isinstance(finder, RegexScannerFinder)
    [process] = finder.scan()
    assert process.pid == child.pid
    assert process.entity.service_name == "agent-1"
    assert process.entity.labels == ("x", "y")


def test_the_host_proc_mapping_is_honoured(spawn, tmp_path) -> None:
    """The host's / mapped to an empty directory, its /proc mapped to ours: only the proc
    mapping can find the process."""
    child = spawn([SLEEP, "31337.314159"], wait_ready=False)
    rule = RegexFinderConfig(match_cmd=r"sleep 31337\.314159", service_name="s")
    config = with_discovery(AgentConfig(), scanner={"mode": ScanMode.REGEX, "regex": (rule,)})
    mapped = dataclasses.replace(
        config,
        core=dataclasses.replace(config.core, host_root=str(tmp_path), host_proc_mapping="/proc"),
    )
    [build] = finders_from_config(mapped, "agent-1")
    [process] = build().scan()
    assert process.pid == child.pid
    assert process.properties["support_ebpf_profiling"] == "true"  # /proc/PID/exe, mapped


def test_a_bad_template_fails_when_the_finder_is_built() -> None:
    rule = RegexFinderConfig(match_cmd="x", service_name="{{.Nope}}")
    config = with_discovery(AgentConfig(), scanner={"mode": ScanMode.REGEX, "regex": (rule,)})
    [build] = finders_from_config(config, "agent-1")
    with pytest.raises(TemplateError, match=r"scanner\.regex\[0\]\.service_name"):
        build()


def test_kubernetes_with_the_shipped_analyzers(
    fake_k8s: FakeKubernetes,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(fake_k8s.write_kubeconfig()))
    config = with_discovery(
        AgentConfig(), kubernetes={"active": True, "node_name": "node-1", "namespaces": ("a",)}
    )
    [build] = finders_from_config(config, "agent-1")
    finder = build()
    assert isinstance(finder, KubernetesFinder)
    finder.start()
    try:
        assert finder.wait_synced(10)
        assert finder.scan() == []
    finally:
        finder.stop()
