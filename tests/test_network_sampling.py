"""Sampling rules, trace contexts and top-N (spec 8.2 and 8.8)."""

from __future__ import annotations

import base64
import json
import logging

import pytest

from rover.network.model import (
    Direction,
    HttpExchange,
    HttpMessage,
    SampledExchange,
    SamplingRule,
    SamplingSettings,
    TraceContext,
)
from rover.network.sampling import (
    SamplingConfigError,
    TopN,
    request_path,
    rules_from_extension,
    sample,
    select_rule,
    trace_context,
)

MS = 1_000_000


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


SW8 = "-".join(
    ["1", b64("trace-1"), b64("segment-1"), "3", b64("shop"), b64("inst"), b64("/x"), b64("h:80")]
)


def exchange(
    target: str = "/api/orders",
    status: int = 200,
    duration_ms: int = 5,
    headers: dict[str, str] | None = None,
    start_ns: int = 0,
) -> HttpExchange:
    req = HttpMessage(
        is_request=True,
        method="GET",
        target=target,
        headers={"sw8": SW8} if headers is None else headers,
        direction=Direction.RECV,
        start_ns=start_ns,
    )
    end = start_ns + duration_ms * MS
    resp = HttpMessage(is_request=False, status=status, start_ns=end, end_ns=end)
    return HttpExchange(conn_id=1, pid=2, request=req, response=resp)


# -- ExtensionConfigJSON ----------------------------------------------------------


def test_spec_example_parses() -> None:
    text = json.dumps(
        {
            "NetworkSamplings": [
                {
                    "URIRegex": "^/api/orders/.*",
                    "MinDuration": 250,
                    "When4xx": False,
                    "When5xx": True,
                    "Settings": {
                        "RequireCompleteRequest": True,
                        "MaxRequestSize": 8192,
                        "RequireCompleteResponse": True,
                        "MaxResponseSize": 4096,
                    },
                },
                {
                    "When4xx": True,
                    "When5xx": True,
                    "Settings": {"RequireCompleteRequest": False, "RequireCompleteResponse": True},
                },
            ]
        }
    )
    expected = [
        SamplingRule("^/api/orders/.*", 250, False, True, SamplingSettings(True, 8192, True, 4096)),
        SamplingRule(None, None, True, True, SamplingSettings(False, 0, True, 0)),
    ]
    assert rules_from_extension(text) == expected
    assert rules_from_extension(json.loads(text)) == expected


def test_null_and_absent_mean_no_rules() -> None:
    assert rules_from_extension(None) == []
    assert rules_from_extension("null") == []
    assert rules_from_extension({}) == []
    assert rules_from_extension({"NetworkSamplings": None}) == []
    assert rules_from_extension({"NetworkSamplings": []}) == []


def test_absent_fields_take_defaults() -> None:
    [rule] = rules_from_extension({"NetworkSamplings": [{}]})
    assert rule == SamplingRule(None, None, False, False, None)
    [rule] = rules_from_extension({"NetworkSamplings": [{"Settings": {}, "URIRegex": None}]})
    assert rule.settings == SamplingSettings(False, 0, False, 0) and rule.uri_regex is None
    [rule] = rules_from_extension({"NetworkSamplings": [{"MinDuration": 0, "URIRegex": ""}]})
    assert rule.min_duration_ms == 0 and rule.uri_regex == ""


