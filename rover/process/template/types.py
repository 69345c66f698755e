"""The types a template is checked against, and the compiled expression they produce.

A context object (``.Pod``, ``.Process``...) is described by an :class:`ObjectType` listing its
members; only those can be reached from a template.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Union


class RenderError(Exception):
    """A template could not be rendered for one process (a method failed, e.g. no such
    interface for ``.Rover.HostIPV4``); the caller skips that process and logs why."""


class Kind(enum.Enum):
    STRING = "string"
    INT = "int"
    BOOL = "bool"
    ANY = "any"  # known only at render time (the result of and/or over mixed types)


@dataclass(frozen=True)
class Member:
    """A field or method of a context object: ``call(receiver, *args)``."""

    returns: ValueType
    call: Callable[..., object]
    params: tuple[Kind, ...] = ()
    optional: int = 0  # how many trailing params may be left out
    check_literals: Callable[..., object] | None = None  # raises ValueError on bad literals, early


@dataclass(frozen=True, eq=False)
class ObjectType:
    name: str
    members: Mapping[str, Member]


ValueType = Union[Kind, ObjectType]  # noqa: UP007
Evaluator = Callable[[object], object]  # data -> value


@dataclass(frozen=True)
class TypedExpr:
    """A compiled expression: how to evaluate it, its static type and its source form."""

    evaluate: Evaluator
    type: ValueType
    text: str  # how the expression is written, for messages
    literal: object = None  # the constant, for literals
    is_literal: bool = False


def constant(value: object, kind: Kind, text: str) -> TypedExpr:
    return TypedExpr(lambda _data: value, kind, text, literal=value, is_literal=True)


def a_kind(kind: Kind) -> str:
    """The kind with its article, for messages: "a string", "an int"."""
    return f"an {kind.value}" if kind is Kind.INT else f"a {kind.value}"
