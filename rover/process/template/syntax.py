"""Parsing the subset of Go text/template that Rover's naming templates and filters use.

Text with ``{{ actions }}`` (trim markers ``{{-``/``-}}`` and ``{{/* comments */}}`` included);
an action is a pipeline of commands (``cmd | cmd``); operands are string/raw-string/integer/
boolean literals, ``.``, field chains (``.Pod.Name``), function names and parenthesised
pipelines, which may be followed by fields (``(.Pod.FindContainer "x").Name``). Control flow:
``if`` / ``else if`` / ``else`` / ``end``. Everything else Go accepts (variables, range, with,
define, template, block, character and float constants) is rejected with a reason, so a
template either means exactly what Go would make of it or does not start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union


class TemplateError(ValueError):
    """A template or filter that is not valid (reported at start-up, naming the expression)."""

    def __init__(self, source: str, reason: str, where: str = "") -> None:
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}invalid template {source!r}: {reason}")
        self.source = source
        self.reason = reason
        self.where = where


# --- syntax tree -------------------------------------------------------------------------


@dataclass(frozen=True)
class StringLit:
    value: str


@dataclass(frozen=True)
class IntLit:
    value: int


@dataclass(frozen=True)
class BoolLit:
    value: bool


@dataclass(frozen=True)
class Dot:
    pass


@dataclass(frozen=True)
class FunctionName:
    name: str


@dataclass(frozen=True)
class Fields:
    """``.A.B`` on the data (receiver None) or on a parenthesised pipeline."""

    receiver: Paren | None
    names: tuple[str, ...]


@dataclass(frozen=True)
class Paren:
    pipeline: Pipeline


Operand = Union[StringLit, IntLit, BoolLit, Dot, FunctionName, Fields, Paren]  # noqa: UP007


@dataclass(frozen=True)
class Command:
    operands: tuple[Operand, ...]


@dataclass(frozen=True)
class Pipeline:
    commands: tuple[Command, ...]
    text: str  # the source of the action, for messages


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Action:
    pipeline: Pipeline


@dataclass(frozen=True)
class If:
    branches: tuple[tuple[Pipeline, tuple[Node, ...]], ...]
    otherwise: tuple[Node, ...]


Node = Union[Text, Action, If]  # noqa: UP007


# --- lexing ------------------------------------------------------------------------------

_SPACE = " \t\r\n"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[-+]?[0-9][0-9A-Za-z_.]*")
_UNSUPPORTED_KEYWORDS = {"range", "with", "define", "template", "block", "break", "continue"}
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
}


@dataclass(frozen=True)
class _Token:
    kind: str  # "string", "int", "ident", "field", "dot", "(", ")", "|"
    value: object
    start: int
    end: int


@dataclass(frozen=True)
class _RawAction:
    tokens: tuple[_Token, ...]
    text: str


class _Lexer:
    """Splits the source into text and actions (tokenised), applying trim markers."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[Text | _RawAction] = []

    def fail(self, reason: str) -> TemplateError:
        return TemplateError(self.source, reason)

    def run(self) -> list[Text | _RawAction]:
        pos = 0
        trim_next_text = False
        while True:
            start = self.source.find("{{", pos)
            text = self.source[pos:] if start < 0 else self.source[pos:start]
            if "}}" in text:
                raise self.fail("'}}' without a matching '{{'")
            if trim_next_text:
                text = text.lstrip(_SPACE)
            if start < 0:
                self._add_text(text)
                return self.items
            inner = start + 2
            if self.source.startswith("-", inner) and self.source[inner + 1 : inner + 2] in tuple(
                _SPACE
            ):
                text = text.rstrip(_SPACE)
                inner += 2
            self._add_text(text)
            pos, trim_next_text = self._action(inner)

    def _add_text(self, text: str) -> None:
        if text:
            self.items.append(Text(text))

    def _action(self, pos: int) -> tuple[int, bool]:
        """Lex one action starting after its ``{{``; return where the text resumes and
        whether that text is trimmed."""
        src = self.source
        stripped = pos
        while stripped < len(src) and src[stripped] in _SPACE:
            stripped += 1
        if src.startswith("/*", stripped):
            return self._comment(stripped)
        tokens: list[_Token] = []
        begin = pos
        while True:
            if pos >= len(src):
                raise self.fail("unclosed action: missing '}}'")
            ch = src[pos]
            if ch in _SPACE:
                if src.startswith("-}}", pos + 1):
                    self.items.append(_RawAction(tuple(tokens), src[begin:pos].strip()))
                    return pos + 4, True
                pos += 1
                continue
            if src.startswith("}}", pos):
                self.items.append(_RawAction(tuple(tokens), src[begin:pos].strip()))
                return pos + 2, False
            token = self._token(pos)
            tokens.append(token)
            pos = token.end

    def _comment(self, pos: int) -> tuple[int, bool]:
        end = self.source.find("*/", pos + 2)
        if end < 0:
            raise self.fail("unclosed comment")
        after = end + 2
        if self.source.startswith("}}", after):
            return after + 2, False
        if self.source.startswith(" -}}", after):
            return after + 4, True
        raise self.fail("comment ends before closing delimiter")

    def _token(self, pos: int) -> _Token:
        src = self.source
        ch = src[pos]
        if ch in "()|":
            return _Token(ch, ch, pos, pos + 1)
        if ch == '"':
            return self._quoted(pos)
        if ch == "`":
            end = src.find("`", pos + 1)
            if end < 0:
                raise self.fail("unterminated raw string")
            return _Token("string", src[pos + 1 : end], pos, end + 1)
        if ch == ".":
            match = _IDENT.match(src, pos + 1)
            if match:
                return _Token("field", match.group(), pos, match.end())
            if src[pos + 1 : pos + 2].isdigit():
                raise self.fail("floating-point numbers are not supported")
            return _Token("dot", ".", pos, pos + 1)
        if ch.isdigit() or (ch in "+-" and src[pos + 1 : pos + 2].isdigit()):
            match = _NUMBER.match(src, pos)
            assert match is not None
            text = match.group()
            if not re.fullmatch(r"[-+]?[0-9]+", text):
                raise self.fail(f"number {text!r} is not supported (only decimal integers)")
            return _Token("int", int(text), pos, match.end())
        match = _IDENT.match(src, pos)
        if match:
            word = match.group()
            if word in ("true", "false"):
                return _Token("bool", word == "true", pos, match.end())
            if word == "nil":
                raise self.fail("'nil' is not supported")
            return _Token("ident", word, pos, match.end())
        if ch == "$":
            raise self.fail("variables ($...) are not supported")
        if ch in ":=":
            raise self.fail("assignments are not supported")
        if ch in "{}":
            raise self.fail(f"unclosed action: expected '}}}}', found a single {ch!r}")
        if ch == "'":
            raise self.fail('character constants are not supported; use a "string"')
        raise self.fail(f"unexpected character {ch!r} in action")

    def _quoted(self, pos: int) -> _Token:
        src = self.source
        out: list[str] = []
        i = pos + 1
        while True:
            if i >= len(src) or src[i] == "\n":
                raise self.fail("unterminated quoted string")
            ch = src[i]
            if ch == '"':
                return _Token("string", "".join(out), pos, i + 1)
            if ch != "\\":
                out.append(ch)
                i += 1
                continue
            decoded, i = self._escape(i + 1)
            out.append(decoded)

    def _escape(self, i: int) -> tuple[str, int]:
        src = self.source
        code = src[i : i + 1]
        if code in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[code], i + 1
        widths = {"x": 2, "u": 4, "U": 8}
        if code in widths:
            digits = src[i + 1 : i + 1 + widths[code]]
            if len(digits) == widths[code] and re.fullmatch(r"[0-9A-Fa-f]+", digits):
                return chr(int(digits, 16)), i + 1 + widths[code]
        elif re.fullmatch(r"[0-7]{3}", src[i : i + 3]):
            return chr(int(src[i : i + 3], 8)), i + 3
        raise self.fail(f"invalid escape sequence \\{code} in string")


