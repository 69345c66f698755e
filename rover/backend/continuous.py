"""Continuous profiling on the wire: policy JSON in, trigger reports and meters out.

Converts between the plain values of :mod:`rover.continuous` and the
backend's commands and protobuf messages (spec 2.4, 2.5, 3.4, 3.5, 4.7.7),
and provides the adapters the :class:`~rover.continuous.ContinuousProfiler`
is built with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from rover.backend.commands import CommandData
from rover.backend.proto.ebpf.profiling import Continuous_pb2
from rover.backend.proto.language_agent import Meter_pb2
from rover.continuous.http_series import REGEX
from rover.continuous.meters import MeterSample
from rover.continuous.policy import (
    CheckItem,
    InvalidCheckItem,
    MonitorType,
    ServicePolicy,
    TargetType,
    build_check_item,
)
from rover.continuous.trigger import Cause, Trigger

log = logging.getLogger(__name__)

POLICY_COMMAND = "ContinuousProfilingPolicyQuery"
POLICY_ARG = "ServiceWithPolicyJSON"
REPORT_COMMAND = "ContinuousProfilingReportTask"
TASK_ID_ARG = "TaskId"
_MAX_LOGGED = 1024  # distinct policy problems remembered as logged

_SINGLE_VALUE_MONITORS = {
    MonitorType.PROCESS_CPU: Continuous_pb2.ProcessCPU,
    MonitorType.PROCESS_THREAD_COUNT: Continuous_pb2.ProcessThreadCount,
    MonitorType.SYSTEM_LOAD: Continuous_pb2.SystemLoad,
}
_URI_MONITORS = {
    MonitorType.HTTP_ERROR_RATE: Continuous_pb2.HTTPErrorRate,
    MonitorType.HTTP_AVG_RESPONSE_TIME: Continuous_pb2.HTTPAvgResponseTime,
}


class PolicyReplyError(ValueError):
    """A queryPolicies reply that cannot be used at all."""


class ReportReplyError(ValueError):
    """A reportProfilingTask reply without exactly one usable task id."""


class ContinuousClient(Protocol):
    """The calls of :class:`rover.backend.client.BackendClient` used here."""

    def query_policies(self, services: list[tuple[str, str]]) -> list[CommandData]: ...

    def report_profiling_task(
        self, report: Continuous_pb2.ContinuousProfilingReport
    ) -> list[CommandData]: ...

    def send_meters(self, collections: list[Meter_pb2.MeterDataCollection]) -> None: ...


# -- policies (spec 3.4) ------------------------------------------------------------------

SkipReport = Callable[[str], None]  # told why a policy entry or check item was skipped


def _log_skip(reason: str) -> None:
    log.warning("continuous profiling: %s", reason)


def policies_from_commands(
    commands: list[CommandData], skipped: SkipReport = _log_skip
) -> list[ServicePolicy]:
    """The changed policies in a queryPolicies reply; ``[]`` when nothing changed.

    Raises :class:`PolicyReplyError` when the reply as a whole is unusable.
    Commands of other names are ignored (spec 3.1).
    """
    ours = [c for c in commands if c.name == POLICY_COMMAND]
    if not ours:
        return []
    if len(ours) > 1:
        raise PolicyReplyError(f"{len(ours)} {POLICY_COMMAND} commands in one reply, expected 1")
    text = ours[0].args.get(POLICY_ARG)
    if text is None:
        raise PolicyReplyError(f"{POLICY_COMMAND} command without {POLICY_ARG}")
    return policies_from_json(text, skipped)


def policies_from_json(text: str, skipped: SkipReport = _log_skip) -> list[ServicePolicy]:
    """Parse ``ServiceWithPolicyJSON``. A bad service entry or check item is skipped
    and ``skipped`` told why; only unparsable JSON or a non-array rejects it all."""
    try:
        entries = json.loads(text)
    except ValueError as exc:
        raise PolicyReplyError(f"{POLICY_ARG} is not valid JSON: {exc}") from None
    except RecursionError:  # deeper than the interpreter's stack; no policy nests that deep
        raise PolicyReplyError(f"{POLICY_ARG} nests too deeply to parse") from None
    if not isinstance(entries, list):
        raise PolicyReplyError(f"{POLICY_ARG} is a JSON {type(entries).__name__}, not an array")
    policies: list[ServicePolicy] = []
    for index, entry in enumerate(entries):
        try:
            policies.append(_service_policy(entry, skipped))
        except PolicyReplyError as exc:
            skipped(f"policy entry {index} skipped: {exc}")
        except Exception as exc:  # noqa: BLE001 - one bad entry must not cost the others
            skipped(f"policy entry {index} skipped: {type(exc).__name__}: {exc}")
    return policies


def _service_policy(entry: Any, skipped: SkipReport) -> ServicePolicy:
    if not isinstance(entry, dict):
        raise PolicyReplyError(f"a JSON {type(entry).__name__}, not an object")
    service = entry.get("ServiceName")
    if not isinstance(service, str) or not service:
        raise PolicyReplyError(f"ServiceName {service!r} is not a non-empty string")
    uuid = entry.get("UUID")
    if not isinstance(uuid, str):
        raise PolicyReplyError(f"service {service!r}: UUID {uuid!r} is not a string")
    if uuid == "":
        return ServicePolicy(service, "")
    profiling = entry.get("Profiling")
    if profiling is None:
        profiling = {}
    if not isinstance(profiling, dict):
        raise PolicyReplyError(f"service {service!r}: Profiling is not an object")
    items: list[CheckItem] = []
    for target, checks in profiling.items():
        if not isinstance(checks, dict):
            skipped(f"service {service!r}: {target} skipped: not an object")
            continue
        for monitor, fields in checks.items():
            try:
                items.append(_check_item(target, monitor, fields))
            except InvalidCheckItem as exc:
                skipped(f"service {service!r}: item {target}/{monitor} skipped: {exc}")
    return ServicePolicy(service, uuid, tuple(items))


def _check_item(target: str, monitor: str, fields: Any) -> CheckItem:
    if not isinstance(fields, dict):
        raise InvalidCheckItem("not an object")
    return build_check_item(
        target,
        monitor,
        _threshold(fields.get("Threshold")),
        _integer(fields, "Period"),
        _integer(fields, "Count"),
        _strings(fields.get("URIList")),
        _string(fields.get("URIRegex"), "URIRegex"),
    )


def _threshold(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # tolerate a JSON number where a string is specified
    raise InvalidCheckItem(f"threshold {value!r} is not a string")


def _integer(fields: Mapping[str, Any], key: str) -> int:
    value = fields.get(key, 0)  # absent = 0, which validation rejects
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidCheckItem(f"{key} {value!r} is not an integer")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidCheckItem(f"URIList {value!r} is not a list of strings")
    return tuple(value)


def _string(value: Any, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidCheckItem(f"{key} {value!r} is not a string")
    return value


# -- trigger reports (spec 2.4, 3.5, 4.7.5) ---------------------------------------------


def report_to_proto(trigger: Trigger) -> Continuous_pb2.ContinuousProfilingReport:
    """The report of a trigger: the main process's entity, its causes, the task."""
    entity = trigger.process.entity
    report = Continuous_pb2.ContinuousProfilingReport(
        layer=entity.layer,
        serviceName=entity.service_name,
        instanceName=entity.instance_name,
        processName=entity.process_name,
        duration=trigger.duration_s,
    )
    for cause in trigger.causes:
        report.causes.append(_cause(cause))
    if trigger.target is TargetType.ON_CPU:
        report.onCPU.SetInParent()
    elif trigger.target is TargetType.OFF_CPU:
        report.offCPU.SetInParent()
    elif trigger.target is TargetType.NETWORK:
        report.network.SetInParent()
        report.network.samplingURIRegexes.extend(trigger.sampling_uri_regexes())
    else:
        raise ValueError(f"cannot report a {trigger.target} trigger: not supported")
    return report


