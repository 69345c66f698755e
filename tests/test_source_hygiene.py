"""Our sources compile without warnings: an invalid escape sequence (a DeprecationWarning
on 3.11, a SyntaxWarning from 3.12, an error later) fails here, whatever pytest filters."""

from __future__ import annotations

import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_source_compiles_without_warnings() -> None:
    sources = [
        path
        for folder in ("rover", "tests", "bench", "scripts")
        for path in sorted((ROOT / folder).rglob("*.py"))
    ]
    assert len(sources) > 100
    found = []
    for path in sources:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compile(path.read_text(), str(path), "exec")
        found += [f"{path.relative_to(ROOT)}:{w.lineno}: {w.message}" for w in caught]
    assert found == []
