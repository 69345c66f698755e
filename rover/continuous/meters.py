"""Meters of the watched values, as the OAP's continuous-profiling rules expect (spec 4.7.7)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rover.continuous.plan import SeriesKey, series_key, watch_series
from rover.continuous.policy import MonitorType
from rover.continuous.policy_cache import Watch
from rover.continuous.windows import WindowStore


@dataclass(frozen=True, slots=True)
class MeterSample:
    """One single-value meter of one process's service instance."""

    name: str
    value: float
    service: str
    instance: str
    labels: tuple[tuple[str, str], ...]  # (name, value)
    timestamp_ms: int


def meter_name(prefix: str, monitor: MonitorType) -> str:
    return f"{prefix}_{monitor.value.lower()}"


def collect_meters(
    watches: list[Watch],
    windows: WindowStore[SeriesKey],
    prefix: str,
    newer_than: int,
    timestamp_ms: int,
    through: int | None = None,
    slot_ms: Callable[[int], int] | None = None,
) -> list[MeterSample]:
    """The latest value of each watched (process, monitor) whose series got a sample
    in a slot after ``newer_than``; one meter per process even when several items
    (e.g. ON_CPU and OFF_CPU) watch the same monitor. System load is repeated per
    process, as the OAP aggregates it per instance.

    HTTP series send one meter per slot in ``newer_than < slot <= through``, stamped
    ``slot_ms(slot)``, labelled with their ``uri`` (spec 4.7.7); seconds without
    requests have no slot and send nothing."""
    samples: list[MeterSample] = []
    seen: set[tuple[str, MonitorType]] = set()
    seen_http: set[tuple[str, SeriesKey]] = set()
    for watch in watches:
        monitor = watch.item.monitor
        if watch.item.http and watch.item.measured:
            for key, uri in watch_series(watch):
                if (watch.process_id, key) in seen_http or uri is None:
                    continue
                seen_http.add((watch.process_id, key))
                window = windows.get(key)
                if window is None:
                    continue
                last = through if through is not None else 2**62
                entity = watch.process.entity
                for slot, value in window.between(newer_than, last):
                    samples.append(
                        MeterSample(
                            name=meter_name(prefix, monitor),
                            value=value,
                            service=entity.service_name,
                            instance=entity.instance_name,
                            labels=(
                                ("uri", uri.label),
                                ("process_name", entity.process_name),
                                ("layer", entity.layer),
                            ),
                            timestamp_ms=slot_ms(slot) if slot_ms else timestamp_ms,
                        )
                    )
            continue
        if not watch.item.measured or (watch.process_id, monitor) in seen:
            continue
        seen.add((watch.process_id, monitor))
        window = windows.get(series_key(monitor, watch.process))
        latest = window.latest() if window is not None else None
        if latest is None or latest[0] <= newer_than:
            continue
        entity = watch.process.entity
        samples.append(
            MeterSample(
                name=meter_name(prefix, monitor),
                value=latest[1],
                service=entity.service_name,
                instance=entity.instance_name,
                labels=(("process_name", entity.process_name), ("layer", entity.layer)),
                timestamp_ms=timestamp_ms,
            )
        )
    return samples
