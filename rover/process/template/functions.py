"""The functions templates may call: Go's built-ins that make sense for names and filters,
plus Rover's ``equalsOrDefault``. Each builder checks its arguments at compile time and returns
the compiled call."""

from __future__ import annotations

from collections.abc import Callable

from rover.process.template.syntax import TemplateError
from rover.process.template.types import Kind, RenderError, TypedExpr
from rover.process.template.values import as_text, compare_kinds, go_sprintf, truth


def _fail(reason: str) -> TemplateError:
    return TemplateError("", reason)


Builder = Callable[[str, list[TypedExpr]], TypedExpr]
UNSUPPORTED_FUNCTIONS = {"index", "slice", "html", "js", "urlquery", "call"}


def _call_source(name: str, args: list[TypedExpr]) -> str:
    return " ".join([name, *(a.text for a in args)])


def _need_count(name: str, args: list[TypedExpr], least: int, most: int) -> None:
    if not least <= len(args) <= most:
        wanted = str(least) if least == most else f"at least {least}"
        raise _fail(f"{name} takes {wanted} argument(s), got {len(args)}")


def _check_comparable(name: str, args: list[TypedExpr], ordered: bool) -> None:
    kinds = {a.type for a in args} - {Kind.ANY}
    if ordered and Kind.BOOL in kinds:
        raise _fail(f"{name}: booleans cannot be ordered")
    if len(kinds) > 1:
        shown = " and ".join(sorted(k.value for k in kinds if isinstance(k, Kind)))
        raise _fail(f"{_call_source(name, args)}: incompatible types ({shown})")


def _build_eq(name: str, args: list[TypedExpr]) -> TypedExpr:
    _need_count(name, args, 2, 2 if name == "ne" else 1 << 16)
    _check_comparable(name, args, ordered=False)
    first, others = args[0].evaluate, [a.evaluate for a in args[1:]]

    def equal(data: object) -> bool:
        value = first(data)
        for other in others:  # Go: arg1 == arg2 || arg1 == arg3 ...
            candidate = other(data)
            compare_kinds(value, candidate, ordered=False)
            if value == candidate:
                return True
        return False

    if name == "ne":
        return TypedExpr(lambda data: not equal(data), Kind.BOOL, _call_source(name, args))
    return TypedExpr(equal, Kind.BOOL, _call_source(name, args))


_ORDER: dict[str, Callable[[object, object], bool]] = {
    "lt": lambda a, b: a < b,  # type: ignore[operator]
    "le": lambda a, b: a <= b,  # type: ignore[operator]
    "gt": lambda a, b: a > b,  # type: ignore[operator]
    "ge": lambda a, b: a >= b,  # type: ignore[operator]
}


def _build_order(name: str, args: list[TypedExpr]) -> TypedExpr:
    _need_count(name, args, 2, 2)
    _check_comparable(name, args, ordered=True)
    left, right, compare = args[0].evaluate, args[1].evaluate, _ORDER[name]

    def evaluate(data: object) -> bool:
        a, b = left(data), right(data)
        compare_kinds(a, b, ordered=True)
        return compare(a, b)

    return TypedExpr(evaluate, Kind.BOOL, _call_source(name, args))


def _build_and_or(name: str, args: list[TypedExpr]) -> TypedExpr:
    """Go's and/or: the first empty (and) / non-empty (or) argument, else the last one;
    arguments after the deciding one are not evaluated."""
    _need_count(name, args, 1, 1 << 16)
    evaluators = [a.evaluate for a in args]
    stop_when = name == "or"

    def evaluate(data: object) -> object:
        value: object = None
        for evaluator in evaluators:
            value = evaluator(data)
            if truth(value) == stop_when:
                return value
        return value

    types = {a.type for a in args}
    result_type = types.pop() if len(types) == 1 else Kind.ANY
    return TypedExpr(evaluate, result_type, _call_source(name, args))


def _build_not(name: str, args: list[TypedExpr]) -> TypedExpr:
    _need_count(name, args, 1, 1)
    evaluate = args[0].evaluate
    return TypedExpr(lambda data: not truth(evaluate(data)), Kind.BOOL, _call_source(name, args))


def _build_len(name: str, args: list[TypedExpr]) -> TypedExpr:
    _need_count(name, args, 1, 1)
    if args[0].type not in (Kind.STRING, Kind.ANY):
        raise _fail(f"len of {args[0].text}: only strings have a length here")
    evaluate = args[0].evaluate

    def length(data: object) -> int:
        value = evaluate(data)
        if not isinstance(value, str):
            raise RenderError(f"len of {args[0].text}: not a string")
        return len(value.encode())  # Go counts bytes

    return TypedExpr(length, Kind.INT, _call_source(name, args))


def _build_print(name: str, args: list[TypedExpr]) -> TypedExpr:
    evaluators = [a.evaluate for a in args]

    def sprint(data: object) -> str:
        values = [evaluator(data) for evaluator in evaluators]
        if name == "println":  # Go: always spaces, then a newline
            return " ".join(as_text(v) for v in values) + "\n"
        out = ""
        for i, value in enumerate(values):  # Go: a space only between two non-strings
            if i and not isinstance(value, str) and not isinstance(values[i - 1], str):
                out += " "
            out += as_text(value)
        return out

    return TypedExpr(sprint, Kind.STRING, _call_source(name, args))


def _build_printf(name: str, args: list[TypedExpr]) -> TypedExpr:
    _need_count(name, args, 1, 1 << 16)
    if args[0].type not in (Kind.STRING, Kind.ANY):
        raise _fail("printf: the format must be a string")
    if args[0].is_literal:
        try:
            go_sprintf(str(args[0].literal), [None] * (len(args) - 1), dry_run=True)
        except RenderError as exc:
            raise _fail(f"printf {args[0].text}: {exc}") from None
    evaluators = [a.evaluate for a in args]

    def sprintf(data: object) -> str:
        values = [evaluator(data) for evaluator in evaluators]
        return go_sprintf(str(values[0]), values[1:])

    return TypedExpr(sprintf, Kind.STRING, _call_source(name, args))


def _build_equals_or_default(name: str, args: list[TypedExpr]) -> TypedExpr:
    """Rover's ``equalsOrDefault eq ifSame needs``: ifSame when needs == eq, else needs."""
    _need_count(name, args, 3, 3)
    for position, arg in enumerate(args, start=1):
        if arg.type not in (Kind.STRING, Kind.ANY):
            raise _fail(f"argument {position} of {name} must be a string, got {arg.text}")
    equal, if_same, needs = (a.evaluate for a in args)

    def evaluate(data: object) -> str:
        value = needs(data)
        return if_same(data) if value == equal(data) else value  # type: ignore[return-value]

    return TypedExpr(evaluate, Kind.STRING, _call_source(name, args))


FUNCTIONS: dict[str, Builder] = {
    "eq": _build_eq,
    "ne": _build_eq,
    "lt": _build_order,
    "le": _build_order,
    "gt": _build_order,
    "ge": _build_order,
    "and": _build_and_or,
    "or": _build_and_or,
    "not": _build_not,
    "len": _build_len,
    "print": _build_print,
    "println": _build_print,
    "printf": _build_printf,
    "equalsOrDefault": _build_equals_or_default,
}
