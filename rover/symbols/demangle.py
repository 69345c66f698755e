"""Turning linker symbol names into the names people read.

* C++ (Itanium ``_Z...``): ``cxxfilt``, i.e. libstdc++'s ``__cxa_demangle``, the
  same demangler ``c++filt``, gdb and perf print with.
* Rust, both manglings: ``pyderust``, bindings to the ``rustc-demangle`` crate
  that Rust's own backtraces use. rustc 1.95 still mangles user crates with the
  legacy scheme (``_ZN...17h<hash>E``) by default while the prebuilt standard
  library uses v0 (``_R...``), so one binary holds both. Output is the
  hash-free form (``crate::module::function``).
* Go and C names pass through unchanged.

Names are demangled only when looked up, and remembered in one cache shared by
every file and process, bounded in bytes (``cache.demangled_name_bytes``, set with
:func:`set_cache_bytes`); a name evicted is simply demangled again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from rover.byte_cache import ByteLru, CacheStats, str_bytes

log = logging.getLogger(__name__)

# A legacy Rust symbol ends with the path element "h" + 16 hex digits, before an
# optional LLVM/GCC suffix such as ".llvm.123".
_RUST_LEGACY = re.compile(r"^_ZN.*17h[0-9a-f]{16}E(?:\..*)?$")
_RUST_HASH_SUFFIX = re.compile(r"::h[0-9a-f]{16}(?= \[clone|$)")


def _load_cxx() -> Callable[[str], str] | None:
    try:
        import cxxfilt
    except Exception as exc:  # ImportError, or libstdc++ missing (OSError)
        log.warning("C++ names stay mangled: cannot load cxxfilt (%s)", exc)
        return None
    return cxxfilt.demangle


def _load_rust() -> Callable[[str], str] | None:
    try:
        import pyderust
    except Exception as exc:
        log.warning("Rust names stay mangled: cannot load pyderust (%s)", exc)
        return None
    return pyderust.demangle


_cxx_demangle = _load_cxx()
_rust_demangle = _load_rust()

DEFAULT_DEMANGLED_NAME_BYTES = 4 << 20  # cache.demangled_name_bytes
_CACHE: ByteLru[str, str] = ByteLru("demangled_names", DEFAULT_DEMANGLED_NAME_BYTES)


def set_cache_bytes(budget_bytes: int) -> None:
    """The byte budget of the demangled names (the agent's ``cache.demangled_name_bytes``)."""
    _CACHE.set_budget(budget_bytes)


def cache_stats() -> CacheStats:
    return _CACHE.stats()


def demangle(name: str) -> str:
    """The readable form of a symbol name; the name itself when it is not mangled.

    A leading ``.`` or ``$`` is dropped first, as the SkyWalking profiling spec
    asks, and so is a symbol version after a mangled name. Never raises: a name
    no demangler accepts is returned as it is. Remembered: each entry is charged
    its two strings (one when the name needs no demangling).
    """
    readable = _CACHE.get(name)
    if readable is None:
        readable = demangle_uncached(name)
        size = str_bytes(name) + (str_bytes(readable) if readable is not name else 0)
        _CACHE.put(name, readable, size)
    return readable


def demangle_uncached(name: str) -> str:
    """:func:`demangle` without its cache."""
    if name[:1] in (".", "$"):
        name = name[1:]
    if name.startswith(("_Z", "_R")):
        name = name.partition("@")[0]  # a symbol version ("@@GLIBCXX_3.4") is not part of it
    rust_legacy = _RUST_LEGACY.match(name) is not None
    if rust_legacy or name.startswith("_R"):
        readable = _try(_rust_demangle, name)
        if readable is not None:
            return readable
    if name.startswith("_Z"):
        readable = _try(_cxx_demangle, name)
        if readable is not None:
            # A Rust legacy name gets here only without pyderust: at least drop the hash.
            return _RUST_HASH_SUFFIX.sub("", readable) if rust_legacy else readable
    return name


def _try(demangler: Callable[[str], str] | None, name: str) -> str | None:
    if demangler is None:
        return None
    try:
        return demangler(name) or None
    except Exception:  # each library has its own "invalid name" error
        return None
