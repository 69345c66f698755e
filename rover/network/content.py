"""Readable text of a sampled HTTP message and sizes for span events (spec 8.10)."""

from __future__ import annotations

import zlib

from rover.network.model import HttpMessage

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
# Without a cap, gunzipped text is still bounded: a small body may inflate enormously.
MAX_GUNZIPPED = 4 * 1024 * 1024


def bytes_size(n: int | float) -> str:
    """``n`` bytes as docker/go-units ``BytesSize``: ``%.4g`` and a binary unit."""
    size = float(n)
    unit = 0
    while size >= 1024.0 and unit < len(_BINARY_UNITS) - 1:
        size /= 1024.0
        unit += 1
    return "%.4g%s" % (size, _BINARY_UNITS[unit])  # noqa: UP031 - Go's %.4g, verbatim


def is_plain(content_type: str) -> bool:
    """Rover's test, kept as is: ``application/json; charset=utf-8`` is not plain."""
    return content_type.startswith("text/") or content_type == "application/json"


def data_content(message: HttpMessage, cap: int, default_encoding: str = "UTF-8") -> str | None:
    """The ``data_content`` tag: raw header, then the body or a note on its type.

    ``cap`` <= 0 means no cap. None when the body cannot be decoded (corrupt gzip):
    the caller then drops the event, as Rover does.
    """
    content_type = message.headers.get("content-type") or f"text/html; charset={default_encoding}"
    header = message.header_bytes
    if cap > 0 and len(header) >= cap:
        return header[:cap].decode("utf-8", "replace")
    text = header.decode("utf-8", "replace")
    if not is_plain(content_type):
        return f"{text}[not plain, current content type: {content_type}]"
    body = message.body
    if not body:
        return text
    room = cap - len(header) if cap > 0 else -1
    if message.headers.get("content-encoding") == "gzip":
        unzipped = _gunzip(body, room if room > 0 else MAX_GUNZIPPED)
        if unzipped is None:
            return None
        body = unzipped
    if room >= 0:
        body = body[:room]
    return text + body.decode("utf-8", "replace")


def _gunzip(body: bytes, limit: int) -> bytes | None:
    # zlib's gzip mode rather than gzip.decompress: a body cut by the capture cap still
    # yields what it holds (Rover accepts an unexpected EOF too), and output is bounded.
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, limit)
    except zlib.error:
        return None