# --- parsing -----------------------------------------------------------------------------


class _ActionParser:
    def __init__(self, source: str, action: _RawAction) -> None:
        self.source = source
        self.tokens = action.tokens
        self.text = action.text
        self.pos = 0

    def fail(self, reason: str) -> TemplateError:
        return TemplateError(self.source, f"{reason} in {{{{{self.text}}}}}")

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def pipeline(self, closing: str | None = None) -> Pipeline:
        start = self.pos
        commands = [self.command()]
        while (token := self.peek()) is not None and token.kind == "|":
            self.pos += 1
            if self.peek() is None or self.peek().kind in (")", "|"):  # type: ignore[union-attr]
                raise self.fail("missing command after '|'")
            commands.append(self.command())
        token = self.peek()
        if closing is None and token is not None:
            raise self.fail(f"unexpected {token.value!r}")
        if closing is not None and (token is None or token.kind != closing):
            raise self.fail("unclosed '('")
        first, last = self.tokens[start], self.tokens[self.pos - 1]
        return Pipeline(tuple(commands), self.source[first.start : last.end])

    def command(self) -> Command:
        operands: list[Operand] = []
        while (token := self.peek()) is not None and token.kind not in ("|", ")"):
            operands.append(self.operand())
        if not operands:
            raise self.fail("missing value")
        return Command(tuple(operands))

    def operand(self) -> Operand:
        token = self.tokens[self.pos]
        self.pos += 1
        if token.kind == "string":
            return StringLit(str(token.value))
        if token.kind == "int":
            return IntLit(int(token.value))  # type: ignore[call-overload]
        if token.kind == "bool":
            return BoolLit(bool(token.value))
        if token.kind == "dot":
            return Dot()
        if token.kind == "ident":
            if token.value in ("if", "else", "end") or token.value in _UNSUPPORTED_KEYWORDS:
                raise self.fail(f"keyword {token.value!r} is not allowed here")
            return FunctionName(str(token.value))
        if token.kind == "field":
            return Fields(None, (str(token.value), *self._adjacent_fields(token)))
        if token.kind == "(":
            if self.peek() is None:
                raise self.fail("unclosed '('")
            inner = self.pipeline(closing=")")
            closing = self.tokens[self.pos]
            self.pos += 1
            names = self._adjacent_fields(closing)
            return Fields(Paren(inner), names) if names else Paren(inner)
        raise self.fail(f"unexpected {token.value!r}")

    def _adjacent_fields(self, previous: _Token) -> tuple[str, ...]:
        """Fields written right after an operand (no space) continue its chain, as in Go."""
        names: list[str] = []
        while (token := self.peek()) is not None and token.kind == "field":
            if token.start != previous.end:
                break
            names.append(str(token.value))
            previous = token
            self.pos += 1
        return tuple(names)


