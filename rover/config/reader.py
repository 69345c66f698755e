"""Reading one section of the tree: placeholders resolved, values typed, leftovers reported.

A :class:`Section` hands out values key by key; whatever nobody asked for is an
unknown key, reported by :meth:`Section.finish` so a typo cannot go unnoticed.
Keys match case-insensitively, as in Rover (its config library lower-cases
them), so ``enable_tls`` and ``enable_TLS`` name the same setting; errors use the
canonical spelling.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rover.config.errors import ConfigError
from rover.config.placeholders import PlaceholderError, resolve
from rover.units import parse_byte_size, parse_duration

T = TypeVar("T")

# Go's strconv.ParseBool spellings: Rover accepts them, so a Rover user's value keeps working.
_TRUE = {"true", "t", "1"}
_FALSE = {"false", "f", "0"}


@dataclass(frozen=True, slots=True)
class Setting:
    """One value after placeholder resolution, with where it came from for error messages."""

    key: str
    text: str
    env_names: tuple[str, ...] = ()

    def error(self, problem: str) -> ConfigError:
        origin = f" (from {', '.join(self.env_names)})" if self.env_names else ""
        return ConfigError(f"{self.key}: {problem}{origin}", key=self.key)

    def as_bool(self) -> bool:
        word = self.text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise self.error(f"expected true or false, got {self.text!r}")

    def as_int(self, minimum: int | None = None) -> int:
        try:
            number = int(self.text.strip())
        except ValueError:
            raise self.error(f"expected a whole number, got {self.text!r}") from None
        if minimum is not None and number < minimum:
            raise self.error(f"must be at least {minimum}, got {self.text!r}")
        return number

    def as_duration(self, allow_zero: bool = False) -> float:
        """Seconds; ``500ms``, ``5s``, ``20m``, ``1h`` or a bare number of seconds."""
        try:
            seconds = parse_duration(self.text.strip())
        except ValueError:
            raise self.error(
                f"invalid duration {self.text!r}: use a number with a unit, e.g. 500ms, 5s, 20m, 1h"
            ) from None
        if seconds == 0 and not allow_zero:
            raise self.error(f"must be greater than zero, got {self.text!r}")
        # Whole nanoseconds, like Go's durations; also drops float noise (9ms -> 0.009).
        return round(seconds, 9)

    def as_byte_size(self, minimum: int = 0) -> int:
        """Bytes; ``400KB``, ``4MiB`` (binary units) or a bare number of bytes."""
        try:
            size = parse_byte_size(self.text.strip())
        except ValueError:
            raise self.error(
                f"invalid size {self.text!r}: use a number with a unit, e.g. 400KB, 4MiB"
            ) from None
        if size < minimum:
            raise self.error(f"must be at least {minimum} bytes, got {self.text!r}")
        return size

    def as_words(self) -> tuple[str, ...]:
        """A comma-separated list; blanks around items and empty items are dropped."""
        return tuple(word.strip() for word in self.text.split(",") if word.strip())

    def as_choice(self, choices: Mapping[str, T]) -> T:
        """The value for ``text`` among ``choices``, whose keys match case-insensitively."""
        word = self.text.strip().lower()
        for name, value in choices.items():
            if name.lower() == word:
                return value
        raise self.error(f"expected one of {', '.join(choices)}, got {self.text!r}")


@dataclass
class _Context:
    env: Mapping[str, str]
    warnings: list[str] = field(default_factory=list)


class Section:
    """A mapping of the YAML tree at ``path``."""

    def __init__(self, data: Any, path: str, context: _Context) -> None:
        self.path = path
        self._context = context
        self._entries: dict[str, tuple[str, Any]] = {}
        self._asked: list[str] = []
        if data in (None, ""):  # "section:" with nothing under it
            data = {}
        if not isinstance(data, dict):
            where = path or "top level"
            raise ConfigError(f"{where}: expected a section of keys, got {_kind(data)}", key=path)
        for key, value in data.items():
            folded = key.lower()
            if folded in self._entries:
                other = self._entries[folded][0]
                raise ConfigError(
                    f"{self._key(key)}: given twice (as {other!r} and {key!r})", key=self._key(key)
                )
            self._entries[folded] = (key, value)

    @classmethod
    def root(cls, data: Any, env: Mapping[str, str]) -> Section:
        return cls(data, "", _Context(env))

    @property
    def warnings(self) -> list[str]:
        return self._context.warnings

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self._key(key)}: {problem}", key=self._key(key))

    def setting(self, key: str) -> Setting | None:
        """The resolved scalar at ``key``, or None when the key is absent."""
        raw = self._take(key)
        if raw is None:
            return None
        if not isinstance(raw, str):
            raise self.fail(key, f"expected a single value, got {_kind(raw)}")
        return self._resolve(self._key(key), raw)

    def text(self, key: str, default: str) -> str:
        found = self.setting(key)
        return default if found is None else found.text

    def required_text(self, key: str, default: str, why: str) -> str:
        """Text that must not be blank; ``why`` tells the reader what to put there."""
        found = self.setting(key)
        if found is None:
            return default
        if not found.text.strip():
            raise found.error(f"must not be empty: {why}")
        return found.text.strip()

    def boolean(self, key: str, default: bool) -> bool:
        found = self.setting(key)
        return default if found is None else found.as_bool()

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        found = self.setting(key)
        return default if found is None else found.as_int(minimum)

    def byte_size(self, key: str, default: int, minimum: int = 0) -> int:
        found = self.setting(key)
        return default if found is None else found.as_byte_size(minimum)

    def duration(self, key: str, default: float, allow_zero: bool = False) -> float:
        found = self.setting(key)
        return default if found is None else found.as_duration(allow_zero)

    def choice(self, key: str, default: T, choices: Mapping[str, T]) -> T:
        found = self.setting(key)
        return default if found is None else found.as_choice(choices)

    def words(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated value, or a YAML list of values."""
        if isinstance(self._peek(key), list):
            items = self.strings(key, ())
            return tuple(word.strip() for item in items for word in item.split(",") if word.strip())
        found = self.setting(key)
        return default if found is None else found.as_words()

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A YAML list of values (a single value counts as a list of one), each resolved."""
        raw = self._take(key)
        if raw is None:
            return default
        if raw == "":
            return ()
        items = raw if isinstance(raw, list) else [raw]
        out: list[str] = []
        for index, item in enumerate(items):
            item_key = f"{self._key(key)}[{index}]"
            if not isinstance(item, str):
                raise ConfigError(f"{item_key}: expected a single value, got {_kind(item)}")
            out.append(self._resolve(item_key, item).text.strip())
        return tuple(out)

    def section(self, key: str) -> Section:
        """The sub-section at ``key`` (empty when absent)."""
        return Section(self._take(key), self._key(key), self._context)

    def sections(self, key: str) -> list[Section] | None:
        """A YAML list of sub-sections, or None when the key is absent."""
        raw = self._take(key)
        if raw is None:
            return None
        if raw == "":
            return []
        if not isinstance(raw, list):
            raise self.fail(key, f"expected a list of entries, got {_kind(raw)}")
        return [
            Section(item, f"{self._key(key)}[{index}]", self._context)
            for index, item in enumerate(raw)
        ]

    def finish(self, rover_only: Mapping[str, str] | None = None) -> None:
        """Report keys nobody asked for.

        ``rover_only`` maps keys that Rover knows but this agent does not
        implement to a reason: those are recorded as warnings, not errors, so a
        Rover configuration file still loads.
        """
        not_ours = {k.lower(): (k, why) for k, why in (rover_only or {}).items()}
        asked = {key.lower() for key in self._asked}
        for folded, (key, _) in self._entries.items():
            if folded in asked:
                continue
            if folded in not_ours:
                name, why = not_ours[folded]
                self.warnings.append(f"{self._key(name)}: ignored, {why}")
                continue
            hint = difflib.get_close_matches(key, self._asked, n=1)
            known = ", ".join(dict.fromkeys(self._asked))
            known = f"did you mean {hint[0]!r}?" if hint else f"known keys: {known}"
            raise self.fail(key, f"unknown key ({known})")

    def _peek(self, key: str) -> Any:
        entry = self._entries.get(key.lower())
        return None if entry is None else entry[1]

    def _take(self, key: str) -> Any:
        self._asked.append(key)
        return self._peek(key)

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _resolve(self, key: str, raw: str) -> Setting:
        try:
            resolved = resolve(raw, self._context.env)
        except PlaceholderError as exc:
            raise ConfigError(f"{key}: {exc}", key=key) from None
        return Setting(key, resolved.text, resolved.env_names)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a section of keys"
    if isinstance(value, list):
        return "a list"
    return repr(value)
