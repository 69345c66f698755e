# ruff: noqa
# fmt: off
from rover.backend.proto.common import Common_pb2 as _Common_pb2
from rover.backend.proto.common import Command_pb2 as _Command_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SpanAttachedEvent(_message.Message):
    __slots__ = ("startTime", "event", "endTime", "tags", "summary", "traceContext")
    class SpanReferenceType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        SKYWALKING: _ClassVar[SpanAttachedEvent.SpanReferenceType]
        ZIPKIN: _ClassVar[SpanAttachedEvent.SpanReferenceType]
    SKYWALKING: SpanAttachedEvent.SpanReferenceType
    ZIPKIN: SpanAttachedEvent.SpanReferenceType
    class SpanReference(_message.Message):
        __slots__ = ("type", "traceId", "traceSegmentId", "spanId")
        TYPE_FIELD_NUMBER: _ClassVar[int]
        TRACEID_FIELD_NUMBER: _ClassVar[int]
        TRACESEGMENTID_FIELD_NUMBER: _ClassVar[int]
        SPANID_FIELD_NUMBER: _ClassVar[int]
        type: SpanAttachedEvent.SpanReferenceType
        traceId: str
        traceSegmentId: str
        spanId: str
        def __init__(self, type: _Optional[_Union[SpanAttachedEvent.SpanReferenceType, str]] = ..., traceId: _Optional[str] = ..., traceSegmentId: _Optional[str] = ..., spanId: _Optional[str] = ...) -> None: ...
    STARTTIME_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ENDTIME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    TRACECONTEXT_FIELD_NUMBER: _ClassVar[int]
    startTime: _Common_pb2.Instant
    event: str
    endTime: _Common_pb2.Instant
    tags: _containers.RepeatedCompositeFieldContainer[_Common_pb2.KeyStringValuePair]
    summary: _containers.RepeatedCompositeFieldContainer[_Common_pb2.KeyIntValuePair]
    traceContext: SpanAttachedEvent.SpanReference
    def __init__(self, startTime: _Optional[_Union[_Common_pb2.Instant, _Mapping]] = ..., event: _Optional[str] = ..., endTime: _Optional[_Union[_Common_pb2.Instant, _Mapping]] = ..., tags: _Optional[_Iterable[_Union[_Common_pb2.KeyStringValuePair, _Mapping]]] = ..., summary: _Optional[_Iterable[_Union[_Common_pb2.KeyIntValuePair, _Mapping]]] = ..., traceContext: _Optional[_Union[SpanAttachedEvent.SpanReference, _Mapping]] = ...) -> None: ...
