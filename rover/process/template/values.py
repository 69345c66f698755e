"""Values with Go's semantics: truth, printing, comparison, ParseBool and a small Sprintf."""

from __future__ import annotations

import re

from rover.process.template.types import Kind, RenderError


def kind_of(value: object) -> Kind | None:
    if isinstance(value, bool):
        return Kind.BOOL
    if isinstance(value, int):
        return Kind.INT
    if isinstance(value, str):
        return Kind.STRING
    return None


def truth(value: object) -> bool:
    """Go's truth: false, 0 and "" are false; any object is true."""
    if value is None:
        return False
    if isinstance(value, bool | int | str):
        return bool(value)
    return True


def as_text(value: object) -> str:
    """What Go prints for a value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    if value is None:
        return "<no value>"
    raise RenderError("cannot print an object; use one of its fields")


_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_go_bool(text: str) -> bool:
    """Go's strconv.ParseBool, which Rover applies to a rendered filter."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise RenderError(f"filter result {text!r} is not a boolean")


def compare_kinds(a: object, b: object, ordered: bool) -> None:
    """Go's rule: only values of one basic kind compare; booleans do not order."""
    kind_a, kind_b = kind_of(a), kind_of(b)
    if kind_a is None or kind_b is None or (ordered and kind_a is Kind.BOOL):
        raise RenderError("invalid type for comparison")
    if kind_a is not kind_b:
        raise RenderError(f"incompatible types for comparison ({kind_a.value}, {kind_b.value})")


_QUOTE_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_quote(text: str) -> str:
    """Go's strconv.Quote (``%q``): printable characters as they are, the rest escaped."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


_VERB = re.compile(r"%([-+# 0]*)([0-9]*)(?:\.([0-9]+))?(.)", re.DOTALL)
VERBS = set("svdqt%")


def go_sprintf(fmt: str, values: list[object], dry_run: bool = False) -> str:
    """The part of Go's fmt verbs a name needs: %s %v %d %q %t %% with flags, width and
    precision."""
    out: list[str] = []
    remaining = list(values)
    pos = 0
    for match in _VERB.finditer(fmt):
        out.append(fmt[pos : match.start()])
        pos = match.end()
        flags, width, precision, verb = match.groups()
        if verb not in VERBS:
            raise RenderError(f"verb %{verb} is not supported (use %s %v %d %q %t)")
        if verb == "%":
            out.append("%")
            continue
        if not remaining:
            raise RenderError("more verbs than arguments")
        value = remaining.pop(0)
        if dry_run:
            continue
        out.append(_format_one(value, verb, flags, width, precision))
    if remaining:
        raise RenderError("more arguments than verbs")
    out.append(fmt[pos:])
    return "".join(out)


def _format_one(value: object, verb: str, flags: str, width: str, precision: str | None) -> str:
    if verb == "d" and kind_of(value) is not Kind.INT:
        raise RenderError(f"%d needs an integer, got {as_text(value)!r}")
    if verb == "t" and kind_of(value) is not Kind.BOOL:
        raise RenderError(f"%t needs a boolean, got {as_text(value)!r}")
    shown = as_text(value)
    if precision is not None and verb in "sqv":
        shown = shown[: int(precision)]
    if verb == "q":
        shown = go_quote(shown)
    if width and len(shown) < int(width):
        if "-" in flags:
            shown = shown.ljust(int(width))
        elif "0" in flags and verb == "d":
            sign = "-" if shown.startswith("-") else ""
            shown = sign + shown.lstrip("-").rjust(int(width) - len(sign), "0")
        else:
            shown = shown.rjust(int(width))
    return shown