def _cause(cause: Cause) -> Continuous_pb2.ContinuousProfilingCause:
    """A single-value cause, or for HTTP monitors a ``uri`` cause: ``path`` for a listed
    path and for "every request" (path ""), ``regex`` for a URIRegex (spec 8.13 rule 9)."""
    single = _SINGLE_VALUE_MONITORS.get(cause.monitor)
    if single is not None and cause.uri is None:
        return Continuous_pb2.ContinuousProfilingCause(
            type=single,
            singleValue=Continuous_pb2.ContinuousProfilingSingleValueCause(
                threshold=cause.threshold, current=cause.current
            ),
        )
    uri_type = _URI_MONITORS.get(cause.monitor)
    if uri_type is None or cause.uri is None:
        raise ValueError(f"cannot report a {cause.monitor} cause without its value kind")
    uri = Continuous_pb2.ContinuousProfilingURICause(
        threshold=cause.threshold, current=cause.current
    )
    if cause.uri.kind == REGEX:
        uri.regex = cause.uri.value
    else:
        uri.path = cause.uri.value  # "" for the global series
    return Continuous_pb2.ContinuousProfilingCause(type=uri_type, uri=uri)


def task_id_from_reply(commands: list[CommandData]) -> str:
    """The TaskId of the one ``ContinuousProfilingReportTask`` command, or an error."""
    ours = [c for c in commands if c.name == REPORT_COMMAND]
    if len(ours) != 1:
        names = [c.name for c in commands]
        raise ReportReplyError(f"expected one {REPORT_COMMAND} command, got {names or 'none'}")
    task_id = (ours[0].args.get(TASK_ID_ARG) or "").strip()
    if not task_id:
        raise ReportReplyError(f"{REPORT_COMMAND} command without a {TASK_ID_ARG}")
    return task_id


