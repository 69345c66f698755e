"""Rover's template subset: every context member and function, filters, and start-up errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from rover.config import DEFAULT_ANALYZERS, AnalyzerConfig
from rover.hostfs import HostFS
from rover.process.agent_host import AgentHost
from rover.process.context import ProcessView
from rover.process.finder import FinderConfigError
from rover.process.kubernetes.analyzer import Analyzer
from rover.process.kubernetes.context import (
    KUBERNETES_DATA,
    ContainerView,
    KubernetesData,
    PodView,
)
from rover.process.kubernetes.model import ContainerInfo, PodInfo
from rover.process.procfs import HostProcess, read_process
from rover.process.template import (
    RenderError,
    TemplateError,
    compile_filter,
    compile_template,
)

ENVOY_ID = "containerd://" + "e" * 64
APP_ID = "containerd://" + "a" * 64

POD = PodInfo(
    uid="0f1e2d3c-0000-4000-8000-000000000001",
    namespace="shop",
    name="reviews-7d9f-abcde",
    node_name="node-1",
    pod_ip="10.244.1.7",
    labels={"app": "reviews", "version": "v2", "app.kubernetes.io/name": "reviews-k8s"},
    spec_containers=("reviews", "istio-proxy"),
    containers=(
        ContainerInfo("reviews", APP_ID, True, (("LANG", "C"), ("SERVICE", "reviews-svc"))),
        ContainerInfo("istio-proxy", ENVOY_ID, True, (("ISTIO_META_WORKLOAD", "reviews"),)),
    ),
)
PROCESS = HostProcess(
    pid=4242,
    start_time=123456,
    comm="java",
    cmdline=("/usr/bin/java", "-jar", "reviews.jar"),
    exe_path="/usr/lib/jvm/bin/java",
    cgroup="0::/\n",
)


def data(
    pod: PodInfo = POD,
    container: int = 0,
    service: str = "reviews",
    process: HostProcess = PROCESS,
) -> KubernetesData:
    return KubernetesData(
        ProcessView(HostFS(), process),
        PodView(pod, service),
        ContainerView(pod.containers[container]),
        AgentHost("rover-instance-1", host_name="node-1.example"),
    )


def render(source: str, context: KubernetesData | None = None) -> str:
    return compile_template(source, KUBERNETES_DATA, "test").render(context or data())


def passes(expression: str, context: KubernetesData | None = None) -> bool:
    return compile_filter(expression, KUBERNETES_DATA, "test").matches(context or data())


# --- context members ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{.Pod.Name}}", "reviews-7d9f-abcde"),
        ("{{.Pod.Namespace}}", "shop"),
        ("{{.Pod.Node}}", "node-1"),
        ("{{.Pod.ServiceName}}", "reviews"),
        ('{{.Pod.LabelValue "missing,app" "dflt"}}', "reviews"),
        ('{{.Pod.LabelValue "app.kubernetes.io/name,app" "dflt"}}', "reviews-k8s"),
        ('{{.Pod.LabelValue "x,y" "dflt"}}', "dflt"),
        ('{{.Pod.LabelValue "x,version"}}', "v2"),  # Rover's older one-argument form
        ('{{.Pod.LabelValue "x"}}', ""),
        ('{{(.Pod.FindContainer "istio-proxy").Name}}', "istio-proxy"),
        ('{{(.Pod.FindContainer "istio-proxy").ID}}', ENVOY_ID),
        ('{{.Pod.OwnerName "Service"}}', "reviews"),  # the pseudo-kind needs no API call
        ("{{.Container.Name}}", "reviews"),
        ("{{.Container.ID}}", APP_ID),
        ('{{.Container.EnvValue "MISSING,SERVICE"}}', "reviews-svc"),
        ("{{.Process.Pid}}", "4242"),
        ("{{.Process.ExeName}}", "java"),
        ("{{.Process.Name}}", "java"),
        ("{{.Process.ExeFilePath}}", "/usr/lib/jvm/bin/java"),
        ("{{.Process.Exe}}", "/usr/lib/jvm/bin/java"),
        ("{{.Process.CommandLine}}", "/usr/bin/java -jar reviews.jar"),
        ("{{.Process.Cmdline}}", "/usr/bin/java -jar reviews.jar"),
        ("{{.Process.Command}}", "/usr/bin/java -jar reviews.jar"),
        ("{{.Process.ExeNameInCommandLine}}", "/usr/bin/java"),
        ("{{.Rover.InstanceID}}", "rover-instance-1"),
        ("{{.Rover.HostName}}", "node-1.example"),
        ('{{.Rover.HostIPV4 "lo"}}', "127.0.0.1"),
    ],
)
def test_context_members_render(source: str, expected: str) -> None:
    assert render(source) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('.Pod.HasContainer "istio-proxy"', True),
        ('.Pod.HasContainer "sidecar"', False),
        (".Pod.HasServiceName", True),
        ('.Pod.LabelSelector "app=reviews,version in (v1,v2)"', True),
        ('.Pod.LabelSelector "app=reviews,!version"', False),
        ('.Pod.LabelSelector "app!=ratings,tier notin (db)"', True),
        ('.Pod.HasOwnerName "Service"', True),
        ('eq .Container.Name "istio-proxy"', False),
        ('ne .Container.Name "istio-proxy"', True),
    ],
)
def test_pod_judgments_as_filters(expression: str, expected: bool) -> None:
    assert passes(expression) is expected


def test_has_service_name_is_false_without_a_service() -> None:
    assert passes(".Pod.HasServiceName", data(service="")) is False
    assert render("[{{.Pod.ServiceName}}]", data(service="")) == "[]"


def test_exe_name_is_completed_from_the_command_line_when_the_kernel_truncated_it() -> None:
    long_name = HostProcess(1, 1, "very-long-daemo", ("/opt/very-long-daemon-name", "-x"), "", "")
    assert render("{{.Process.ExeName}}", data(process=long_name)) == "very-long-daemon-name"


def test_work_dir_reads_the_live_process() -> None:
    me = read_process(HostFS(), os.getpid())
    assert me is not None
    assert render("{{.Process.WorkDir}}", data(process=me)) == os.getcwd()
    assert render("{{.Process.Cwd}}", data(process=me)) == os.getcwd()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('{{.Rover.HostIPV4 "no-such-if0"}}', "no IPv4 address on network interface"),
        ('{{.Rover.HostIPV6 "no-such-if0"}}', "no IPv6 address on network interface"),
        ('{{.Container.EnvValue "NOPE"}}', "sets none of"),
        ('{{(.Pod.FindContainer "nope").Name}}', "has no container 'nope'"),
        ('{{.Pod.OwnerName "Deployment"}}', "owner lookups need the Kubernetes API client"),
        ("{{.Process.WorkDir}}", "cannot read the working directory"),
    ],
)
def test_failing_members_raise_render_errors_naming_the_template(source: str, message: str) -> None:
    with pytest.raises(RenderError, match=message) as caught:
        render(source)
    assert "test: rendering" in str(caught.value) and source in str(caught.value)


def test_exe_file_path_fails_when_the_executable_link_was_unreadable() -> None:
    no_exe = HostProcess(7, 1, "x", ("x",), "", "")
    with pytest.raises(RenderError, match="cannot read the executable path of process 7"):
        render("{{.Process.ExeFilePath}}", data(process=no_exe))


def test_host_name_defaults_to_this_machine() -> None:
    assert AgentHost("i").host_name == socket.gethostname()


# --- functions and syntax ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("svc-{{.Pod.Name}}::x", "svc-reviews-7d9f-abcde::x"),
        ('{{eq .Pod.Namespace "shop"}}', "true"),
        ('{{eq .Pod.Namespace "a" "b" "shop"}}', "true"),  # eq a b c: a==b || a==c
        ('{{ne .Pod.Namespace "shop"}}', "false"),
        ("{{lt 1 2}} {{le 2 2}} {{gt 1 2}} {{ge 3 2}}", "true true false true"),
        ('{{lt "a" "b"}}', "true"),
        ("{{eq .Process.Pid 4242}}", "true"),
        ('{{and .Pod.Name ""}}|{{and .Pod.Name .Pod.Namespace}}', "|shop"),
        ('{{or "" .Pod.Namespace}}|{{or "" ""}}', "shop|"),
        ('{{not .Pod.HasServiceName}} {{not ""}}', "false true"),
        ("{{len .Pod.Namespace}}", "4"),
        ('{{print "a" 1 2 "b"}}', "a1 2b"),  # Go adds spaces only between non-strings
        ('{{println "a" 1}}', "a 1\n"),
        (
            '{{printf "%s/%d/%q/%t/%5s/%-3s|/%03d%%" "x" 7 "y" true "r" "l" 5}}',
            'x/7/"y"/true/    r/l  |/005%',
        ),
        ('{{equalsOrDefault "" "unknown" .Pod.ServiceName}}', "reviews"),
        ('{{.Pod.LabelValue "nope" "" | equalsOrDefault "" "unknown"}}', "unknown"),
        ('{{.Pod.Name | printf "%s-%s" .Pod.Namespace}}', "shop-reviews-7d9f-abcde"),
        ('{{"reviews" | .Pod.LabelValue "nope"}}', "reviews"),  # piped value is the last argument
        ("{{if .Pod.HasServiceName}}{{.Pod.ServiceName}}{{else}}none{{end}}", "reviews"),
        ('{{if eq .Pod.Name "x"}}a{{else if eq .Pod.Namespace "shop"}}b{{else}}c{{end}}', "b"),
        ("{{if false}}a{{end}}z", "z"),
        ("a  {{- .Pod.Namespace -}}  \n b", "ashopb"),
        ("{{/* a comment */}}x{{- /* trimmed */ -}} y", "xy"),
        ('{{`raw \\n`}}|{{"tab\\tq\\"\\x41\\u00e9"}}', 'raw \\n|tab\tq"Aé'),
        ("{{ (eq (len .Pod.Namespace) 4) }}", "true"),
        ("{{-3}}{{+4}}", "-34"),
        ("no actions at all", "no actions at all"),
        ("", ""),
    ],
)
def test_functions_and_syntax(source: str, expected: str) -> None:
    assert render(source) == expected


def test_and_or_short_circuit() -> None:
    # the failing member after the deciding argument is never called
    assert render('{{or .Pod.Name (.Pod.FindContainer "nope").Name}}') == POD.name
    assert render('{{and "" (.Pod.FindContainer "nope").Name}}') == ""


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("true", True),
        ("false", False),
        ('"true"', True),
        ('"True"', True),
        ('"1"', True),
        ('"F"', False),
        ('.Pod.LabelValue "enabled" "false"', False),
        ('and .Pod.HasServiceName (eq .Pod.Namespace "shop")', True),
        ('or (eq .Pod.Namespace "x") (.Pod.HasContainer "reviews")', True),
        ("not .Pod.HasServiceName", False),
    ],
)
def test_filters_follow_go_parse_bool(expression: str, expected: bool) -> None:
    assert passes(expression) is expected


def test_a_filter_that_renders_no_boolean_fails_for_that_process() -> None:
    with pytest.raises(RenderError, match="'shop' is not a boolean"):
        passes(".Pod.Namespace")


# --- start-up errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{.Pod.Nam}}", "Pod has no field Nam"),
        ("{{.Pods.Name}}", "KubernetesData has no field Pods"),
        ("{{.Process.__class__}}", "Process has no field __class__"),
        ("{{.Container.Name.Length}}", "can't evaluate field Length"),
        ("{{.Pod}}", "prints a Pod object"),
        ("{{.}}", "prints a KubernetesData object"),
        ("{{upper .Pod.Name}}", "function 'upper' not defined"),
        ("{{index .Pod.Name 1}}", "function 'index' is not supported"),
        ('{{.Pod.Name | "x"}}', '"x" is not a function'),
        ("{{.Pod.Name | }}", "missing command after '|'"),
        ("{{.Pod.Name", "unclosed action"),
        ("{{.Pod.Name}", "unclosed action"),
        (".Pod.Name}}", "'}}' without a matching '{{'"),
        ("{{.Pod.Name}}}}", "'}}' without a matching '{{'"),
        ("{{(.Pod.Name}}", "unclosed '('"),
        ("{{.Pod.Name)}}", "unexpected ')'"),
        ("{{}}", "empty action"),
        ("{{$x := .Pod.Name}}", "variables"),
        ("{{range .Pod.Name}}{{end}}", "{{range}} is not supported"),
        ('{{template "x"}}', "{{template}} is not supported"),
        ("{{with .Pod}}{{end}}", "{{with}} is not supported"),
        ("{{if .Pod.Name}}x", "{{if}} without a matching {{end}}"),
        ("x{{end}}", "{{end}} without a matching {{if}}"),
        ("{{else}}", "{{else}} without a matching {{if}}"),
        ("{{.Pod.LabelValue}}", "takes 1 to 2 argument(s), got 0"),
        ('{{.Pod.LabelValue "a" "b" "c"}}', "takes 1 to 2 argument(s), got 3"),
        ('{{.Pod.Name "x"}}', "takes 0 argument(s), got 1"),
        ("{{.Pod.HasContainer 3}}", "must be a string, got 3 (int)"),
        ('{{eq .Process.Pid "4242"}}', "incompatible types (int and string)"),
        ("{{ne 1}}", "ne takes 2 argument(s)"),
        ("{{lt true false}}", "booleans cannot be ordered"),
        ("{{len 3}}", "only strings have a length"),
        ('{{printf "%x" 1}}', "verb %x is not supported"),
        ('{{printf "%s %s" "a"}}', "more verbs than arguments"),
        ('{{.Pod.LabelSelector "a in (b"}}', "invalid label selector"),
        ("{{ 'c' }}", "character constants are not supported"),
        ("{{ 1.5 }}", "only decimal integers"),
        ("{{ nil }}", "'nil' is not supported"),
        ('{{"unterminated}}', "unterminated quoted string"),
        ('{{"bad \\q"}}', "invalid escape sequence"),
    ],
)
def test_unsupported_or_invalid_templates_fail_at_compile_time(source: str, reason: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_template(source, KUBERNETES_DATA, "kubernetes.analyzers[0].service_name")
    message = str(caught.value)
    assert reason in message
    assert message.startswith("kubernetes.analyzers[0].service_name: invalid template ")
    assert repr(source) in message  # the expression itself is named


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("", "a filter must not be empty"),
        ("   ", "a filter must not be empty"),
        (".Pod", "is a Pod object, not true or false"),
        (".Pod.HasContainer", "takes 1 argument(s), got 0"),
        ("eq .Pod.Name", "eq takes at least 2 argument(s)"),
        (".Pod.Name}}{{.Pod.Name", "a filter is a single expression"),
        (".Pod.Unknown", "Pod has no field Unknown"),
    ],
)
def test_invalid_filters_fail_at_compile_time(expression: str, reason: str) -> None:
    with pytest.raises(TemplateError, match="filters\\[1\\]") as caught:
        compile_filter(expression, KUBERNETES_DATA, "kubernetes.analyzers[0].filters[1]")
    assert reason in str(caught.value)


# --- Rover's default analyzers -----------------------------------------------------------------


def entities(context: KubernetesData) -> list[tuple[str, str, str, str, tuple[str, ...]]]:
    found = []
    for i, config in enumerate(DEFAULT_ANALYZERS):
        entity = Analyzer(i, config, KUBERNETES_DATA).entity_for(context)
        if entity is not None:
            found.append(
                (
                    entity.layer,
                    entity.service_name,
                    entity.instance_name,
                    entity.process_name,
                    entity.labels,
                )
            )
    return found


def test_default_analyzers_on_an_istio_pod_with_a_service() -> None:
    app, envoy = data(container=0), data(container=1)
    name = POD.name
    assert entities(app) == [
        ("MESH", "reviews-k8s.shop", name, "java", ("mesh-application",)),
        ("K8S_SERVICE", "reviews.shop", name, "java", ("k8s-service",)),
    ]
    assert entities(envoy) == [
        ("MESH_DP", "reviews-k8s.shop", name, "java", ("mesh-envoy",)),
        ("K8S_SERVICE", "reviews.shop", name, "java", ("k8s-service",)),
    ]


def test_default_analyzers_on_a_plain_pod_without_a_service_yield_nothing() -> None:
    plain = PodInfo("u", "ns", "p", "node-1", "10.0.0.1", {}, ("main",), POD.containers[:1])
    assert entities(data(pod=plain, service="")) == []


def test_istio_canonical_name_label_wins() -> None:
    labels = {**POD.labels, "service.istio.io/canonical-name": "reviews-canon"}
    pod = PodInfo(**{**POD.__dict__, "labels": labels})
    assert entities(data(pod=pod, container=1))[0][1] == "reviews-canon.shop"


def test_rovers_older_shipped_analyzer_expressions_still_compile_and_render() -> None:
    older = AnalyzerConfig(
        active=True,
        filters=('.Pod.HasContainer "istio-proxy"', 'eq .Container.Name "istio-proxy"'),
        layer="MESH_DP",
        service_name=(
            "{{.Pod.Namespace}}::"
            '{{.Pod.LabelValue "service.istio.io/canonical-name,app.kubernetes.io/name,app" }}'
        ),
        instance_name="{{.Pod.Name}}",
        process_name="{{.Process.ExeName}}",
        labels=("mesh-envoy",),
    )
    entity = Analyzer(0, older, KUBERNETES_DATA).entity_for(data(container=1))
    assert entity is not None and entity.service_name == "shop::reviews-k8s"


def test_analyzer_config_errors_name_the_field() -> None:
    names: dict[str, Any] = {
        "instance_name": "{{.Pod.Name}}",
        "process_name": "{{.Process.ExeName}}",
    }
    bad_filter = AnalyzerConfig(
        filters=(".Pod.HasServiceName", ".Pod.Bogus"),
        layer="K8S_SERVICE",
        service_name="s",
        **names,
    )
    with pytest.raises(TemplateError, match=r"kubernetes\.analyzers\[3\]\.filters\[1\]"):
        Analyzer(3, bad_filter, KUBERNETES_DATA)
    empty_layer = AnalyzerConfig(layer="", service_name="{{.Pod.Name}}", **names)
    with pytest.raises(FinderConfigError, match=r"kubernetes\.analyzers\[0\]\.layer"):
        Analyzer(0, empty_layer, KUBERNETES_DATA)
    bad_name = AnalyzerConfig(layer="L", service_name="{{.Pod.Name}", **names)
    with pytest.raises(TemplateError, match=r"analyzers\[0\]\.service_name.*unclosed action"):
        Analyzer(0, bad_name, KUBERNETES_DATA)
    no_instance = AnalyzerConfig(layer="L", service_name="s", process_name="p")
    with pytest.raises(FinderConfigError, match=r"analyzers\[0\]\.instance_name must not be"):
        Analyzer(0, no_instance, KUBERNETES_DATA)


def loopback_has_ipv6() -> bool:
    """The kernel's own answer (``/proc/net/if_inet6``), independent of psutil."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except FileNotFoundError:  # IPv6 compiled out or disabled at boot
        return False
    return any(line.split()[-1] == "lo" for line in lines if line.strip())


