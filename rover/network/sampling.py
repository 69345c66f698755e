"""Which HTTP exchanges go to the sampled-trace log (spec 8.2 and 8.8).

Rules come from a NETWORK task's ``ExtensionConfigJSON``; an exchange is sampled when
its request carries a trace context (sw8 or B3), the rule chosen for its path asks for
its category, and it is among the slowest of its traffic and category (``TopN``).
"""

from __future__ import annotations

import binascii
import functools
import heapq
import json
import logging
import re
from collections.abc import Hashable, Mapping
from typing import Any

from rover.network.model import (
    HttpExchange,
    SampledExchange,
    SamplingRule,
    SamplingSettings,
    TraceContext,
)

log = logging.getLogger(__name__)

TOP_N = 10
MAX_TOPN_KEYS = 10_000  # (traffic, reason) lists kept per interval
_INT32 = (-(2**31), 2**31 - 1)


class SamplingConfigError(ValueError):
    """An ExtensionConfigJSON value that cannot be read; the message names the field."""


def rules_from_extension(
    value: object, counters: dict[str, int] | None = None
) -> list[SamplingRule]:
    """The rules of an ExtensionConfigJSON, given parsed (or as its JSON text).

    ``None`` (JSON ``null``) and an absent ``NetworkSamplings`` mean no rules. Keys are
    matched exactly, then case-insensitively (Rover's Go decoder accepts any case). A
    rule whose ``URIRegex`` does not compile is dropped with a warning and counted in
    ``counters["sampling_rules_bad_regex"]``; any other malformed value raises.
    """
    if isinstance(value, str | bytes):
        try:
            value = json.loads(value)
        except ValueError as e:  # includes "" (Rover drops the command too)
            raise SamplingConfigError(f"ExtensionConfigJSON is not JSON: {e}") from None
    if value is None:
        return []
    if not isinstance(value, Mapping):
        raise SamplingConfigError(
            f"ExtensionConfigJSON must be an object or null, not {type(value).__name__}"
        )
    samplings = _get(value, "NetworkSamplings")
    if samplings is None:
        return []
    if not isinstance(samplings, list):
        raise SamplingConfigError("NetworkSamplings must be a list")
    rules = []
    for i, raw in enumerate(samplings):
        where = f"NetworkSamplings[{i}]"
        if not isinstance(raw, Mapping):
            raise SamplingConfigError(f"{where} must be an object")
        regex = _get(raw, "URIRegex")
        if regex is not None and not isinstance(regex, str):
            raise SamplingConfigError(f"{where}.URIRegex must be a string")
        rule = SamplingRule(
            uri_regex=regex,
            min_duration_ms=_int(raw, "MinDuration", where),
            when_4xx=_bool(raw, "When4xx", where),
            when_5xx=_bool(raw, "When5xx", where),
            settings=_settings(raw, where),
        )
        if regex is not None:
            try:
                _compiled(regex)
            except re.error as e:
                log.warning("%s.URIRegex %r does not compile (%s): rule dropped", where, regex, e)
                if counters is not None:
                    counters["sampling_rules_bad_regex"] = (
                        counters.get("sampling_rules_bad_regex", 0) + 1
                    )
                continue
        rules.append(rule)
    return rules


def _get(obj: Mapping[str, Any], key: str) -> Any:
    if key in obj:
        return obj[key]
    folded = key.lower()
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == folded:
            return v
    return None


def _bool(obj: Mapping[str, Any], key: str, where: str) -> bool:
    v = _get(obj, key)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise SamplingConfigError(f"{where}.{key} must be a boolean, not {v!r}")
    return v


def _int(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    v = _get(obj, key)
    if v is None:
        return None
    # JSON numbers such as 250.0 are whole; bools are ints in Python but not here.
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool) or not _INT32[0] <= v <= _INT32[1]:
        raise SamplingConfigError(f"{where}.{key} must be a 32-bit integer, not {v!r}")
    return v


def _settings(raw: Mapping[str, Any], where: str) -> SamplingSettings | None:
    s = _get(raw, "Settings")
    if s is None:
        return None
    where += ".Settings"
    if not isinstance(s, Mapping):
        raise SamplingConfigError(f"{where} must be an object")
    return SamplingSettings(
        require_complete_request=_bool(s, "RequireCompleteRequest", where),
        max_request_size=_int(s, "MaxRequestSize", where) or 0,
        require_complete_response=_bool(s, "RequireCompleteResponse", where),
        max_response_size=_int(s, "MaxResponseSize", where) or 0,
    )


