# ruff: noqa
# fmt: off
from rover.backend.proto.common import Command_pb2 as _Command_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ContinuousProfilingTriggeredMonitorType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ProcessCPU: _ClassVar[ContinuousProfilingTriggeredMonitorType]
    ProcessThreadCount: _ClassVar[ContinuousProfilingTriggeredMonitorType]
    SystemLoad: _ClassVar[ContinuousProfilingTriggeredMonitorType]
    HTTPErrorRate: _ClassVar[ContinuousProfilingTriggeredMonitorType]
    HTTPAvgResponseTime: _ClassVar[ContinuousProfilingTriggeredMonitorType]
ProcessCPU: ContinuousProfilingTriggeredMonitorType
ProcessThreadCount: ContinuousProfilingTriggeredMonitorType
SystemLoad: ContinuousProfilingTriggeredMonitorType
HTTPErrorRate: ContinuousProfilingTriggeredMonitorType
HTTPAvgResponseTime: ContinuousProfilingTriggeredMonitorType

class ContinuousProfilingPolicyQuery(_message.Message):
    __slots__ = ("policies",)
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[ContinuousProfilingServicePolicyQuery]
    def __init__(self, policies: _Optional[_Iterable[_Union[ContinuousProfilingServicePolicyQuery, _Mapping]]] = ...) -> None: ...

class ContinuousProfilingServicePolicyQuery(_message.Message):
    __slots__ = ("serviceName", "uuid")
    SERVICENAME_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    serviceName: str
    uuid: str
    def __init__(self, serviceName: _Optional[str] = ..., uuid: _Optional[str] = ...) -> None: ...

class ContinuousProfilingReport(_message.Message):
    __slots__ = ("layer", "serviceName", "instanceName", "processName", "causes", "duration", "onCPU", "offCPU", "network")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    SERVICENAME_FIELD_NUMBER: _ClassVar[int]
    INSTANCENAME_FIELD_NUMBER: _ClassVar[int]
    PROCESSNAME_FIELD_NUMBER: _ClassVar[int]
    CAUSES_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    ONCPU_FIELD_NUMBER: _ClassVar[int]
    OFFCPU_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    layer: str
    serviceName: str
    instanceName: str
    processName: str
    causes: _containers.RepeatedCompositeFieldContainer[ContinuousProfilingCause]
    duration: int
    onCPU: ContinuousOnCPUProfilingTask
    offCPU: ContinuousOffCPUProfilingTask
    network: ContinuousNetworkProfilingTask
    def __init__(self, layer: _Optional[str] = ..., serviceName: _Optional[str] = ..., instanceName: _Optional[str] = ..., processName: _Optional[str] = ..., causes: _Optional[_Iterable[_Union[ContinuousProfilingCause, _Mapping]]] = ..., duration: _Optional[int] = ..., onCPU: _Optional[_Union[ContinuousOnCPUProfilingTask, _Mapping]] = ..., offCPU: _Optional[_Union[ContinuousOffCPUProfilingTask, _Mapping]] = ..., network: _Optional[_Union[ContinuousNetworkProfilingTask, _Mapping]] = ...) -> None: ...

class ContinuousProfilingCause(_message.Message):
    __slots__ = ("type", "singleValue", "uri")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SINGLEVALUE_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    type: ContinuousProfilingTriggeredMonitorType
    singleValue: ContinuousProfilingSingleValueCause
    uri: ContinuousProfilingURICause
    def __init__(self, type: _Optional[_Union[ContinuousProfilingTriggeredMonitorType, str]] = ..., singleValue: _Optional[_Union[ContinuousProfilingSingleValueCause, _Mapping]] = ..., uri: _Optional[_Union[ContinuousProfilingURICause, _Mapping]] = ...) -> None: ...

class ContinuousProfilingSingleValueCause(_message.Message):
    __slots__ = ("threshold", "current")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    current: float
    def __init__(self, threshold: _Optional[float] = ..., current: _Optional[float] = ...) -> None: ...

class ContinuousProfilingURICause(_message.Message):
    __slots__ = ("regex", "path", "threshold", "current")
    REGEX_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    regex: str
    path: str
    threshold: float
    current: float
    def __init__(self, regex: _Optional[str] = ..., path: _Optional[str] = ..., threshold: _Optional[float] = ..., current: _Optional[float] = ...) -> None: ...

class ContinuousOnCPUProfilingTask(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContinuousOffCPUProfilingTask(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContinuousNetworkProfilingTask(_message.Message):
    __slots__ = ("samplingURIRegexes",)
    SAMPLINGURIREGEXES_FIELD_NUMBER: _ClassVar[int]
    samplingURIRegexes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, samplingURIRegexes: _Optional[_Iterable[str]] = ...) -> None: ...
