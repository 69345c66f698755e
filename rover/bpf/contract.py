"""What Python knows of the BPF programs' C types, read from the programs' own headers.

The counters' enum (``enum rover_stat``) and the structs user space writes into
maps (unwind rows, mapping tables) are defined once, in ``bpf/*.h``; this module
parses them, so a counter added or a field moved in C is seen by Python without
a second copy to keep in step. The syntax understood is the small subset those
headers use: ``#define NAME number``, ``enum name { A = 0, B, ... };`` with a
``/* name: meaning */`` (or ``/* name (info): meaning */`` for a counter of no
loss) comment after each counter, and ``struct name { type
field; type field[N]; ... };`` over fixed-size integer types and structs already
defined. Anything else in those blocks is an error here, not a silent mismatch.

The headers read are those shipped with this package (``rover._data``), not
``ROVER_BPF_DIR``'s: Python knows the layout of the programs it was shipped with.
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass
from typing import Any

from rover._data import data_dir

_INTEGERS: dict[str, type] = {
    "u8": ctypes.c_uint8,
    "s8": ctypes.c_int8,
    "u16": ctypes.c_uint16,
    "s16": ctypes.c_int16,
    "u32": ctypes.c_uint32,
    "s32": ctypes.c_int32,
    "u64": ctypes.c_uint64,
    "s64": ctypes.c_int64,
}
_DEFINE = re.compile(
    r"^#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)(?:U?LL|U)?\s*(?:/\*.*)?$", re.MULTILINE
)
_ENUM = re.compile(r"^enum\s+(\w+)\s*\{(.*?)^\};", re.MULTILINE | re.DOTALL)
_STRUCT = re.compile(r"^struct\s+(\w+)\s*\{(.*?)^\};", re.MULTILINE | re.DOTALL)
_MEMBER = re.compile(r"^(?:struct\s+)?(\w+)\s+(\w+)(?:\[(\w+(?:\s*[+*-]\s*\w+)*)\])?;$")
_ENUMERATOR = re.compile(r"^(\w+)(?:\s*=\s*(\w+))?,?\s*(?:/\*\s*(.*?)\s*\*/)?$")


class ContractError(Exception):
    """A header has something this parser does not understand (fix one or the other)."""


@dataclass(frozen=True)
class Counter:
    """One value of a counters' enum: its C name, its name in Python and /metrics, what it
    counts, and whether that is data lost (else information: events, frames by kind...)."""

    symbol: str
    name: str
    meaning: str
    loss: bool


@dataclass(frozen=True)
class Header:
    """The ``#define`` numbers, enums and structs of one BPF header."""

    defines: dict[str, int]
    enums: dict[str, list[tuple[str, int, str]]]  # name -> (symbol, value, comment)
    structs: dict[str, type[ctypes.Structure]]

    def counters(self, enum: str) -> tuple[Counter, ...]:
        """The values of ``enum`` in order, up to its final ``*_COUNT``; each comment is
        ``name: meaning``."""
        found = []
        for position, (symbol, value, comment) in enumerate(self.enums[enum]):
            if symbol.endswith("_COUNT"):
                break
            if value != position:
                raise ContractError(f"{enum}: {symbol} is {value}, not {position}")
            match = re.fullmatch(r"([a-z_]+)( \(info\))?: (.+)", comment)
            if match is None:
                raise ContractError(f"{enum}: {symbol} lacks its '/* name: meaning */' comment")
            name, info, meaning = match.groups()
            found.append(Counter(symbol, name, meaning, loss=info is None))
        return tuple(found)


@functools.cache
def header(name: str) -> Header:
    """``bpf/<name>`` parsed (with the headers it includes, for their defines and types)."""
    text = _strip_line_comments(_read_with_includes(name, set()))
    defines = {k: int(v, 0) for k, v in _DEFINE.findall(text)}
    enums = {
        m.group(1): _enumerators(m.group(1), m.group(2), defines) for m in _ENUM.finditer(text)
    }
    structs: dict[str, type[ctypes.Structure]] = {}
    for match in _STRUCT.finditer(text):
        structs[match.group(1)] = _structure(match.group(1), match.group(2), defines, structs)
    return Header(defines, enums, structs)


def _read_with_includes(name: str, seen: set[str]) -> str:
    if name in seen:
        return ""
    seen.add(name)
    text = (data_dir("bpf") / name).read_text()
    included = re.findall(r'^#include\s+"([^"]+)"', text, re.MULTILINE)
    return "".join(_read_with_includes(inc, seen) for inc in included) + text


def _strip_line_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", text)


def _enumerators(enum: str, body: str, defines: dict[str, int]) -> list[tuple[str, int, str]]:
    values: list[tuple[str, int, str]] = []
    next_value = 0
    for line in _logical_lines(body):
        match = _ENUMERATOR.match(line)
        if match is None:
            raise ContractError(f"enum {enum}: cannot read {line!r}")
        symbol, given, comment = match.groups()
        value = _number(given, defines) if given else next_value
        values.append((symbol, value, comment or ""))
        next_value = value + 1
    return values


def _structure(
    name: str, body: str, defines: dict[str, int], known: dict[str, type[ctypes.Structure]]
) -> type[ctypes.Structure]:
    fields: list[tuple[str, type]] = []
    for line in _logical_lines(re.sub(r"/\*.*?\*/", "", body, flags=re.DOTALL)):
        match = _MEMBER.match(line)
        if match is None:
            raise ContractError(f"struct {name}: cannot read {line!r}")
        type_name, field, count = match.groups()
        field_type: Any = _INTEGERS.get(type_name) or known.get(type_name)
        if field_type is None:
            raise ContractError(f"struct {name}: unknown type {type_name!r}")
        if count is not None:
            field_type = field_type * _evaluate(count, defines)  # a ctypes array type
        fields.append((field, field_type))
    return type(name, (ctypes.Structure,), {"_fields_": fields})


def _logical_lines(body: str) -> list[str]:
    """Members or enumerators, one per line, comments kept on the line they end."""
    lines: list[str] = []
    for raw in body.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("/*") and lines:  # a comment continuing the previous line
            continue
        if line.startswith("*") or line.startswith("/*"):
            continue
        lines.append(line)
    return lines


def _number(token: str, defines: dict[str, int]) -> int:
    if token in defines:
        return defines[token]
    try:
        return int(token, 0)
    except ValueError:
        raise ContractError(f"unknown constant {token!r}") from None


def _evaluate(expression: str, defines: dict[str, int]) -> int:
    """``N``, ``NAME`` or ``NAME + 1``-style sums and products of known constants."""
    tokens = re.findall(r"\w+|[+*-]", expression)
    total, operator = 0, "+"
    for token in tokens:
        if token in "+*-":
            operator = token
            continue
        value = _number(token, defines)
        total = (
            total + value
            if operator == "+"
            else total - value
            if operator == "-"
            else total * value
        )
    return total
