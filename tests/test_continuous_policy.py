"""Policy JSON (spec 3.4), local validation (4.7.1 step 4) and the policy cache."""

import json
import logging

import pytest

from rover.backend.commands import CommandData
from rover.backend.continuous import (
    PolicyReplyError,
    policies_from_commands,
    policies_from_json,
)
from rover.continuous.policy import (
    CheckItem,
    InvalidCheckItem,
    MonitorType,
    ServicePolicy,
    TargetType,
    build_check_item,
)
from rover.continuous.policy_cache import PolicyCache
from rover.process.model import DiscoveredProcess, Entity, ProcessKind

SPEC_EXAMPLE = [
    {
        "ServiceName": "prod::checkout.shop",
        "UUID": "9c1d" * 32,
        "Profiling": {
            "ON_CPU": {
                "PROCESS_CPU": {"Threshold": "85", "Period": 30, "Count": 20},
                "SYSTEM_LOAD": {"Threshold": "16", "Period": 60, "Count": 40},
            },
            "NETWORK": {
                "HTTP_ERROR_RATE": {
                    "Threshold": "5",
                    "Period": 20,
                    "Count": 6,
                    "URIRegex": "^/api/pay.*",
                },
                "HTTP_AVG_RESPONSE_TIME": {
                    "Threshold": "400",
                    "Period": 15,
                    "Count": 10,
                    "URIList": ["/api/cart", "/api/search"],
                },
            },
        },
    },
    {"ServiceName": "prod::legacy.shop", "UUID": ""},
]


def one_service(items: dict) -> str:
    return json.dumps([{"ServiceName": "svc", "UUID": "u1", "Profiling": items}])


def test_spec_example_parses_every_item_and_the_removal():
    checkout, legacy = policies_from_json(json.dumps(SPEC_EXAMPLE))
    assert checkout.service == "prod::checkout.shop" and checkout.uuid == "9c1d" * 32
    assert set(checkout.items) == {
        CheckItem(TargetType.ON_CPU, MonitorType.PROCESS_CPU, 85.0, 30, 20),
        CheckItem(TargetType.ON_CPU, MonitorType.SYSTEM_LOAD, 16.0, 60, 40),
        CheckItem(
            TargetType.NETWORK, MonitorType.HTTP_ERROR_RATE, 5.0, 20, 6, uri_regex="^/api/pay.*"
        ),
        CheckItem(
            TargetType.NETWORK,
            MonitorType.HTTP_AVG_RESPONSE_TIME,
            400.0,
            15,
            10,
            uri_list=("/api/cart", "/api/search"),
        ),
    }
    assert legacy == ServicePolicy("prod::legacy.shop", "") and legacy.removed


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"Threshold": "", "Period": 10, "Count": 5}, "empty threshold"),
        ({"Period": 10, "Count": 5}, "empty threshold"),
        ({"Threshold": "abc", "Period": 10, "Count": 5}, "not a number"),
        ({"Threshold": "-1", "Period": 10, "Count": 5}, ">= 0"),
        ({"Threshold": "nan", "Period": 10, "Count": 5}, ">= 0"),
        ({"Threshold": "80", "Period": 0, "Count": 0}, "period 0"),
        ({"Threshold": "80", "Period": -5, "Count": 1}, "period -5"),
        ({"Threshold": "80", "Period": 10, "Count": 0}, "count 0"),
        ({"Threshold": "80", "Period": 10}, "count 0"),
        ({"Threshold": "80", "Period": 5, "Count": 6}, "larger than period"),
        ({"Threshold": "80", "Period": "10", "Count": 5}, "not an integer"),
        ({"Threshold": "80", "Period": 10.0, "Count": 5}, "not an integer"),
        ({"Threshold": "80", "Period": True, "Count": 1}, "not an integer"),
        ({"Threshold": ["80"], "Period": 10, "Count": 5}, "not a string"),
        ({"Threshold": "80", "Period": 10, "Count": 5, "URIList": "/a"}, "URIList"),
        ("80", "not an object"),
    ],
)
def test_an_invalid_item_is_skipped_with_its_reason_and_the_others_stay(fields, reason, caplog):
    text = one_service(
        {
            "ON_CPU": {
                "PROCESS_CPU": fields,
                "PROCESS_THREAD_COUNT": {"Threshold": "500", "Period": 10, "Count": 5},
            }
        }
    )
    with caplog.at_level(logging.WARNING):
        (policy,) = policies_from_json(text)
    assert policy.uuid == "u1"
    assert [i.monitor for i in policy.items] == [MonitorType.PROCESS_THREAD_COUNT]
    assert reason in caplog.text and "PROCESS_CPU" in caplog.text


def test_unknown_monitor_and_target_types_skip_only_those_items(caplog):
    text = one_service(
        {
            "ON_CPU": {
                "GPU_TEMPERATURE": {"Threshold": "90", "Period": 10, "Count": 5},
                "PROCESS_CPU": {"Threshold": "80", "Period": 10, "Count": 5},
            },
            "WALL_CLOCK": {"PROCESS_CPU": {"Threshold": "80", "Period": 10, "Count": 5}},
            "OFF_CPU": "not an object",
        }
    )
    with caplog.at_level(logging.WARNING):
        (policy,) = policies_from_json(text)
    assert [(i.target, i.monitor) for i in policy.items] == [
        (TargetType.ON_CPU, MonitorType.PROCESS_CPU)
    ]
    assert "unknown monitor type 'GPU_TEMPERATURE'" in caplog.text
    assert "unknown target type 'WALL_CLOCK'" in caplog.text
    assert "OFF_CPU skipped" in caplog.text


