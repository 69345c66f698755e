"""Readable text of an HTTP message for span attached events (spec 8.10).

A minimal version: :func:`bytes_size` (docker/go-units ``BytesSize``) and
:func:`data_content` (the ``data_content`` tag, rules 1-4 of spec 8.10).
"""

from __future__ import annotations

import gzip
import zlib

from rover.network.model import HttpMessage

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def bytes_size(n: float) -> str:
    """``n`` bytes as go-units ``BytesSize``: ``%.4g`` and a binary unit (``1.5KiB``)."""
    size = float(n)
    unit = 0
    while size >= 1024.0 and unit < len(_BINARY_UNITS) - 1:
        size /= 1024.0
        unit += 1
    return f"{size:.4g}{_BINARY_UNITS[unit]}"


def _is_plain(content_type: str) -> bool:
    # exactly application/json: with a charset parameter it is not plain (Rover's quirk)
    return content_type.startswith("text/") or content_type == "application/json"


def data_content(message: HttpMessage, cap: int, default_encoding: str) -> str | None:
    """Raw header then the body when it is plain text, within ``cap`` bytes (<= 0: no cap).

    None when the body cannot be decoded (a broken gzip body): the event is dropped.
    """
    content_type = message.headers.get("content-type") or f"text/html; charset={default_encoding}"
    header = message.header_bytes
    if cap > 0 and len(header) >= cap:
        return _text(header[:cap])
    if not _is_plain(content_type):
        return _text(header) + f"[not plain, current content type: {content_type}]"
    body = message.body
    if message.headers.get("content-encoding", "").strip().lower() == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            return None
    if cap > 0:
        body = body[: cap - len(header)]
    return _text(header + body)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