@functools.lru_cache(maxsize=1024)
def _compiled(regex: str) -> re.Pattern[str]:
    # Compiled once per distinct regex; SamplingRule stays a plain value.
    return re.compile(regex)


def select_rule(rules: list[SamplingRule], path: str) -> SamplingRule | None:
    """The last regex rule whose regex is found in ``path``; else the default rule."""
    default = None
    for rule in reversed(rules):
        regex = rule.uri_regex
        if regex is None:
            default = rule  # reversed: ends as the first default rule in list order
        elif _compiled(regex).search(path) is not None:
            return rule
    return default


def request_path(target: str) -> str:
    """The target without its query: from the first ``?``, unless that is at position 0."""
    q = target.find("?")
    return target[:q] if q > 0 else target


def _b64(text: str) -> str | None:
    try:
        # Go's StdEncoding: padded, standard alphabet, nothing else.
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True).decode(
            "utf-8", "replace"
        )
    except (binascii.Error, UnicodeEncodeError):
        return None


def trace_context(headers: Mapping[str, str]) -> TraceContext | None:
    """The request's trace context from lower-cased header names: sw8, b3, x-b3-*."""
    sw8 = headers.get("sw8")
    if sw8:
        # A present but bad sw8 skips the exchange: B3 is not looked at (as Rover).
        parts = sw8.split("-")
        if len(parts) != 8:
            return None
        decoded = [_b64(p) for p in parts[1:3] + parts[4:8]]
        if any(d is None for d in decoded):
            return None
        return TraceContext("skywalking", decoded[0] or "", decoded[1] or "", parts[3])
    b3 = headers.get("b3")
    if b3:
        parts = b3.split("-")
        if len(parts) >= 2:
            return TraceContext("zipkin", parts[0], "", parts[1])
    trace_id = headers.get("x-b3-traceid")
    span_id = headers.get("x-b3-spanid")
    if trace_id and span_id:
        return TraceContext("zipkin", trace_id, "", span_id)
    return None


def sample(exchange: HttpExchange, rules: list[SamplingRule]) -> SampledExchange | None:
    """The exchange as a sampled record, or None (spec 8.8 rules 1-3)."""
    if not rules:
        return None
    trace = trace_context(exchange.request.headers)
    if trace is None:
        return None
    rule = select_rule(rules, request_path(exchange.request.target))
    if rule is None:
        return None
    status = exchange.response.status
    if rule.when_5xx and 500 <= status <= 599:
        reason = "status_5xx"
    elif rule.when_4xx and 400 <= status <= 499:
        reason = "status_4xx"
    elif rule.min_duration_ms is not None and exchange.duration_ms >= rule.min_duration_ms:
        reason = "slow"
    else:
        return None
    return SampledExchange(exchange=exchange, reason=reason, trace=trace, rule=rule)


class TopN:
    """Per (traffic key, reason), the ``n`` sampled records of largest duration.

    Ties keep the earlier record. Bounded: at most ``max_keys`` lists, records for new
    keys beyond that are counted in ``dropped_keys`` and not kept.
    """

    def __init__(self, n: int = TOP_N, max_keys: int = MAX_TOPN_KEYS) -> None:
        self.n = n
        self.max_keys = max_keys
        self.dropped_keys = 0
        self._seq = 0
        # min-heaps of (duration, -seq, record): the root is the shortest, and among
        # equal durations the latest, so it is what a newcomer may replace.
        self._heaps: dict[tuple[Hashable, str], list[tuple[int, int, SampledExchange]]] = {}

    def add(self, key: Hashable, record: SampledExchange) -> bool:
        """Offer a record; True if it is kept (for now)."""
        bucket = (key, record.reason)
        heap = self._heaps.get(bucket)
        if heap is None:
            if len(self._heaps) >= self.max_keys or self.n <= 0:
                self.dropped_keys += 1
                return False
            heap = self._heaps[bucket] = []
        self._seq += 1
        item = (record.exchange.duration_ms, -self._seq, record)
        if len(heap) < self.n:
            heapq.heappush(heap, item)
            return True
        if item[0] > heap[0][0]:  # an equal duration loses to the earlier record
            heapq.heapreplace(heap, item)
            return True
        return False

    def drain(self) -> dict[tuple[Hashable, str], list[SampledExchange]]:
        """The kept records per (key, reason), longest first (ties: earlier first); reset."""
        out = {
            bucket: [r for _, _, r in sorted(heap, key=lambda t: (-t[0], -t[1]))]
            for bucket, heap in self._heaps.items()
        }
        self._heaps = {}
        return out

    def __len__(self) -> int:
        return sum(len(h) for h in self._heaps.values())
