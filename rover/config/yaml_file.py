"""Reading the YAML file into plain dicts, lists and strings.

Every scalar stays a string (PyYAML's BaseLoader): values are typed later, by
the same rules whether they came from the file or from an environment
variable, so ``enable_TLS: yes`` and ``ROVER_BACKEND_ENABLE_TLS=yes`` fail alike
instead of YAML 1.1 quietly turning one of them into ``True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rover.config.errors import ConfigError

Tree = dict[str, Any]


class _StringLoader(yaml.BaseLoader):
    """BaseLoader that refuses duplicate keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, "a key must be a plain name", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    f"while reading the mapping that holds {key!r}",
                    node.start_mark,
                    f"duplicate key {key!r} (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_tree(path: Path) -> Tree:
    """The top-level mapping of the YAML file at ``path``; ConfigError says why not."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration file: {exc.strerror}") from None
    try:
        tree = yaml.load(text, Loader=_StringLoader)  # noqa: S506 - BaseLoader builds no objects
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML {_describe(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if tree is None or tree == "":
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (logger, core, ...) at the top")
    return tree


def _describe(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = exc.problem or exc.context or "unreadable"
    line = _source_line(mark)
    return f"{where}: {problem}" + (f"\n    {line}" if line else "")


def _source_line(mark: yaml.Mark | None) -> str:
    if mark is None or mark.buffer is None:
        return ""
    lines = mark.buffer.rstrip("\0").splitlines()
    return lines[mark.line].rstrip() if mark.line < len(lines) else ""
