"""Continuous profiling: watch process and host metrics, trigger profiling tasks.

Wire formats live in ``rover.backend.continuous``; this package works on the
plain values below; its settings are ``rover.config.ContinuousConfig``.
"""

from rover.continuous.meters import MeterSample, meter_name
from rover.continuous.metrics import MetricsReader, ProcessReading, ProcessVanished, PsutilMetrics
from rover.continuous.policy import (
    CheckItem,
    InvalidCheckItem,
    MonitorType,
    ServicePolicy,
    TargetType,
    build_check_item,
)
from rover.continuous.ports import MeterSink, PolicySource, ProcessSource, TaskStarter, TriggerSink
from rover.continuous.profiler import ContinuousProfiler, ProfilerStats
from rover.continuous.trigger import Cause, Trigger

__all__ = [
    "Cause",
    "CheckItem",
    "ContinuousProfiler",
    "InvalidCheckItem",
    "MeterSample",
    "MeterSink",
    "MetricsReader",
    "MonitorType",
    "PolicySource",
    "ProcessReading",
    "ProcessSource",
    "ProcessVanished",
    "ProfilerStats",
    "PsutilMetrics",
    "ServicePolicy",
    "TargetType",
    "TaskStarter",
    "Trigger",
    "TriggerSink",
    "build_check_item",
    "meter_name",
]
