"""Our Go-template subset (rover/process/template/) checked against Go's own text/template.

Every case is rendered twice: by ``tests/gotemplate/main.go`` (Go's text/template over data
types that mirror SkyWalking Rover's template contexts, built once per session) and by our
engine over the same data. Outputs must be equal, and a case must fail in both or in neither,
unless the case names one of the documented differences (``DIFFERENCES``, also listed in the
``rover.process.template`` docstring); then the difference must be exactly as documented, so
a note that stops being true fails too. Error texts are not compared: ours name the template
and its place in the configuration, Go's do not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rover.config import DEFAULT_ANALYZERS, RegexFinderConfig, load_config
from rover.hostfs import HostFS
from rover.process.agent_host import AgentHost
from rover.process.context import ProcessView
from rover.process.kubernetes.context import (
    KUBERNETES_DATA,
    ContainerView,
    KubernetesData,
    PodView,
)
from rover.process.kubernetes.model import ContainerInfo, PodInfo
from rover.process.procfs import HostProcess
from rover.process.scanner import SCANNER_DATA, _RuleView, _ScannerData
from rover.process.template import RenderError, TemplateError, compile_filter, compile_template

GO_PROGRAM = Path(__file__).resolve().parent / "gotemplate" / "main.go"

# Documented differences (rover.process.template's docstring): key -> (who fails, why).
OURS_FAIL, GO_FAILS = "ours fail where Go renders", "Go fails where ours render"
DIFFERENCES: dict[str, tuple[str, str]] = {
    "rejected": (OURS_FAIL, "rejected at start-up: variables, with, index/slice/html/js/..."),
    "constants": (OURS_FAIL, "only decimal integers, strings and booleans are constants"),
    "typo": (OURS_FAIL, "a '}}' in text or a '|' ending a pipeline is refused as a typo"),
    "object-printed": (OURS_FAIL, "printing an object is an error, Go prints its fields"),
    "printf": (OURS_FAIL, "printf errors where Go writes %!verb(...) into the name"),
    "label-default": (GO_FAILS, ".Pod.LabelValue's default may be left out (older Rover)"),
    "one-context": (GO_FAILS, "filters and names see one context: .Rover, .Pod.HasContainer"),
    "last-group": (GO_FAILS, "RegexMatchGroup N accepts the last group (Rover: off by one)"),
}


# --- the data both sides render ------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    name: str = "reviews-7d9f-abcde"
    labels: dict[str, str] = field(
        default_factory=lambda: {
            "app": "reviews",
            "version": "v2",
            "app.kubernetes.io/name": "reviews-k8s",
            "service.istio.io/canonical-name": "reviews-canonical",
        }
    )
    containers: tuple[str, ...] = ("reviews", "istio-proxy")
    service: str = "reviews"
    container: str = "reviews"  # the container the process runs in


PODS: dict[str, Pod] = {
    "istio-app": Pod(),
    "istio-envoy": Pod(container="istio-proxy"),
    "service": Pod(
        name="ratings-5c4b",
        labels={"app": "ratings"},
        containers=("ratings",),
        service="ratings",
        container="ratings",
    ),
    "no-service": Pod(
        name="batch-1",
        labels={"app.kubernetes.io/name": "batch"},
        containers=("job",),
        service="",
        container="job",
    ),
    "no-labels": Pod(name="bare", labels={}, containers=("main",), service="", container="main"),
}
NAMESPACE, NODE = "shop", "node-1"
OWNERS = {"ReplicaSet": "reviews-7d9f", "Deployment": "reviews"}
ENV = {"reviews": (("LANG", "C"), ("SERVICE", "reviews-svc"))}
IPV4, IPV6 = {"lo": "127.0.0.1", "eth0": "10.1.2.3"}, {"lo": "::1"}
# The process is this test's own (.Process.WorkDir reads its /proc/PID/cwd).
PROCESS = HostProcess(
    pid=os.getpid(),
    start_time=0,
    comm="java",
    cmdline=("/usr/bin/java", "-jar", "reviews.jar", "--port", "9080"),
    exe_path="/usr/lib/jvm/bin/java",
    cgroup="",
)
MATCH_CMD = r"(java) -jar (\S+)\.jar"


def container_id(name: str) -> str:
    return "containerd://" + name.encode().hex().ljust(64, "0")[:64]


def go_data(pod: Pod) -> dict[str, Any]:
    containers = [
        {"name": c, "id": container_id(c), "env": [list(e) for e in ENV.get(c, ())]}
        for c in pod.containers
    ]
    return {
        "pod": {
            "name": pod.name,
            "namespace": NAMESPACE,
            "node": NODE,
            "labels": pod.labels,
            "spec_containers": list(pod.containers),
            "containers": containers,
            "service_name": pod.service,
            "owners": OWNERS,
        },
        "container": pod.container,
        "process": {
            "pid": PROCESS.pid,
            "exe_name": PROCESS.exe_name,
            "exe_file_path": PROCESS.exe_path,
            "command_line": PROCESS.command_line,
            "work_dir": os.getcwd(),
        },
        "rover": {
            "instance_id": "rover-1",
            "host_name": "node-1.example",
            "ipv4": IPV4,
            "ipv6": IPV6,
        },
        "finder": {"layer": "OS_LINUX", "match_cmd": MATCH_CMD},
    }


class FixedHost(AgentHost):
    """The agent's host with the interfaces given to Go, not this machine's."""

    def _interface_addresses(self) -> dict[str, tuple[str, str]]:
        names = set(IPV4) | set(IPV6)
        return {n: (IPV4.get(n, ""), IPV6.get(n, "")) for n in names}


class FixedOwners:
    def owner_of_kind(self, pod: PodInfo, kind: str) -> str | None:
        return next((name for k, name in OWNERS.items() if k.lower() == kind.lower()), None)


def our_data(kind: str, pod: Pod) -> object:
    process = ProcessView(HostFS(), PROCESS)
    rover = FixedHost("rover-1", host_name="node-1.example")
    if kind == "scanner":
        rule = SimpleNamespace(
            pattern=re.compile(MATCH_CMD), entity=SimpleNamespace(layer="OS_LINUX")
        )
        return _ScannerData(process, rover, _RuleView(rule, PROCESS))  # type: ignore[arg-type]
    infos = tuple(ContainerInfo(c, container_id(c), True, ENV.get(c, ())) for c in pod.containers)
    info = PodInfo(
        uid="uid-1",
        namespace=NAMESPACE,
        name=pod.name,
        node_name=NODE,
        pod_ip="10.244.1.7",
        labels=pod.labels,
        spec_containers=pod.containers,
        containers=infos,
    )
    mine = next(c for c in infos if c.name == pod.container)
    view = PodView(info, pod.service, FixedOwners())  # type: ignore[arg-type]
    return KubernetesData(process, view, ContainerView(mine), rover)


# --- the cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    template: str
    pod: str = "istio-app"
    filter: bool = False
    kind: str = "kubernetes"  # or "scanner"
    differs: str = ""  # a key of DIFFERENCES

    @property
    def id(self) -> str:
        prefix = f"{self.kind}-filter" if self.filter else self.kind
        return f"{prefix}[{self.pod}]:{self.template}"


def shipped_cases() -> Iterator[Case]:
    """Rover's analyzers (our defaults and the shipped file's) for every kind of pod, and
    the regex scanner's default names (ours and Rover's)."""
    shipped = load_config(None, {}).process_discovery
    analyzers = {*DEFAULT_ANALYZERS, *shipped.kubernetes.analyzers}
    for analyzer in sorted(analyzers, key=lambda a: a.layer):
        for pod in PODS:
            for expression in analyzer.filters:
                yield Case(expression, pod, filter=True)
            for name in (analyzer.service_name, analyzer.instance_name, analyzer.process_name):
                yield Case(name, pod)
    for finder in (RegexFinderConfig(), *shipped.scanner.regex):
        for name in (finder.service_name, finder.instance_name, finder.process_name):
            if name:
                yield Case(name, kind="scanner")
    yield Case('{{.Rover.HostIPV4 "en0"}}', kind="scanner")  # Rover's default: no en0 here


EDGE_CASES = [
    # text, trim markers, comments, literals
    Case(""),
    Case("plain text, no action"),
    Case("{{/* a comment */}}x"),
    Case("a  {{- .Pod.Name -}}  b"),
    Case("a {{- /* trimmed comment */ -}} b"),
    Case("{{-1}}"),
    Case('{{"q \\"x\\" \\t \\x41\\101\\u00e9\\U0001F600"}}'),
    Case("{{`raw \\n {{ string`}}"),
    Case("{{ .Pod.Name }}.{{.Pod.Namespace}}"),
    Case("{{true}} {{false}} {{42}} {{-7}}"),
    # syntax errors
    Case("{{"),
    Case("{{.Pod.Name"),
    Case("{{}}"),
    Case("{{.Pod.Name }"),
    Case('{{"unterminated}}'),
    Case("{{/* unclosed comment }}"),
    Case("{{nosuch}}"),
    Case("{{nil}}"),
    Case("{{.Pod.Name | }}", differs="typo"),
    Case("{{| .Pod.Name}}"),
    Case("{{(.Pod.Name}}"),
    # missing keys and failing members
    Case("{{.Nope}}"),
    Case("{{.Pod.Nope}}"),
    Case("{{.Pod.Name.Length}}"),
    Case("{{.Pod.Name 1}}"),
    Case('{{.Container.EnvValue "MISSING,SERVICE"}}'),
    Case('{{.Container.EnvValue "MISSING"}}'),
    Case('{{(.Pod.FindContainer "istio-proxy").Name}}'),
    Case('{{(.Pod.FindContainer "istio-proxy").ID}}'),
    Case('{{(.Pod.FindContainer "reviews").EnvValue "SERVICE"}}'),
    Case('{{(.Pod.FindContainer "nope").Name}}'),
    Case('{{.Pod.LabelValue "nope,app" ""}}'),
    Case('{{.Pod.LabelValue "nope" "dflt"}}'),
    Case('{{.Pod.LabelValue "nope" 1}}'),
    Case('{{.Pod.OwnerName "Deployment"}}'),
    Case('{{.Pod.OwnerName "StatefulSet,replicaset"}}'),
    Case('{{.Pod.OwnerName "Service"}}'),
    Case('{{.Pod.OwnerName "Service"}}', pod="no-service"),
    Case('{{.Pod.OwnerName "StatefulSet"}}'),
    Case('{{.Rover.HostIPV4 "eth0"}} {{.Rover.HostIPV6 "lo"}}'),
    Case('{{.Rover.HostIPV6 "eth0"}}'),
    Case("{{.Rover.InstanceID}} {{.Rover.HostName}}"),
    Case("{{.Process.Pid}} {{.Process.ExeName}} {{.Process.ExeFilePath}}"),
    Case("{{.Process.CommandLine}} in {{.Process.WorkDir}}"),
    Case("{{.Container.Name}} {{.Container.ID}} {{.Pod.Node}}"),
    # pipelines
    Case('{{.Pod.Name | printf "%s-x"}}'),
    Case('{{"a" | printf "%s-%s" "b"}}'),
    Case("{{.Pod.Namespace | len}}"),
    Case('{{.Pod.Name | .Pod.LabelValue "nope"}}'),
    Case('{{.Pod.Namespace | eq "shop"}}'),
    Case('{{"x" | not}}'),
    Case('{{printf "%d" .Process.Pid | len | printf "%d chars"}}'),
    Case('{{(printf "%s.%s" .Pod.Name .Pod.Namespace)}}'),
    Case("{{.Pod.Name | .Container.Name}}"),
    # if / else if / else, Go's truth
    Case("{{if .Pod.ServiceName}}svc {{.Pod.ServiceName}}{{else}}none{{end}}"),
    Case("{{if .Pod.ServiceName}}svc{{else}}none{{end}}", pod="no-service"),
    Case(
        '{{if eq .Container.Name "istio-proxy"}}envoy{{else if eq .Container.Name "reviews"}}'
        "app{{else}}other{{end}}"
    ),
    Case(
        '{{if eq .Container.Name "istio-proxy"}}envoy{{else if eq .Container.Name "reviews"}}'
        "app{{else}}other{{end}}",
        pod="istio-envoy",
    ),
    Case('{{if 0}}a{{else}}b{{end}} {{if 1}}a{{end}} {{if ""}}a{{else}}c{{end}}'),
    Case("{{if .Pod}}an object is true{{end}}"),
    Case("{{if not .Pod.ServiceName}}{{else}}x{{end}}"),
    Case('{{if and .Pod.Name (eq .Pod.Namespace "shop")}}both{{end}}'),
    Case("{{if}}x{{end}}"),
    Case("{{if .Pod.Name}}x"),
    Case("{{end}}"),
    Case("{{else}}"),
    Case("{{if .Pod.Name}}a{{else}}b{{else}}c{{end}}"),
    Case("{{if .Pod.Name}}a{{else if}}b{{end}}"),
    # range and with
    Case("{{range .Pod.Name}}x{{end}}"),
    Case("{{range .Pod.Name}}x{{else}}empty{{end}}"),
    Case("{{with .Pod.Name}}{{.}}{{end}}", differs="rejected"),
    Case('{{with .Pod.LabelValue "nope" ""}}x{{else}}y{{end}}', differs="rejected"),
    Case("{{with .Pod.Nope}}x{{end}}"),
    # functions: comparisons, logic, strings
    Case('{{and .Pod.Name .Pod.Namespace}}|{{and .Pod.Name ""}}'),
    Case('{{or "" .Pod.Namespace}}|{{or "" ""}}'),
    Case('{{and "" (.Pod.FindContainer "nope")}}'),
    Case('{{or .Pod.Name (.Pod.FindContainer "nope")}}'),
    Case('{{not ""}} {{not .Pod.Name}} {{not 0}}'),
    Case('{{eq .Pod.Namespace "a" "b" "shop"}} {{eq .Pod.Namespace "a"}}'),
    Case("{{ne 1 2}} {{lt 1 2}} {{le 2 2}} {{gt 1 2}} {{ge 3 2}}"),
    Case('{{lt "a" "b"}} {{ge "b" "c"}}'),
    Case("{{eq .Process.Pid .Process.Pid}}"),
    Case('{{eq 1 "1"}}'),
    Case("{{lt true false}}"),
    Case("{{eq}}"),
    Case("{{lt 1}}"),
    Case("{{not}}"),
    Case('{{len .Pod.Name}} {{len "héllo"}}'),
    Case("{{len 3}}"),
    Case('{{print "a" "b" 1 2 true "c"}}'),
    Case('{{println "a" 1 true}}'),
    Case('{{printf "%s=%d" "a" 1}}'),
    Case('{{printf "%5s|%-5s|%05d|%3d" "ab" "cd" 42 -7}}'),
    Case('{{printf "%q %q" .Pod.Name "tab\\tquote\\"é\\x01"}}'),
    Case('{{printf "%q" "\u0085\ue000\U000e0001\x7f😀"}}'),
    Case('{{printf "%t %v %v %v" true 1 "x" false}}'),
    Case('{{printf "%.2s|%.3v" "abcdef" "xyz123"}}'),
    Case('{{printf "100%%"}}'),
    Case("{{printf}}"),
    Case("{{printf 1}}"),
    Case('{{printf "%d" "x"}}', differs="printf"),
    Case('{{printf "%s %s" "a"}}', differs="printf"),
    Case('{{printf "%s" "a" "b"}}', differs="printf"),
    Case('{{printf "%x" 255}}', differs="printf"),
    Case('{{equalsOrDefault "reviews" "default-svc" .Pod.ServiceName}}'),
    Case('{{equalsOrDefault "other" "default-svc" .Pod.ServiceName}}'),
    Case('{{.Pod.ServiceName | equalsOrDefault "" "no-service"}}', pod="no-service"),
    Case('{{equalsOrDefault "a" "b"}}'),
    Case("{{equalsOrDefault 1 2 3}}"),
    # filters: Rover renders {{filter}} and parses the text as a boolean
    Case('.Pod.HasContainer "istio-proxy"', filter=True),
    Case('.Pod.HasContainer "istio-proxy"', pod="service", filter=True),
    Case(".Pod.HasServiceName", pod="no-service", filter=True),
    Case('eq .Container.Name "istio-proxy"', pod="istio-envoy", filter=True),
    Case('and .Pod.HasServiceName (ne .Pod.Namespace "kube-system")', filter=True),
    Case('or (eq .Pod.Name "x") (.Pod.HasContainer "reviews")', filter=True),
    Case('"true"', filter=True),
    Case("1", filter=True),
    Case('"T"', filter=True),
    Case('"yes"', filter=True),
    Case(".Pod.Name", filter=True),
    Case('.Pod.LabelValue "app" ""', filter=True),
    Case(".Pod.Nope", filter=True),
    Case("", filter=True),
    Case(".Pod.HasServiceName}}{{.Pod.Name", filter=True),
    # the documented differences
    Case("{{$x := .Pod.Name}}{{$x}}", differs="rejected"),
    Case('{{index "abc" 1}}', differs="rejected"),
    Case("{{slice .Pod.Name 0 3}}", differs="rejected"),
    Case('{{html "<a>"}} {{js "x"}} {{urlquery "a b"}}', differs="rejected"),
    Case('{{define "x"}}y{{end}}', differs="rejected"),
    Case("{{1.5}}", differs="constants"),
    Case("{{'a'}}", differs="constants"),
    Case("{{0x10}}", differs="constants"),
    Case("a }} b", differs="typo"),
    Case("{{.Pod}}", differs="object-printed"),
    Case('{{.Pod.LabelValue "app"}}', differs="label-default"),
    Case('{{if .Pod.HasContainer "istio-proxy"}}mesh{{end}}', differs="one-context"),
    Case('eq .Rover.HostName "node-1.example"', filter=True, differs="one-context"),
    Case("{{.Finder.Layer}} {{.Finder.RegexMatchGroup 0}}", kind="scanner"),
    Case("{{.Finder.RegexMatchGroup 1}}", kind="scanner"),
    Case("{{.Finder.RegexMatchGroup 2}}", kind="scanner", differs="last-group"),
    Case("{{.Finder.RegexMatchGroup 3}}", kind="scanner"),
    Case("{{.Process.Pid}}-{{.Rover.HostName}}", kind="scanner"),
    Case("{{.Pod.Name}}", kind="scanner"),
]


# --- rendering -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    ok: bool
    output: str = ""
    error: str = ""


def render_ours(case: Case) -> Outcome:
    pod = PODS[case.pod]
    data_type = SCANNER_DATA if case.kind == "scanner" else KUBERNETES_DATA
    try:
        if case.filter:
            passed = compile_filter(case.template, data_type).matches(our_data(case.kind, pod))
            return Outcome(True, "true" if passed else "false")
        return Outcome(
            True, compile_template(case.template, data_type).render(our_data(case.kind, pod))
        )
    except (TemplateError, RenderError) as exc:
        return Outcome(False, error=str(exc))


@pytest.fixture(scope="session")
def go_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Go's text/template behind a small program, built once per test session."""
    go = shutil.which("go")
    assert go is not None, "Go is needed (make setup installs golang-go)"
    binary = tmp_path_factory.mktemp("gotemplate") / "gotemplate"
    subprocess.run(
        [go, "build", "-o", str(binary), str(GO_PROGRAM)],
        check=True,
        cwd=GO_PROGRAM.parent,
        env={**os.environ, "GO111MODULE": "off", "CGO_ENABLED": "0"},
        timeout=300,
    )
    return binary