# -- meters (spec 2.5, 4.7.7) -----------------------------------------------------------


def meters_to_proto(samples: list[MeterSample]) -> list[Meter_pb2.MeterDataCollection]:
    """One collection per (service, instance), in order of first appearance."""
    groups: dict[tuple[str, str], Meter_pb2.MeterDataCollection] = {}
    for sample in samples:
        collection = groups.get((sample.service, sample.instance))
        if collection is None:
            collection = Meter_pb2.MeterDataCollection()
            groups[(sample.service, sample.instance)] = collection
        collection.meterData.add(
            service=sample.service,
            serviceInstance=sample.instance,
            timestamp=sample.timestamp_ms,
            singleValue=Meter_pb2.MeterSingleValue(
                name=sample.name,
                value=sample.value,
                labels=[Meter_pb2.Label(name=n, value=v) for n, v in sample.labels],
            ),
        )
    return list(groups.values())


# -- adapters for ContinuousProfiler ------------------------------------------------------


class BackendPolicySource:
    """:class:`rover.continuous.PolicySource` over queryPolicies.

    A skipped entry is asked for again at every check (its version is never cached), so
    what is wrong is counted each time but logged once.
    """

    def __init__(self, client: ContinuousClient) -> None:
        self._client = client
        self.entries_skipped = 0  # policy entries and check items
        self.replies_rejected = 0
        self._logged: set[str] = set()

    def fetch(self, known: dict[str, str]) -> list[ServicePolicy] | None:
        commands = self._client.query_policies(sorted(known.items()))
        try:
            return policies_from_commands(commands, self._skipped)
        except PolicyReplyError as exc:
            self.replies_rejected += 1
            self._log_once(logging.ERROR, f"policy reply rejected, keeping cached: {exc}")
            return None

    def _skipped(self, reason: str) -> None:
        self.entries_skipped += 1
        self._log_once(logging.WARNING, reason)

    def _log_once(self, level: int, message: str) -> None:
        if message in self._logged:
            return
        if len(self._logged) >= _MAX_LOGGED:
            self._logged.clear()
        self._logged.add(message)
        log.log(level, "continuous profiling: %s", message)


class BackendTriggerSink:
    """:class:`rover.continuous.TriggerSink` over reportProfilingTask."""

    def __init__(self, client: ContinuousClient) -> None:
        self._client = client

    def report(self, trigger: Trigger) -> str:
        return task_id_from_reply(self._client.report_profiling_task(report_to_proto(trigger)))


class BackendMeterSink:
    """:class:`rover.continuous.MeterSink` over MeterReportService/collectBatch."""

    def __init__(self, client: ContinuousClient) -> None:
        self._client = client

    def send(self, samples: list[MeterSample]) -> None:
        if samples:
            self._client.send_meters(meters_to_proto(samples))
