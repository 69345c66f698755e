"""``${ENV_NAME:default}`` placeholders, resolved the way SkyWalking Rover resolves them.

Grammar (a superset of Rover's):

* ``${NAME:default}``: the value of the environment variable ``NAME`` when it is
  set and not empty, else ``default``. Like Rover (which tests ``os.Getenv(...)
  != ""``), a variable set to the empty string counts as unset.
* The default runs to the ``}`` matching the ``${``: colons are plain text
  (``localhost:11800``) and balanced braces are kept (``{{.Pod.Name}}``).
* One pair of surrounding quotes around the default is dropped, so Rover-era
  files that wrote ``${ROVER_BACKEND_AUTHENTICATION:""}`` mean "empty".
* ``${NAME}`` (no default) resolves to the empty string when ``NAME`` is unset.
* ``$${`` stands for a literal ``${``.
* Placeholders may sit inside a longer value (``oap-${ZONE:a}:11800``); Rover
  only honours a placeholder that is the whole value.

Environment values are used verbatim: they are not scanned for placeholders.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUOTES = ('"', "'")


class PlaceholderError(ValueError):
    """A ``${`` that does not start a well-formed placeholder."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """A value after substitution, and the environment variables that supplied parts of it."""

    text: str
    env_names: tuple[str, ...] = ()


def resolve(text: str, env: Mapping[str, str]) -> Resolved:
    """Substitute every placeholder in ``text`` from ``env``."""
    if "${" not in text:
        return Resolved(text)
    out: list[str] = []
    used: list[str] = []
    pos = 0
    while (start := text.find("${", pos)) != -1:
        if start > pos and text[start - 1] == "$":  # "$${" escapes a literal "${"
            out.append(text[pos : start - 1] + "${")
            pos = start + 2
            continue
        out.append(text[pos:start])
        name, default, pos = _parse_placeholder(text, start)
        value = env.get(name, "")
        if value != "":
            out.append(value)
            used.append(name)
        else:
            out.append(default)
    out.append(text[pos:])
    return Resolved("".join(out), tuple(used))


def placeholder_names(text: str) -> list[str]:
    """Environment variable names referenced by ``text`` (for documentation checks)."""
    names: list[str] = []
    pos = 0
    while (start := text.find("${", pos)) != -1:
        if start > pos and text[start - 1] == "$":
            pos = start + 2
            continue
        name, _, pos = _parse_placeholder(text, start)
        names.append(name)
    return names


def _parse_placeholder(text: str, start: int) -> tuple[str, str, int]:
    """(name, default, index after the closing brace) of the placeholder at ``start``."""
    match = _NAME.match(text, start + 2)
    if match is None:
        raise PlaceholderError(
            f"malformed placeholder at {text[start:]!r}: expected ${{NAME:default}}"
            " (write $${ for a literal ${)"
        )
    after = match.end()
    if after < len(text) and text[after] == "}":
        return match.group(), "", after + 1
    if after >= len(text) or text[after] != ":":
        raise PlaceholderError(
            f"malformed placeholder at {text[start:]!r}: expected ':' or '}}' after the name"
        )
    end = _closing_brace(text, after + 1)
    if end == -1:
        raise PlaceholderError(f"unterminated placeholder {text[start:]!r}: no closing '}}'")
    return match.group(), _unquote(text[after + 1 : end]), end + 1


def _closing_brace(text: str, pos: int) -> int:
    """Index of the ``}`` that closes a placeholder whose default starts at ``pos``."""
    depth = 0
    for i in range(pos, len(text)):
        char = text[i]
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return i
            depth -= 1
    return -1


def _unquote(default: str) -> str:
    if len(default) >= 2 and default[0] == default[-1] and default[0] in _QUOTES:
        return default[1:-1]
    return default