def test_keys_fall_back_to_any_case() -> None:
    [rule] = rules_from_extension(
        {"networksamplings": [{"uriregex": "/a", "MINDURATION": 7, "when5XX": True}]}
    )
    assert rule == SamplingRule("/a", 7, False, True, None)
    # The exact spelling wins over another case.
    [rule] = rules_from_extension({"NetworkSamplings": [{"URIRegex": "/x", "uriregex": "/y"}]})
    assert rule.uri_regex == "/x"


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("", "not JSON"),
        ("{", "not JSON"),
        ([], "object or null"),
        ({"NetworkSamplings": {}}, "NetworkSamplings must be a list"),
        ({"NetworkSamplings": [3]}, "NetworkSamplings[0] must be an object"),
        ({"NetworkSamplings": [{}, {"URIRegex": 5}]}, "NetworkSamplings[1].URIRegex"),
        ({"NetworkSamplings": [{"MinDuration": "5"}]}, "NetworkSamplings[0].MinDuration"),
        ({"NetworkSamplings": [{"MinDuration": True}]}, "NetworkSamplings[0].MinDuration"),
        ({"NetworkSamplings": [{"MinDuration": 2.5}]}, "NetworkSamplings[0].MinDuration"),
        ({"NetworkSamplings": [{"MinDuration": 2**40}]}, "NetworkSamplings[0].MinDuration"),
        ({"NetworkSamplings": [{"When4xx": "yes"}]}, "NetworkSamplings[0].When4xx"),
        ({"NetworkSamplings": [{"When5xx": 1}]}, "NetworkSamplings[0].When5xx"),
        ({"NetworkSamplings": [{"Settings": []}]}, "NetworkSamplings[0].Settings must"),
        (
            {"NetworkSamplings": [{"Settings": {"MaxRequestSize": "1k"}}]},
            "NetworkSamplings[0].Settings.MaxRequestSize",
        ),
        (
            {"NetworkSamplings": [{"Settings": {"RequireCompleteResponse": "true"}}]},
            "NetworkSamplings[0].Settings.RequireCompleteResponse",
        ),
    ],
)
def test_malformed_values_raise_naming_the_field(value: object, field: str) -> None:
    with pytest.raises(SamplingConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        rules_from_extension(value)
    assert issubclass(SamplingConfigError, ValueError)


def test_whole_float_accepted_as_int() -> None:
    [rule] = rules_from_extension({"NetworkSamplings": [{"MinDuration": 250.0}]})
    assert rule.min_duration_ms == 250 and isinstance(rule.min_duration_ms, int)


def test_bad_regex_drops_only_that_rule(caplog: pytest.LogCaptureFixture) -> None:
    counters: dict[str, int] = {}
    with caplog.at_level(logging.WARNING):
        rules = rules_from_extension(
            {"NetworkSamplings": [{"URIRegex": "(unclosed"}, {"URIRegex": "/ok"}]}, counters
        )
    assert [r.uri_regex for r in rules] == ["/ok"]
    assert counters == {"sampling_rules_bad_regex": 1}
    assert "NetworkSamplings[0].URIRegex" in caplog.text and "(unclosed" in caplog.text
    assert rules_from_extension({"NetworkSamplings": [{"URIRegex": "["}]}) == []


# -- rule selection ------------------------------------------------------------------


def test_last_matching_rule_wins() -> None:
    a = SamplingRule("/api", min_duration_ms=1)
    b = SamplingRule("orders", min_duration_ms=2)
    c = SamplingRule("/nomatch", min_duration_ms=3)
    assert select_rule([a, b, c], "/api/orders") is b
    assert select_rule([b, a, c], "/api/orders") is a
    assert select_rule([a, b, c], "/api/users") is a


def test_regex_is_unanchored_search() -> None:
    rule = SamplingRule("orders/\\d+$")
    assert select_rule([rule], "/api/orders/17") is rule
    assert select_rule([rule], "/api/orders/17/items") is None
    anchored = SamplingRule("^/api")
    assert select_rule([anchored], "/v2/api") is None


def test_default_rule_only_when_no_regex_rule_matches() -> None:
    default = SamplingRule(None, when_5xx=True)
    users = SamplingRule("/users")
    assert select_rule([default, users], "/users/1") is users
    assert select_rule([users, default], "/users/1") is users  # position does not matter
    assert select_rule([users, default], "/orders") is default
    # A second default rule never overrides the first.
    other_default = SamplingRule(None, when_4xx=True)
    assert select_rule([default, other_default], "/x") is default


def test_empty_regex_is_an_ordinary_match_all_rule() -> None:
    default = SamplingRule(None)
    match_all = SamplingRule("")
    users = SamplingRule("/users")
    assert select_rule([default, match_all], "/anything") is match_all
    assert select_rule([users, match_all], "/users") is match_all  # later in the list
    assert select_rule([match_all, users], "/other") is match_all
    assert select_rule([], "/x") is None


def test_request_path_strips_query() -> None:
    assert request_path("/a/b?x=1?y=2") == "/a/b"
    assert request_path("/a/b") == "/a/b"
    assert request_path("?only=query") == "?only=query"  # "?" at position 0 stays
    assert request_path("/a?") == "/a"
    assert request_path("") == ""


# -- trace context -------------------------------------------------------------------


def test_sw8() -> None:
    assert trace_context({"sw8": SW8}) == TraceContext("skywalking", "trace-1", "segment-1", "3")


@pytest.mark.parametrize(
    "value",
    [
        "1-" + b64("t"),  # too few parts
        SW8 + "-extra",  # nine parts
        SW8.replace(b64("trace-1"), "not*base64"),  # bad trace id
        SW8.replace(b64("segment-1"), "YQ"),  # missing padding
        SW8.replace(b64("h:80"), "%%%"),  # parts 5-8 must be base64 too
        SW8.replace(b64("shop"), "=YQ="),
    ],
)
def test_bad_sw8_skips_even_with_b3(value: str) -> None:
    assert trace_context({"sw8": value, "b3": "abc-def-1"}) is None


def test_sw8_empty_parts_are_valid_base64() -> None:
    ctx = trace_context({"sw8": "1---7----"})
    assert ctx == TraceContext("skywalking", "", "", "7")


def test_b3_forms() -> None:
    assert trace_context({"b3": "80f198ee56343ba8-e457b5a2e4d86bd1-1"}) == TraceContext(
        "zipkin", "80f198ee56343ba8", "", "e457b5a2e4d86bd1"
    )
    assert trace_context({"b3": "t-s"}) == TraceContext("zipkin", "t", "", "s")
    # single-part b3 ("0": deny) falls through to the x-b3 pair
    headers = {"b3": "0", "x-b3-traceid": "tt", "x-b3-spanid": "ss"}
    assert trace_context(headers) == TraceContext("zipkin", "tt", "", "ss")
    assert trace_context({"x-b3-traceid": "tt"}) is None
    assert trace_context({"x-b3-spanid": "ss"}) is None
    assert trace_context({"b3": "0"}) is None
    assert trace_context({}) is None
    assert trace_context({"sw8": "", "b3": "a-b"}) == TraceContext("zipkin", "a", "", "b")


# -- sampling ------------------------------------------------------------------------


def reason(ex: HttpExchange, rules: list[SamplingRule]) -> str | None:
    got = sample(ex, rules)
    return None if got is None else got.reason


def test_category_order_5xx_4xx_slow() -> None:
    everything = [SamplingRule(None, min_duration_ms=0, when_4xx=True, when_5xx=True)]
    assert reason(exchange(status=503), everything) == "status_5xx"
    assert reason(exchange(status=404), everything) == "status_4xx"
    assert reason(exchange(status=200), everything) == "slow"
    only_5xx = [SamplingRule(None, when_5xx=True)]
    assert reason(exchange(status=404), only_5xx) is None
    assert reason(exchange(status=600), only_5xx) is None
    assert reason(exchange(status=500), only_5xx) == "status_5xx"
    assert reason(exchange(status=599), only_5xx) == "status_5xx"
    only_4xx = [SamplingRule(None, when_4xx=True)]
    assert reason(exchange(status=400), only_4xx) == "status_4xx"
    assert reason(exchange(status=500), only_4xx) is None
    assert reason(exchange(status=499, duration_ms=9), [SamplingRule(None, 9)]) == "slow"


def test_slow_threshold_and_absent_min_duration() -> None:
    rule = SamplingRule(None, min_duration_ms=100)
    assert sample(exchange(duration_ms=99), [rule]) is None
    ex = exchange(duration_ms=100)
    assert sample(ex, [rule]) == SampledExchange(
        exchange=ex,
        reason="slow",
        trace=TraceContext("skywalking", "trace-1", "segment-1", "3"),
        rule=rule,
    )
    assert sample(exchange(duration_ms=10_000), [SamplingRule(None)]) is None


def test_sample_needs_trace_context_and_rule() -> None:
    rule = SamplingRule("/api", min_duration_ms=0)
    assert sample(exchange(headers={}), [rule]) is None
    assert sample(exchange(target="/other"), [rule]) is None
    assert sample(exchange(), []) is None
    assert sample(exchange(target="/api?x=1"), [rule]) is not None


def test_sample_matches_path_without_query() -> None:
    rule = SamplingRule("x=1", min_duration_ms=0)
    assert sample(exchange(target="/api?x=1"), [rule]) is None
    chosen = SamplingRule("^/api$", when_5xx=True)
    got = sample(exchange(target="/api?q", status=500), [rule, chosen])
    assert got is not None and got.rule is chosen


# -- top-N ---------------------------------------------------------------------------


def record(ms: int, reason: str = "slow", tag: str = "") -> SampledExchange:
    return SampledExchange(
        exchange=exchange(target="/" + tag, duration_ms=ms),
        reason=reason,
        trace=TraceContext("zipkin", "t", "", "s"),
        rule=SamplingRule(None),
    )


def test_top_n_keeps_largest_longest_first() -> None:
    top = TopN(n=3)
    for ms in (5, 1, 9, 7, 3, 8):
        top.add("traffic", record(ms))
    assert len(top) == 3
    [(bucket, kept)] = top.drain().items()
    assert bucket == ("traffic", "slow")
    assert [r.exchange.duration_ms for r in kept] == [9, 8, 7]
    assert top.drain() == {} and len(top) == 0


def test_top_n_ties_keep_the_earlier_record() -> None:
    top = TopN(n=2)
    assert top.add("t", record(5, tag="first"))
    assert top.add("t", record(5, tag="second"))
    assert not top.add("t", record(5, tag="third"))
    assert top.add("t", record(6, tag="fourth"))  # evicts the later of the two 5s
    kept = top.drain()[("t", "slow")]
    assert [r.exchange.request.target for r in kept] == ["/fourth", "/first"]
    top = TopN(n=3)
    for tag in ("a", "b", "c"):
        top.add("t", record(4, tag=tag))
    assert [r.exchange.request.target for r in top.drain()[("t", "slow")]] == ["/a", "/b", "/c"]


def test_top_n_separate_per_traffic_and_reason_and_bounded() -> None:
    top = TopN(n=1, max_keys=2)
    assert top.add("a", record(1, "slow"))
    assert top.add("a", record(1, "status_5xx"))
    assert not top.add("b", record(99, "slow"))  # a third list: over max_keys
    assert top.dropped_keys == 1
    assert set(top.drain()) == {("a", "slow"), ("a", "status_5xx")}
    many = TopN()
    for i in range(1000):
        many.add("x", record(i % 37))
    assert len(many) == 10
    assert [r.exchange.duration_ms for r in many.drain()[("x", "slow")]] == [36] * 10
