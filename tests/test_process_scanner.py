"""The regex scanner finder on real processes."""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path

import pytest

from rover.config import RegexFinderConfig
from rover.hostfs import HostFS
from rover.process.agent_host import AgentHost
from rover.process.finder import FinderConfigError, ProcessFinder
from rover.process.model import ProcessKind
from rover.process.procfs import read_process
from rover.process.scanner import RegexScannerFinder
from rover.process.template import TemplateError

SLEEP = shutil.which("sleep") or "/bin/sleep"
AGENT = AgentHost("rover-test-instance", host_name="test-host")


def unique_duration() -> str:
    """A sleep argument no other process on the machine has."""
    return f"{random.randint(100000, 999999)}.{random.randint(100000, 999999)}"


def scanner(*rules: RegexFinderConfig, host_ip: str | None = "192.0.2.77") -> RegexScannerFinder:
    return RegexScannerFinder(list(rules), agent=AGENT, host_ip=host_ip)


def test_a_matching_process_is_discovered_with_rendered_names(spawn) -> None:
    duration = unique_duration()
    child = spawn([SLEEP, duration], wait_ready=False)
    finder = scanner(
        RegexFinderConfig(
            match_cmd=rf"sleep {duration.replace('.', '[.]')}$",
            layer="GENERAL",
            service_name="svc-{{.Process.ExeName}}",
            instance_name='{{.Rover.HostIPV4 "lo"}}@{{.Rover.HostName}}',
            process_name="{{.Process.ExeName}}-{{.Process.Pid}}",
            labels=("a", " b", "", "c"),
        )
    )
    assert isinstance(finder, ProcessFinder)
    finder.start()
    found = finder.scan()
    finder.stop()
    assert len(found) == 1
    process = found[0]
    assert process.pid == child.pid and process.kind is ProcessKind.HOST
    assert process.start_time == read_process(HostFS(), child.pid).start_time  # type: ignore[union-attr]
    entity = process.entity
    assert entity.layer == "GENERAL"
    assert entity.service_name == "svc-sleep"
    assert entity.instance_name == "127.0.0.1@test-host"
    assert entity.process_name == f"sleep-{child.pid}"
    assert entity.labels == ("a", "b", "c")
    assert process.properties == {
        "host_ip": "192.0.2.77",
        "pid": str(child.pid),
        "command_line": f"{SLEEP} {duration}",
        "support_ebpf_profiling": "true",
    }
    assert process.profilable


def test_defaults_layer_and_host_ip(spawn) -> None:
    duration = unique_duration()
    spawn([SLEEP, duration], wait_ready=False)
    finder = scanner(
        RegexFinderConfig(
            match_cmd=duration.replace(".", "[.]"),
            layer="",
            service_name="s",
            instance_name="i",
        ),
        host_ip=None,
    )
    [process] = finder.scan()
    assert process.entity.layer == "OS_LINUX"
    assert process.entity.process_name == "sleep"  # Rover's default process_name
    assert process.properties["host_ip"] == AGENT.default_ipv4() != ""


def test_the_default_instance_name_is_the_host_name(spawn) -> None:
    """Ours: Rover's default, {{.Rover.HostIPV4 "en0"}}, fails on Linux (no en0)."""
    duration = unique_duration()
    spawn([SLEEP, duration], wait_ready=False)
    [process] = scanner(RegexFinderConfig(match_cmd=duration, service_name="s")).scan()
    assert process.entity.instance_name == "test-host"


def test_finder_context_regex_groups_and_layer(spawn) -> None:
    duration = unique_duration()
    whole, fraction = duration.split(".")
    spawn([SLEEP, duration], wait_ready=False)
    finder = scanner(
        RegexFinderConfig(
            match_cmd=rf"sleep ({whole})\.(\d+)(x)?",
            layer="OS_LINUX",
            service_name="g{{.Finder.RegexMatchGroup 2}}-{{.Finder.RegexMatchGroup 1}}",
            instance_name="{{.Finder.Layer}}/[{{.Finder.RegexMatchGroup 3}}]",
            process_name="{{.Finder.RegexMatchGroup 0}}",
        )
    )
    [process] = finder.scan()
    assert process.entity.service_name == f"g{fraction}-{whole}"
    assert process.entity.instance_name == "OS_LINUX/[]"
    assert process.entity.process_name == f"sleep {duration}"


def test_the_first_matching_rule_claims_a_process(spawn) -> None:
    base = unique_duration()
    first = spawn([SLEEP, base], wait_ready=False)
    second = spawn([SLEEP, base + "1"], wait_ready=False)
    finder = scanner(
        RegexFinderConfig(match_cmd=rf"sleep {base}$", service_name="one", instance_name="i"),
        RegexFinderConfig(match_cmd=rf"sleep {base}", service_name="two", instance_name="i"),
    )
    by_pid = {p.pid: p.entity.service_name for p in finder.scan()}
    assert by_pid == {first.pid: "one", second.pid: "two"}


def test_an_empty_service_name_skips_the_process_with_a_log_line(spawn, caplog) -> None:
    duration = unique_duration()
    child = spawn([SLEEP, duration], wait_ready=False)
    finder = scanner(
        RegexFinderConfig(
            match_cmd=duration,
            service_name="{{if false}}never{{end}}",
            instance_name="i",
        )
    )
    with caplog.at_level(logging.WARNING, logger="rover.process.scanner"):
        assert finder.scan() == []
        assert finder.scan() == []
    lines = [r.getMessage() for r in caplog.records if str(child.pid) in r.getMessage()]
    assert len(lines) == 1  # logged once, not on every scan
    assert "service_name rendered empty" in lines[0]