def test_host_ipv6_of_the_loopback_interface() -> None:
    if loopback_has_ipv6():
        assert AgentHost("i").ipv6("lo") == "::1"
        assert render('{{.Rover.HostIPV6 "lo"}}') == "::1"
    else:
        assert AgentHost("i").ipv6("lo") == ""
        with pytest.raises(RenderError, match="no IPv6 address on network interface"):
            render('{{.Rover.HostIPV6 "lo"}}')


def test_an_interface_without_ipv6_gives_an_empty_address(monkeypatch) -> None:
    ipv4_only = [SimpleNamespace(family=socket.AF_INET, address="192.0.2.5")]
    monkeypatch.setattr(psutil, "net_if_addrs", lambda: {"eth9": ipv4_only})
    host = AgentHost("i")
    assert (host.ipv4("eth9"), host.ipv6("eth9")) == ("192.0.2.5", "")
    assert (host.ipv4("missing0"), host.ipv6("missing0")) == ("", "")


def test_default_ipv4_follows_the_default_route(tmp_path) -> None:
    route = tmp_path / "proc" / "net" / "route"
    route.parent.mkdir(parents=True)
    route.write_text(
        "Iface\tDestination\tGateway\tFlags\n"
        "lo\t0000007F\t00000000\t0001\n"
        "lo\t00000000\t0100007F\t0003\n"  # the default route, here through lo
    )
    assert AgentHost("i", hostfs=HostFS(tmp_path)).default_ipv4() == "127.0.0.1"
    route.write_text("Iface\tDestination\tGateway\tFlags\n")
    fallback = AgentHost("i", hostfs=HostFS(tmp_path)).default_ipv4()
    assert fallback == "127.0.0.1" or not fallback.startswith("127.")
