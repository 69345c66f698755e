"""Label selectors (``.Pod.LabelSelector``) and service selection of pods."""

from __future__ import annotations

import pytest

from rover.process.kubernetes.labels import LabelSelector, SelectorError, selects
from rover.process.kubernetes.model import PodInfo, ServiceInfo, service_names

LABELS = {"app": "web", "tier": "front", "canary": ""}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", True),
        ("app=web", True),
        ("app==web", True),
        ("app = web , tier = front", True),
        ("app=api", False),
        ("app!=api", True),
        ("missing!=x", True),
        ("tier in (front, back)", True),
        ("tier in (back)", False),
        ("missing in (x)", False),
        ("tier notin (back)", True),
        ("missing notin (x)", True),
        ("canary", True),
        ("!canary", False),
        ("!missing", True),
        ("canary=", True),
        ("app=web,tier notin (front)", False),
    ],
)
def test_label_selector(selector: str, expected: bool) -> None:
    assert LabelSelector.parse(selector).matches(LABELS) is expected


@pytest.mark.parametrize("selector", ["app=web,", "tier in (front", "=web", "a b", "tier in front"])
def test_invalid_label_selectors(selector: str) -> None:
    with pytest.raises(SelectorError, match="invalid label selector"):
        LabelSelector.parse(selector)


def test_service_map_selectors() -> None:
    assert selects({"app": "web"}, LABELS)
    assert not selects({"app": "web", "tier": "back"}, LABELS)
    assert not selects({}, LABELS)  # an empty selector selects nothing


def test_pod_service_is_the_shortest_then_first_matching_name() -> None:
    pod = PodInfo("u", "ns", "p", "n", "", {"app": "web", "tier": "front"})
    other_ns = PodInfo("u2", "other", "q", "n", "", {"app": "web"})
    services = [
        ServiceInfo("ns", "web-long", {"app": "web"}),
        ServiceInfo("ns", "webb", {"tier": "front"}),
        ServiceInfo("ns", "weba", {"app": "web"}),
        ServiceInfo("ns", "all", {}),  # selects nothing
        ServiceInfo("ns", "db", {"app": "db"}),
    ]
    assert service_names([pod, other_ns], services) == {("ns", "p"): "weba"}
