"""data_size and data_content of the HTTP sampling span events (spec 8.10)."""

from __future__ import annotations

import gzip

import pytest

from rover.network.content import bytes_size, data_content, is_plain
from rover.network.model import HttpMessage


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0B"),
        (1, "1B"),
        (512, "512B"),
        (1000, "1000B"),
        (1023, "1023B"),
        (1024, "1KiB"),
        (1536, "1.5KiB"),
        (100000, "97.66KiB"),
        (1048575, "1024KiB"),  # %.4g rounds up without changing the unit, as Go does
        (1048576, "1MiB"),
        (1234567, "1.177MiB"),
        (5 * 1024**3 + 512 * 1024**2, "5.5GiB"),
        (1024**4, "1TiB"),
        (1024**5, "1PiB"),
        (1024**6, "1EiB"),
        (1024**7, "1ZiB"),
        (1024**8, "1YiB"),
        (3 * 1024**9, "3072YiB"),  # no unit above YiB
        (20000 * 1024**9, "2.048e+07YiB"),
    ],
)
def test_bytes_size_like_go_units(n: int, text: str) -> None:
    assert bytes_size(n) == text


HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"


def message(
    headers: dict[str, str], body: bytes = b"hello world", head: bytes = HEAD
) -> HttpMessage:
    return HttpMessage(
        is_request=False, status=200, headers=headers, header_bytes=head, body=body,
        body_size=len(body),
    )  # fmt: skip


def test_plain_types() -> None:
    assert is_plain("text/plain") and is_plain("text/html; charset=utf-8")
    assert is_plain("application/json")
    assert not is_plain("application/json; charset=utf-8")  # Rover's quirk, kept
    assert not is_plain("Text/plain") and not is_plain("image/png")


def test_plain_body_follows_header() -> None:
    got = data_content(message({"content-type": "text/plain"}), 0)
    assert got == HEAD.decode() + "hello world"
    assert data_content(message({"content-type": "application/json"}), -1) == got


def test_missing_content_type_is_html_in_the_default_encoding() -> None:
    assert data_content(message({}), 0) == HEAD.decode() + "hello world"
    png = message({"content-type": ""}, b"\x89PNG")
    assert data_content(png, 0, "GBK") == HEAD.decode() + "\x89PNG".replace("\x89", "\ufffd")


def test_non_plain_gets_the_suffix_uncapped() -> None:
    msg = message({"content-type": "application/json; charset=utf-8"})
    suffix = "[not plain, current content type: application/json; charset=utf-8]"
    assert data_content(msg, 0) == HEAD.decode() + suffix
    assert data_content(msg, len(HEAD) + 1) == HEAD.decode() + suffix


def test_cap_on_header_alone() -> None:
    msg = message({"content-type": "image/png"})
    assert data_content(msg, 10) == "HTTP/1.1 2"
    assert data_content(msg, len(HEAD)) == HEAD.decode()  # header == cap: no suffix either


def test_cap_truncates_the_body() -> None:
    msg = message({"content-type": "text/plain"})
    assert data_content(msg, len(HEAD) + 5) == HEAD.decode() + "hello"
    assert data_content(msg, len(HEAD) + 100) == HEAD.decode() + "hello world"


def test_empty_body_is_header_only() -> None:
    assert data_content(message({"content-type": "text/plain"}, b""), 0) == HEAD.decode()


def test_gzip_body_is_gunzipped_then_capped() -> None:
    raw = b"compressible text " * 100
    headers = {"content-type": "text/plain", "content-encoding": "gzip"}
    msg = message(headers, gzip.compress(raw))
    assert data_content(msg, 0) == HEAD.decode() + raw.decode()
    assert data_content(msg, len(HEAD) + 12) == HEAD.decode() + "compressible"


def test_gzip_truncated_by_capture_yields_what_it_has() -> None:
    raw = bytes(range(32, 127)) * 200
    packed = gzip.compress(raw)
    msg = message({"content-type": "text/plain", "content-encoding": "gzip"}, packed[:200])
    got = data_content(msg, 0)
    assert got is not None and got.startswith(HEAD.decode() + raw[:40].decode())
    assert HEAD.decode() + raw.decode() != got


def test_corrupt_gzip_drops_the_event() -> None:
    headers = {"content-type": "text/plain", "content-encoding": "gzip"}
    assert data_content(message(headers, b"not gzip at all"), 0) is None
    assert data_content(message(headers, b"\x1f\x8b\x08\x00garbage-garbage"), 0) is None
    # Only "gzip" exactly is gunzipped (as Rover): other encodings pass through.
    assert data_content(message({"content-encoding": "br"}, b"abc"), 0) == HEAD.decode() + "abc"


def test_gzip_output_is_bounded_without_a_cap() -> None:
    bomb = gzip.compress(b"\0" * (16 * 1024 * 1024))
    got = data_content(message({"content-type": "text/plain", "content-encoding": "gzip"}, bomb), 0)
    assert got is not None and len(got) == len(HEAD) + 4 * 1024 * 1024


def test_invalid_utf8_is_replaced() -> None:
    got = data_content(message({"content-type": "text/plain"}, b"caf\xc3\xa9 \xff"), 0)
    assert got == HEAD.decode() + "caf\u00e9 \ufffd"
