"""Symbolization: process maps, ELF symbol tables, kallsyms, demangling, shared caches.

The one entry point is :class:`Symbolizer`; see ``symbolizer.py``.
"""

from rover.symbols.symbolizer import Symbolizer

__all__ = ["Symbolizer"]
