"""Symbolization: process maps, ELF symbol tables (with separate debug files, MiniDebugInfo
and Go's pclntab), JIT perf maps, kallsyms, demangling, shared caches.

The one entry point is :class:`Symbolizer`; see ``symbolizer.py``.
"""

from rover.symbols.symbolizer import Symbolizer

__all__ = ["Symbolizer"]
