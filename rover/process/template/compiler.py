"""Compiling a parsed template against the type of its data, and rendering it.

Every member and function is looked up and its arguments checked here, once; what is left
for rendering is a tree of closures over the data (see the package docstring).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from rover.process.template import syntax
from rover.process.template.functions import FUNCTIONS, UNSUPPORTED_FUNCTIONS
from rover.process.template.syntax import TemplateError
from rover.process.template.types import (
    Evaluator,
    Kind,
    ObjectType,
    RenderError,
    TypedExpr,
    a_kind,
    constant,
)
from rover.process.template.values import as_text, kind_of, parse_go_bool, truth


class Template:
    """A compiled naming template."""

    def __init__(self, source: str, where: str, parts: Sequence[Evaluator]) -> None:
        self.source = source
        self.where = where
        self._parts = tuple(parts)

    def render(self, data: object) -> str:
        try:
            return "".join(str(part(data)) for part in self._parts)
        except RenderError as exc:
            raise _in_context(exc, self.where, self.source) from exc

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


class Filter:
    """A compiled filter expression."""

    def __init__(self, expression: str, where: str, value: TypedExpr) -> None:
        self.expression = expression
        self.where = where
        self._value = value

    def matches(self, data: object) -> bool:
        try:
            value = self._value.evaluate(data)
            if isinstance(value, bool):
                return value
            return parse_go_bool(as_text(value))
        except RenderError as exc:
            raise _in_context(exc, self.where, self.expression) from exc

    def __repr__(self) -> str:
        return f"Filter({self.expression!r})"


def compile_template(source: str, data_type: ObjectType, where: str = "") -> Template:
    """Compile ``source`` for data of ``data_type``; raises :class:`TemplateError`."""
    try:
        nodes = syntax.parse(source)
        compiler = _Compiler(data_type)
        return Template(source, where, compiler.nodes(nodes))
    except TemplateError as exc:
        raise TemplateError(source, exc.reason, where) from None


def compile_filter(expression: str, data_type: ObjectType, where: str = "") -> Filter:
    """Compile one filter expression (written without braces, e.g. ``.Pod.HasServiceName``)."""
    if not expression.strip():
        raise TemplateError(expression, "a filter must not be empty", where)
    try:
        nodes = syntax.parse("{{" + expression + "}}")
        if len(nodes) != 1 or not isinstance(nodes[0], syntax.Action):
            raise TemplateError(expression, "a filter is a single expression")
        value = _Compiler(data_type).pipeline(nodes[0].pipeline)
        if isinstance(value.type, ObjectType):
            raise TemplateError(
                expression, f"{value.text} is a {value.type.name} object, not true or false"
            )
        return Filter(expression, where, value)
    except TemplateError as exc:
        raise TemplateError(expression, exc.reason, where) from None


def _in_context(exc: RenderError, where: str, source: str) -> RenderError:
    prefix = f"{where}: " if where else ""
    return RenderError(f"{prefix}rendering {source!r}: {exc}")


# --- compiling -----------------------------------------------------------------------------


class _Compiler:
    def __init__(self, data_type: ObjectType) -> None:
        self.data_type = data_type

    def fail(self, reason: str) -> TemplateError:
        return TemplateError("", reason)

    def nodes(self, nodes: Sequence[syntax.Node]) -> list[Evaluator]:
        return [self.node(node) for node in nodes]

    def node(self, node: syntax.Node) -> Evaluator:
        if isinstance(node, syntax.Text):
            text = node.text
            return lambda _data: text
        if isinstance(node, syntax.Action):
            value = self.pipeline(node.pipeline)
            if isinstance(value.type, ObjectType):
                raise self.fail(
                    f"{{{{{node.pipeline.text}}}}} prints a {value.type.name} object; "
                    f"use one of its fields: {', '.join(sorted(value.type.members))}"
                )
            evaluate = value.evaluate
            return lambda data: as_text(evaluate(data))
        return self.conditional(node)

    def conditional(self, node: syntax.If) -> Evaluator:
        branches = [
            (self.pipeline(cond).evaluate, self.nodes(body)) for cond, body in node.branches
        ]
        otherwise = self.nodes(node.otherwise)

        def evaluate(data: object) -> str:
            for condition, body in branches:
                if truth(condition(data)):
                    return "".join(str(part(data)) for part in body)
            return "".join(str(part(data)) for part in otherwise)

        return evaluate

    def pipeline(self, pipeline: syntax.Pipeline) -> TypedExpr:
        value: TypedExpr | None = None
        for command in pipeline.commands:
            value = self.command(command, value)
        assert value is not None
        return value

    def command(self, command: syntax.Command, piped: TypedExpr | None) -> TypedExpr:
        first, rest = command.operands[0], command.operands[1:]
        args = [self.operand(op) for op in rest] + ([piped] if piped is not None else [])
        if isinstance(first, syntax.FunctionName):
            return self.function(first.name, args)
        if isinstance(first, syntax.Fields):
            return self.fields(first, args)
        if args:
            operand = self.operand(first)
            raise self.fail(f"{operand.text} is not a function or method; it takes no arguments")
        return self.operand(first)

    def operand(self, operand: syntax.Operand) -> TypedExpr:
        if isinstance(operand, syntax.StringLit):
            return constant(operand.value, Kind.STRING, json.dumps(operand.value))
        if isinstance(operand, syntax.IntLit):
            return constant(operand.value, Kind.INT, str(operand.value))
        if isinstance(operand, syntax.BoolLit):
            return constant(operand.value, Kind.BOOL, str(operand.value).lower())
        if isinstance(operand, syntax.Dot):
            return TypedExpr(lambda data: data, self.data_type, ".")
        if isinstance(operand, syntax.FunctionName):
            return self.function(operand.name, [])
        if isinstance(operand, syntax.Fields):
            return self.fields(operand, [])
        inner = self.pipeline(operand.pipeline)
        return TypedExpr(inner.evaluate, inner.type, f"({inner.text})")

    def fields(self, chain: syntax.Fields, args: list[TypedExpr]) -> TypedExpr:
        """``.A.B.C args``: every member but the last is called without arguments."""
        if chain.receiver is None:
            value = TypedExpr(lambda data: data, self.data_type, "")
        else:
            value = self.operand(chain.receiver)
        for index, name in enumerate(chain.names):
            last = index == len(chain.names) - 1
            value = self.member(value, name, args if last else [])
        return value

    def member(self, receiver: TypedExpr, name: str, args: list[TypedExpr]) -> TypedExpr:
        text = f"{receiver.text}.{name}"
        if not isinstance(receiver.type, ObjectType):
            raise self.fail(f"can't evaluate field {name} of {receiver.text or '.'}: not an object")
        member = receiver.type.members.get(name)
        if member is None:
            known = ", ".join(sorted(receiver.type.members))
            raise self.fail(f"{text}: {receiver.type.name} has no field {name} (it has: {known})")
        self.check_arguments(text, member.params, member.optional, args)
        if member.check_literals is not None and all(a.is_literal for a in args):
            try:
                member.check_literals(*(a.literal for a in args))
            except ValueError as exc:
                raise self.fail(f"{text}: {exc}") from None
        get_receiver = receiver.evaluate
        arg_evaluators = [a.evaluate for a in args]
        checks = [_runtime_check(text, i, kind) for i, kind in enumerate(member.params)]
        call = member.call

        def evaluate(data: object) -> object:
            target = get_receiver(data)
            values = [check(arg(data)) for check, arg in zip(checks, arg_evaluators, strict=False)]
            try:
                return call(target, *values)
            except RenderError:
                raise
            except Exception as exc:  # a failing context method must not end the scan
                raise RenderError(f"{text}: {exc}") from exc

        shown = text if not args else f"{text} {' '.join(a.text for a in args)}"
        return TypedExpr(evaluate, member.returns, shown)

    def check_arguments(
        self, text: str, params: tuple[Kind, ...], optional: int, args: list[TypedExpr]
    ) -> None:
        least, most = len(params) - optional, len(params)
        if not least <= len(args) <= most:
            wanted = str(most) if least == most else f"{least} to {most}"
            raise self.fail(f"{text} takes {wanted} argument(s), got {len(args)}")
        for position, (kind, arg) in enumerate(zip(params, args, strict=False), start=1):
            if isinstance(arg.type, ObjectType):
                raise self.fail(f"argument {position} of {text} is a {arg.type.name} object")
            if kind is not Kind.ANY and arg.type not in (kind, Kind.ANY):
                raise self.fail(
                    f"argument {position} of {text} must be {a_kind(kind)}, "
                    f"got {arg.text} ({arg.type.value})"
                )

    def function(self, name: str, args: list[TypedExpr]) -> TypedExpr:
        builder = FUNCTIONS.get(name)
        if builder is None:
            if name in UNSUPPORTED_FUNCTIONS:
                raise self.fail(f"function {name!r} is not supported")
            known = ", ".join(sorted(FUNCTIONS))
            raise self.fail(f"function {name!r} not defined (known: {known})")
        for arg in args:
            if isinstance(arg.type, ObjectType) and name not in ("and", "or", "not"):
                raise self.fail(f"{name}: {arg.text} is a {arg.type.name} object")
        return builder(name, args)


def _runtime_check(text: str, index: int, kind: Kind) -> Callable[[object], object]:
    def check(value: object) -> object:
        if kind is not Kind.ANY and kind_of(value) is not kind:
            raise RenderError(f"argument {index + 1} of {text} must be {a_kind(kind)}")
        return value

    return check