@dataclass
class _OpenIf:
    branches: list[tuple[Pipeline, list[Node]]]
    otherwise: list[Node] | None = None

    @property
    def body(self) -> list[Node]:
        return self.otherwise if self.otherwise is not None else self.branches[-1][1]


def parse(source: str) -> list[Node]:
    """The syntax tree of a template; raises :class:`TemplateError`."""
    root: list[Node] = []
    open_ifs: list[_OpenIf] = []

    def body() -> list[Node]:
        return open_ifs[-1].body if open_ifs else root

    for item in _Lexer(source).run():
        if isinstance(item, Text):
            body().append(item)
            continue
        parser = _ActionParser(source, item)
        first = parser.peek()
        if first is None:
            raise TemplateError(source, "empty action {{}}")
        keyword = first.value if first.kind == "ident" else None
        if keyword in _UNSUPPORTED_KEYWORDS:
            raise parser.fail(f"{{{{{keyword}}}}} is not supported")
        if keyword == "if":
            parser.pos += 1
            open_ifs.append(_OpenIf([(_condition(parser), [])]))
        elif keyword == "else":
            if not open_ifs or open_ifs[-1].otherwise is not None:
                raise parser.fail("{{else}} without a matching {{if}}")
            parser.pos += 1
            following = parser.peek()
            if following is None:
                open_ifs[-1].otherwise = []
            elif following.kind == "ident" and following.value == "if":
                parser.pos += 1
                open_ifs[-1].branches.append((_condition(parser), []))
            else:
                raise parser.fail("only 'else' or 'else if' may follow {{else")
        elif keyword == "end":
            if not open_ifs or len(parser.tokens) != 1:
                raise parser.fail("{{end}} without a matching {{if}}")
            done = open_ifs.pop()
            branches = tuple((cond, tuple(nodes)) for cond, nodes in done.branches)
            body().append(If(branches, tuple(done.otherwise or ())))
        else:
            body().append(Action(parser.pipeline()))
    if open_ifs:
        raise TemplateError(source, "{{if}} without a matching {{end}}")
    return root


def _condition(parser: _ActionParser) -> Pipeline:
    if parser.peek() is None:
        raise parser.fail("missing condition")
    return parser.pipeline()