def render_go(binary: Path, cases: list[Case]) -> list[Outcome]:
    payload = [
        {
            "kind": case.kind,
            "filter": case.filter,
            "template": case.template,
            "data": go_data(PODS[case.pod]),
        }
        for case in cases
    ]
    done = subprocess.run(
        [str(binary)], input=json.dumps(payload), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [Outcome(r["ok"], r["output"], r["error"]) for r in json.loads(done.stdout)]


def compare(binary: Path, cases: list[Case]) -> None:
    mismatches = []
    for case, theirs in zip(cases, render_go(binary, cases), strict=True):
        ours = render_ours(case)
        if case.differs:
            who, why = DIFFERENCES[case.differs]
            expected = (False, True) if who == OURS_FAIL else (True, False)
            if (ours.ok, theirs.ok) != expected:
                mismatches.append(f"{case.id}: documented '{why}' but ours {ours}, Go {theirs}")
        elif ours.ok != theirs.ok or ours.output != theirs.output:
            mismatches.append(f"{case.id}:\n  ours {ours}\n  Go   {theirs}")
    assert not mismatches, "\n".join(mismatches)


def test_rovers_shipped_templates_render_as_go_renders_them(go_template: Path) -> None:
    cases = list(shipped_cases())
    assert len(cases) > 60 and not any(c.differs for c in cases)
    compare(go_template, cases)


def test_edge_cases_render_or_fail_as_in_go(go_template: Path) -> None:
    compare(go_template, EDGE_CASES)


def test_every_documented_difference_has_a_case() -> None:
    assert {c.differs for c in EDGE_CASES if c.differs} == set(DIFFERENCES)