def test_a_template_that_fails_for_a_process_skips_it_with_a_warning(spawn, caplog) -> None:
    duration = unique_duration()
    child = spawn([SLEEP, duration], wait_ready=False)
    finder = scanner(
        RegexFinderConfig(
            match_cmd=duration,
            service_name="s",
            instance_name='{{.Rover.HostIPV4 "no-such-if0"}}',  # Rover's default is "en0"
        )
    )
    with caplog.at_level(logging.WARNING, logger="rover.process.scanner"):
        assert finder.scan() == []
    assert any(
        f"skipping process {child.pid}" in r.getMessage() and "no-such-if0" in r.getMessage()
        for r in caplog.records
    )


def test_processes_with_the_same_entity_are_reported_once(spawn, caplog) -> None:
    duration = unique_duration()
    first = spawn([SLEEP, duration], wait_ready=False)
    second = spawn([SLEEP, duration], wait_ready=False)
    finder = scanner(RegexFinderConfig(match_cmd=duration, service_name="s", instance_name="i"))
    with caplog.at_level(logging.WARNING, logger="rover.process.scanner"):
        found = finder.scan()
    assert [p.pid for p in found] == [min(first.pid, second.pid)]
    assert any("reporting only" in r.getMessage() for r in caplog.records)


def test_an_exited_process_leaves_the_next_scan(spawn) -> None:
    duration = unique_duration()
    child = spawn([SLEEP, duration], wait_ready=False)
    finder = scanner(RegexFinderConfig(match_cmd=duration, service_name="s", instance_name="i"))
    assert [p.pid for p in finder.scan()] == [child.pid]
    child.stop()
    assert finder.scan() == []


def test_what_was_kept_about_an_exited_process_is_forgotten(spawn) -> None:
    duration = unique_duration()
    good = spawn([SLEEP, f"{duration}1"], wait_ready=False)
    broken = spawn([SLEEP, f"{duration}2"], wait_ready=False)
    finder = scanner(
        RegexFinderConfig(match_cmd=f"{duration}1", service_name="s", instance_name="i"),
        RegexFinderConfig(
            match_cmd=f"{duration}2",
            service_name="{{.Finder.RegexMatchGroup 3}}",  # fails: logged once per process
            instance_name="i",
        ),
    )
    assert [p.pid for p in finder.scan()] == [good.pid]
    assert {key[0] for key in finder._profiling._known} >= {good.pid}
    assert {key[0] for key in finder._once._seen} >= {broken.pid}
    good.stop()
    broken.stop()
    assert finder.scan() == []
    assert good.pid not in {key[0] for key in finder._profiling._known}
    assert broken.pid not in {key[0] for key in finder._once._seen}


def test_a_long_executable_name_is_not_truncated(spawn, tmp_path: Path) -> None:
    binary = tmp_path / "rover-test-long-executable-name"
    shutil.copy(SLEEP, binary)
    duration = unique_duration()
    spawn([binary, duration], wait_ready=False)
    finder = scanner(
        RegexFinderConfig(
            match_cmd=duration,
            service_name="{{.Process.ExeName}}",
            instance_name="{{.Process.ExeFilePath}}",
            process_name="{{.Process.ExeNameInCommandLine}}",
        )
    )
    [process] = finder.scan()
    assert process.entity.service_name == "rover-test-long-executable-name"
    assert process.entity.instance_name == str(binary)
    assert process.entity.process_name == str(binary)


def test_work_dir(spawn, tmp_path: Path) -> None:
    duration = unique_duration()
    spawn([SLEEP, duration], wait_ready=False, cwd=tmp_path)
    finder = scanner(
        RegexFinderConfig(
            match_cmd=duration, service_name="{{.Process.WorkDir}}", instance_name="i"
        )
    )
    [process] = finder.scan()
    assert process.entity.service_name == os.path.realpath(tmp_path)


@pytest.mark.parametrize(
    ("rule", "error", "message"),
    [
        (RegexFinderConfig(match_cmd=""), FinderConfigError, r"scanner\.regex\[0\]\.match_cmd"),
        (
            RegexFinderConfig(match_cmd="(unclosed", service_name="s"),
            FinderConfigError,
            "not a valid regular expression",
        ),
        (
            RegexFinderConfig(match_cmd="x"),
            FinderConfigError,
            r"scanner\.regex\[0\]\.service_name must not be empty",
        ),
        (
            RegexFinderConfig(match_cmd="x", service_name="{{.Pod.Name}}"),
            TemplateError,
            r"scanner\.regex\[0\]\.service_name.*has no field Pod",
        ),
        (
            RegexFinderConfig(match_cmd="x", service_name="s", process_name="{{.Process.ExeName"),
            TemplateError,
            r"scanner\.regex\[0\]\.process_name.*unclosed action",
        ),
        (
            RegexFinderConfig(match_cmd="x", service_name='{{.Finder.RegexMatchGroup "1"}}'),
            TemplateError,
            "must be an int",
        ),
    ],
)
def test_configuration_errors_at_start_up(
    rule: RegexFinderConfig, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        scanner(rule)


def test_at_least_one_rule_is_needed() -> None:
    with pytest.raises(FinderConfigError, match="at least one rule"):
        RegexScannerFinder([], agent=AGENT)
