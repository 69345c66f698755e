"""Rover's naming templates and filters, a checked subset of Go's text/template: compiled
once at start-up, rendered per process.

A template is checked against the *type* of the data it will see (an :class:`ObjectType`
listing the fields and methods a context offers, e.g. ``.Pod.LabelValue``), so an unknown
field or function, a wrong argument count or type, or an object printed as text is a
:class:`TemplateError` at start-up rather than a surprise per process. Nothing is evaluated
through Python's own machinery: only the members declared in the types can be reached.

The Go text/template subset (``syntax`` parses it):

* text around actions; ``{{- x -}}`` trim markers; ``{{/* comments */}}``;
* literals: ``"strings"`` (Go escapes), ```raw```, decimal integers, ``true``/``false``;
* ``.`` and member chains: ``.Pod.Name``, ``.Pod.LabelValue "a,b" "dflt"``,
  ``(.Pod.FindContainer "x").Name``; parenthesised pipelines as arguments;
* pipelines ``x | f a`` (the value becomes the last argument of ``f``, a function or method);
* ``if`` / ``else if`` / ``else`` / ``end`` (Go's truth: false, 0, "" are false);
* functions ``eq ne lt le gt ge and or not len print printf println`` with Go's semantics
  (``eq a b c`` is a==b or a==c; ``and``/``or`` return an argument and short-circuit;
  ``printf`` verbs ``%s %v %d %q %t %%``), plus Rover's ``equalsOrDefault eq ifSame value``.

Rejected at compile time: variables, ``range``/``with``/``define``/``template``/``block``,
``nil``, character and floating-point constants, ``index``/``slice``/``html``/``js``/
``urlquery``/``call``, and a stray ``}}`` in text.

Differences from Go's text/template, where Go renders and we refuse or the other way round
(``tests/test_template_against_go.py`` renders every template both ways and checks these):

* refused at start-up though Go accepts: the constructs above, integers in other bases than
  ten, a ``}}`` in text and a ``|`` ending a pipeline (both taken for typos), printing an
  object (Go prints its fields);
* ``printf`` with another verb than those above, or whose verbs and arguments do not match in
  number or type, is an error (Go writes ``%!d(string=x)`` and the like into the name);
* accepted though Rover's Go code refuses: ``.Pod.LabelValue`` without its default (older
  Rover configurations pass none); one context for filters and names (Rover's filters cannot
  reach ``.Rover``, its names not ``.Pod.HasContainer``, ``HasServiceName``,
  ``LabelSelector``); ``.Finder.RegexMatchGroup N`` for the last group of the expression
  (Rover's bound is off by one).

A filter is one expression; like Rover (which renders ``{{<filter>}}`` and parses the text with
Go's ``strconv.ParseBool``) it passes when its value is true, or a string such as ``"true"``.

Modules: ``syntax`` (lexing and parsing), ``types`` (what data a template may reach),
``values`` (Go's truth, printing, comparison, Sprintf), ``functions`` (the built-ins),
``compiler`` (type checking, and rendering). ``tests/test_template_against_go.py`` renders
the same templates with Go's own text/template and compares.
"""

from rover.process.template.compiler import Filter, Template, compile_filter, compile_template
from rover.process.template.syntax import TemplateError
from rover.process.template.types import Kind, Member, ObjectType, RenderError

__all__ = [
    "Filter",
    "Kind",
    "Member",
    "ObjectType",
    "RenderError",
    "Template",
    "TemplateError",
    "compile_filter",
    "compile_template",
]
