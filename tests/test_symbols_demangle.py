"""Demangling: C++, both Rust manglings, and names that must pass unchanged."""

from __future__ import annotations

import re

import pytest
from symbols_helpers import build, nm_functions

from rover.byte_cache import ByteLru
from rover.symbols import demangle as demangle_module
from rover.symbols.demangle import demangle


@pytest.mark.parametrize(
    ("mangled", "readable"),
    [
        ("_ZN2ns6Worker4spinEv", "ns::Worker::spin()"),
        ("_ZN2ns3addIiEET_S1_S1_", "int ns::add<int>(int, int)"),
        ("_Z3fooi.cold", "foo(int) [clone .cold]"),
        ("_ZNSt6thread6_StateD2Ev@@GLIBCXX_3.4.22", "std::thread::_State::~_State()"),
        # Rust legacy: hash dropped, $-escapes and ".." decoded.
        (
            "_ZN8hot_rust6worker13rust_hot_spin17ha842b58abb414696E",
            "hot_rust::worker::rust_hot_spin",
        ),
        (
            "_ZN4core3ptr42drop_in_place$LT$std..io..error..Error$GT$17h60235924dbc056ecE",
            "core::ptr::drop_in_place<std::io::error::Error>",
        ),
        (
            "_ZN3std2rt10lang_start28_$u7b$$u7b$closure$u7d$$u7d$17h7360bed0ee32d112E",
            "std::rt::lang_start::{{closure}}",
        ),
        ("_ZN3foo3bar17h0123456789abcdefE.llvm.1234", "foo::bar"),
        # Rust v0.
        ("_RNvNtCs9xzoUkwkHCS_8hot_rust6worker13rust_hot_spin", "hot_rust::worker::rust_hot_spin"),
        (
            "_RINvMNtCsgEmfK2I1SDS_4core3stre18trim_start_matchesReECsgY6Mt91CT9J_14rustc_demangle",
            "<str>::trim_start_matches::<&str>",
        ),
        # Go and C names come out as they are.
        ("main.work", "main.work"),
        ("runtime.(*mheap).alloc", "runtime.(*mheap).alloc"),
        ("type:.eq.[2]interface {}", "type:.eq.[2]interface {}"),
        ("c_hot_spin", "c_hot_spin"),
        ("_start", "_start"),
        # A leading "." or "$" is dropped (SkyWalking's rule).
        (".text_helper", "text_helper"),
        ("$x_helper", "x_helper"),
        (".main.work", "main.work"),
        # Not valid mangled names: unchanged, no exception.
        ("_Z", "_Z"),
        ("_Zgarbage(", "_Zgarbage("),
        ("_RNotValid", "_RNotValid"),
        ("", ""),
    ],
)
def test_demangle(mangled: str, readable: str) -> None:
    assert demangle(mangled) == readable


@pytest.mark.parametrize(("binary", "prefix"), [("rust_legacy", "_ZN"), ("rust_v0", "_R")])
def test_every_rust_symbol_of_a_real_binary_demangles(binary: str, prefix: str) -> None:
    # rustc 1.95 mangles user code with the legacy scheme unless told v0 (its
    # prebuilt std may use v0 either way).
    names = [n for n in nm_functions(build(binary)) if n.startswith(("_ZN", "_R"))]
    assert any(n.startswith(prefix) and "rust_hot_spin" in n for n in names)
    for name in names:
        readable = demangle(name)
        assert readable != name and "$" not in readable
        assert not re.search(r"::h[0-9a-f]{16}", readable)  # no hash suffix


def test_without_pyderust_legacy_rust_still_loses_its_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demangle_module, "_rust_demangle", None)
    undecorated = demangle_module.demangle_uncached  # bypass the cache
    assert undecorated("_ZN8hot_rust4main17h0123456789abcdefE") == "hot_rust::main"
    assert undecorated("_ZN2ns6Worker4spinEv") == "ns::Worker::spin()"
    assert undecorated("_RNvCs1234_7mycrate4main") == "_RNvCs1234_7mycrate4main"


def test_results_are_cached() -> None:
    first = demangle("_ZN2ns6Worker4spinEv")
    hits = demangle_module.cache_stats().hits
    assert demangle("_ZN2ns6Worker4spinEv") is first
    assert demangle_module.cache_stats().hits == hits + 1


def mangled(i: int) -> str:
    """``ns::Worker::f<i>()``, mangled."""
    return f"_ZN2ns6Worker{1 + len(str(i))}f{i}Ev"


def test_demangled_names_stay_within_their_byte_budget_and_come_back_after_eviction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = ByteLru[str, str]("demangled_names", 4096)
    monkeypatch.setattr(demangle_module, "_CACHE", cache)
    names = [mangled(i) for i in range(100)]
    first = [demangle(name) for name in names]
    assert first[0] == "ns::Worker::f0()" and first[42] == "ns::Worker::f42()"
    stats = demangle_module.cache_stats()
    assert stats.bytes <= 4096 and stats.entries < 100 and stats.evictions > 0
    assert stats.entries + stats.evictions == 100
    # The oldest were evicted: asked again, they are demangled again, to the same names.
    assert names[0] not in cache
    assert [demangle(name) for name in names] == first


def test_the_demangled_names_budget_is_set_by_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ByteLru[str, str]("demangled_names", 1 << 20)
    monkeypatch.setattr(demangle_module, "_CACHE", cache)
    for i in range(200):
        demangle(mangled(i))
    demangle_module.set_cache_bytes(8192)
    stats = demangle_module.cache_stats()
    assert stats.budget_bytes == 8192 and stats.bytes <= 8192 and stats.evictions > 0