def test_thresholds_tolerate_numbers_and_decimals():
    text = one_service(
        {
            "ON_CPU": {
                "PROCESS_CPU": {"Threshold": 85, "Period": 10, "Count": 5},
                "SYSTEM_LOAD": {"Threshold": " 2.5 ", "Period": 10, "Count": 10},
            }
        }
    )
    (policy,) = policies_from_json(text)
    assert sorted(i.threshold for i in policy.items) == [2.5, 85.0]


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than the interpreter's recursion limit


@pytest.mark.parametrize("text", ["{not json", "", '{"ServiceName": "svc"}', "null", '"x"', DEEP])
def test_malformed_json_or_a_non_array_rejects_the_whole_reply(text):
    with pytest.raises(PolicyReplyError):
        policies_from_json(text)


def test_bad_service_entries_are_skipped_and_good_ones_kept(caplog):
    text = json.dumps(
        [
            "junk",
            {"UUID": "u"},
            {"ServiceName": "a", "UUID": None},
            {"ServiceName": "b", "UUID": "u", "Profiling": []},
            {"ServiceName": "c", "UUID": "u3"},
            {"ServiceName": "d", "UUID": "u4", "Profiling": None},
        ]
    )
    with caplog.at_level(logging.WARNING):
        policies = policies_from_json(text)
    assert policies == [ServicePolicy("c", "u3"), ServicePolicy("d", "u4")]
    assert caplog.text.count("skipped") == 4


def test_commands_empty_means_unchanged_and_other_names_are_ignored():
    assert policies_from_commands([]) == []
    assert policies_from_commands([CommandData("ProfileTaskQuery", {"x": "y"})]) == []
    args = {"SerialNumber": "s", "ServiceWithPolicyJSON": json.dumps(SPEC_EXAMPLE)}
    reply = [CommandData("Other", {}), CommandData("ContinuousProfilingPolicyQuery", args)]
    assert len(policies_from_commands(reply)) == 2


def test_command_without_json_or_repeated_is_rejected():
    with pytest.raises(PolicyReplyError, match="without ServiceWithPolicyJSON"):
        policies_from_commands([CommandData("ContinuousProfilingPolicyQuery", {"S": "x"})])
    twice = [CommandData("ContinuousProfilingPolicyQuery", {"ServiceWithPolicyJSON": "[]"})] * 2
    with pytest.raises(PolicyReplyError, match="2 ContinuousProfilingPolicyQuery"):
        policies_from_commands(twice)


def test_build_check_item_directly():
    item = build_check_item("OFF_CPU", "PROCESS_THREAD_COUNT", "100", 1, 1)
    assert item == CheckItem(TargetType.OFF_CPU, MonitorType.PROCESS_THREAD_COUNT, 100.0, 1, 1)
    assert item.measured
    http = build_check_item("NETWORK", "HTTP_ERROR_RATE", "1", 5, 5)
    assert http.measured and http.http and not item.http
    with pytest.raises(InvalidCheckItem, match="URIRegex"):
        build_check_item("NETWORK", "HTTP_ERROR_RATE", "1", 5, 5, uri_regex="(/api")
    # the regex is not used when URIs are listed
    assert build_check_item("NETWORK", "HTTP_ERROR_RATE", "1", 5, 5, ["/a"], "(").uri_list
    with pytest.raises(InvalidCheckItem, match="count 6 is larger than period 5"):
        build_check_item("ON_CPU", "PROCESS_CPU", "1", 5, 6)


# -- the cache -------------------------------------------------------------------------


def process(pid: int, service: str) -> DiscoveredProcess:
    entity = Entity("GENERAL", service, f"{service}-instance", f"proc-{pid}")
    return DiscoveredProcess(pid=pid, entity=entity, kind=ProcessKind.HOST)


CPU_80 = CheckItem(TargetType.ON_CPU, MonitorType.PROCESS_CPU, 80.0, 10, 5)
CPU_90 = CheckItem(TargetType.ON_CPU, MonitorType.PROCESS_CPU, 90.0, 10, 5)


def test_cache_replaces_on_new_uuid_ignores_same_uuid_and_removes_on_empty_uuid():
    cache = PolicyCache()
    cache.refresh({"p1": process(1, "a")})
    assert cache.known_uuids(["a"]) == {"a": ""}
    cache.apply([ServicePolicy("a", "v1", (CPU_80,))])
    assert [w.item for w in cache.watches()] == [CPU_80]
    cache.apply([ServicePolicy("a", "v1", (CPU_90,))])  # same uuid: not a change
    assert [w.item for w in cache.watches()] == [CPU_80]
    cache.apply([ServicePolicy("a", "v2", (CPU_90,))])
    assert [w.item for w in cache.watches()] == [CPU_90]
    assert cache.known_uuids(["a", "b"]) == {"a": "v2", "b": ""}
    cache.apply([ServicePolicy("a", "")])
    assert cache.watches() == [] and "a" not in cache


def test_cache_refreshes_process_sets_and_forgets_services_without_processes():
    cache = PolicyCache()
    cache.refresh({"p1": process(1, "a")})
    cache.apply([ServicePolicy("a", "v1", (CPU_80,))])
    cache.refresh({"p1": process(1, "a"), "p2": process(2, "a"), "p3": process(3, "b")})
    assert [w.process_id for w in cache.watches()] == ["p1", "p2"]
    cache.refresh({"p3": process(3, "b")})
    assert cache.watches() == [] and "a" not in cache
