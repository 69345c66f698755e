"""Kubernetes label selectors: the string form (``app=web,tier in (a,b),!canary``) and the
map form services use (``spec.selector``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_TOKEN = re.compile(r"\s*(?:(?P<op>==|!=|=|\(|\)|,|!)|(?P<word>[^\s=!(),]+))")


class SelectorError(ValueError):
    """A label selector string that does not parse."""


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "=":
            return present and value in self.values
        if self.operator == "in":
            return present and value in self.values
        if self.operator in ("!=", "notin"):
            return not present or value not in self.values
        if self.operator == "exists":
            return present
        return not present  # "!exists"


@dataclass(frozen=True)
class LabelSelector:
    """All requirements must hold; the empty selector matches everything."""

    requirements: tuple[Requirement, ...]

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        return cls(tuple(_Parser(text).requirements()))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A service's map selector: every pair present. An empty map selects nothing (as the
    endpoints controller treats it)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = self._tokenize(text)
        self.pos = 0

    def _tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None:
                raise SelectorError(f"invalid label selector {text!r} at offset {pos}")
            tokens.append(match.group("op") or match.group("word"))
            pos = match.end()
        return tokens

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self, what: str) -> str:
        token = self._peek()
        if token is None:
            raise SelectorError(f"invalid label selector {self.text!r}: expected {what}")
        self.pos += 1
        return token

    def _word(self, what: str) -> str:
        token = self._next(what)
        if token in ("==", "!=", "=", "(", ")", ",", "!"):
            raise SelectorError(f"invalid label selector {self.text!r}: expected {what}")
        return token

    def requirements(self) -> list[Requirement]:
        result: list[Requirement] = []
        while self._peek() is not None:
            result.append(self._requirement())
            separator = self._peek()
            if separator is None:
                break
            if separator != ",":
                raise SelectorError(f"invalid label selector {self.text!r}: expected ','")
            self.pos += 1
            if self._peek() is None:
                raise SelectorError(f"invalid label selector {self.text!r}: trailing ','")
        return result

    def _requirement(self) -> Requirement:
        if self._peek() == "!":
            self.pos += 1
            return Requirement(self._word("a label key"), "!exists")
        key = self._word("a label key")
        token = self._peek()
        if token in (None, ","):
            return Requirement(key, "exists")
        self.pos += 1
        if token in ("=", "=="):
            return Requirement(key, "=", frozenset({self._value()}))
        if token == "!=":
            return Requirement(key, "!=", frozenset({self._value()}))
        if token in ("in", "notin"):
            return Requirement(key, token, self._value_set())
        raise SelectorError(f"invalid label selector {self.text!r}: unexpected {token!r}")

    def _value(self) -> str:
        token = self._peek()
        if token in (None, ","):  # "key=" selects the empty value
            return ""
        return self._word("a label value")

    def _value_set(self) -> frozenset[str]:
        if self._next("'('") != "(":
            raise SelectorError(f"invalid label selector {self.text!r}: expected '('")
        values: set[str] = set()
        while True:
            token = self._next("a value or ')'")
            if token == ")":
                return frozenset(values)
            if token == ",":
                continue
            values.add(token)
