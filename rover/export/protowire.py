"""The top-level fields of a protobuf message, found without parsing it whole.

Python's protobuf parses a message whole: a pprof profile with a million
samples takes about 8x its encoded size that way. Its samples are a repeated
top-level field, so a reader can parse the rest of the message at once and
each sample on its own, keeping only the encoded bytes. This module only walks
the top level (a tag, then a value or a length per field, as the wire format
defines); the protobuf library parses every part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """Bytes that are not a protobuf message."""


def split_repeated(
    data: bytes | bytearray, number: int, rest: Callable[[memoryview], object]
) -> Iterator[memoryview]:
    """The values of length-delimited field ``number``, one at a time.

    The whole message is checked first, and every run of other fields is
    handed to ``rest`` (e.g. a message's MergeFromString) on the way, so
    nothing is kept per field. Raises WireError.
    """
    view = memoryview(data)
    run_start = None  # start of the current run of other fields
    for field_number, start, _, _ in _fields(view):
        if field_number == number:
            if run_start is not None:
                rest(view[run_start:start])
                run_start = None
        elif run_start is None:
            run_start = start
    if run_start is not None:
        rest(view[run_start:])
    return (
        view[body:end] for field_number, _, body, end in _fields(view) if field_number == number
    )


def _fields(view: memoryview) -> Iterator[tuple[int, int, int, int]]:
    """(number, start, value start, end) of each field; number -1 unless length-delimited."""
    position, size = 0, len(view)
    while position < size:
        start = position
        key, position = _varint(view, position)
        wire_type = key & 7
        body = position
        if wire_type == _VARINT:
            _, position = _varint(view, position)
        elif wire_type == _FIXED64:
            position += 8
        elif wire_type == _FIXED32:
            position += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, body = _varint(view, position)
            position = body + length
        else:
            raise WireError(f"wire type {wire_type} at byte {start}")
        if position > size:
            raise WireError(f"a field at byte {start} runs past the end")
        yield (key >> 3 if wire_type == _LENGTH_DELIMITED else -1), start, body, position


def _varint(view: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while position < len(view):
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
        if shift >= 70:
            break
    raise WireError(f"a malformed or truncated varint before byte {position}")
