"""Fuzzing the readers of untrusted input: ELF files (with their debug link, MiniDebugInfo and
pclntab), Go pclntabs, xz sections and perf maps.

Each reader may raise only its documented error, and every lookup afterwards
must answer (a name or nothing). Inputs are mutations of real files built by
the tests, plus raw bytes; the runs are derandomized so CI is reproducible.
"""

from __future__ import annotations

import contextlib
import functools
import io
import lzma
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from symbols_helpers import add_minidebuginfo, build, make_pclntab, section_range, split_debug_file

from rover.hostfs import HostFS
from rover.symbols import Symbolizer
from rover.symbols.cache import ElfSymbolsCache
from rover.symbols.debug_files import read_debug_link
from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.symbols.gopclntab import PclntabError, parse_pclntab
from rover.symbols.minidebuginfo import MiniDebugInfoError, decompress
from rover.symbols.perf_map import parse_perf_map
from rover.symbols.report import Reporter


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@functools.cache
def elf_seeds() -> tuple[bytes, ...]:
    """Small real ELF files exercising every source: .symtab, .dynsym only with a debug
    link, MiniDebugInfo, and a stripped Go binary's pclntab."""
    directory = build("c_pie").parent / "fuzz-seeds"
    directory.mkdir(exist_ok=True)
    linked, minidebuginfo = directory / "linked.so", directory / "minidebuginfo"
    if not linked.exists():
        split_debug_file(build("libspin.so"), linked, directory / "linked.so.debug")
    if not minidebuginfo.exists():
        add_minidebuginfo(build("c_pie"), minidebuginfo)
    paths = [build("libspin.so"), build("c_nopie"), linked, minidebuginfo, build("go_stripped")]
    return tuple(path.read_bytes() for path in paths)


@functools.cache
def pclntab_seeds() -> tuple[bytes, ...]:
    path = build("go_stripped")
    offset, size = section_range(path, ".gopclntab")
    real = path.read_bytes()[offset : offset + size]
    functions = [(0x1000, "a.f"), (0x1010, "a.g"), (0x1040, "main.main")]
    synthetic = tuple(
        make_pclntab(layout, functions, 0x1080, ptr_size=ptr, text_start=0x1000)
        for layout in (116, 118, 120)
        for ptr in (4, 8)
    )
    return (real, *synthetic)


def mutate(data: bytes, edits: list[tuple[float, int]], cut: float | None, keep: int = 0) -> bytes:
    """``data`` with bytes overwritten at relative positions (never in the first ``keep``
    bytes), and maybe truncated."""
    mutated = bytearray(data)
    for where, value in edits:
        index = min(int(where * len(mutated)), len(mutated) - 1)
        if index >= keep:
            mutated[index] = value
    if cut is not None:
        del mutated[int(cut * len(mutated)) :]
    return bytes(mutated)


# Edits cluster where parsers look: the start (headers) and the end (section headers).
# Positions come from a seeded Random: hypothesis' own floats favour 0.0, i.e. byte 0.
_REGIONS = ((0.0, 0.002),) + ((0.9, 1.0),) * 3 + ((0.0, 1.0),) * 8  # header, tail, anywhere


@st.composite
def edits(draw: st.DrawFn) -> list[tuple[float, int]]:
    rng = draw(st.randoms(use_true_random=False))
    count = draw(st.integers(0, 10))
    return [(rng.uniform(*rng.choice(_REGIONS)), rng.randrange(256)) for _ in range(count)]


cuts = st.one_of(st.none(), st.none(), st.none(), st.floats(0, 1))
ADDRESSES = (0, 1, 0x1000, 0x1139, 0x401000, 0x480FC0, 1 << 47, (1 << 64) - 1)


@fuzz_settings(1500)
@given(seed=st.integers(0, 4), edits=edits(), cut=cuts)
def test_elf_reader_raises_only_elf_load_error(seed: int, edits, cut) -> None:
    data = mutate(elf_seeds()[seed], edits, cut, keep=4)  # a bad magic is rejected at once
    reporter = Reporter(())
    try:
        symbols = ElfSymbolsCache(reporter=reporter).load(io.BytesIO(data), None)
        read_debug_link(symbols.image)
    except ElfLoadError as exc:
        event(f"rejected: {str(exc)[:40]}")
        return
    event(f"loaded from {'+'.join(symbols.sources) or 'nothing'}")
    for address in ADDRESSES:
        name = symbols.table.symbolize(address)
        assert name is None or isinstance(name, str)
    symbols.table.lookup_many(list(ADDRESSES))
    symbols.image.load_bias(0x7F0000000000, 0x1000, 0x2000)


@fuzz_settings(1500)
@given(seed=st.integers(0, 6), edits=edits(), cut=cuts)
def test_pclntab_parser_raises_only_pclntab_error(seed: int, edits, cut) -> None:
    data = mutate(pclntab_seeds()[seed], edits, cut, keep=4)  # raw-bytes test: the magic
    try:
        table = parse_pclntab(data, True, (0x401000, 0x500000))
    except PclntabError as exc:
        event(f"rejected: {str(exc).split()[1]}")
        return
    event("parsed")
    assert len(table) > 0
    starts = [table.start(i) for i in range(len(table))]
    assert starts == sorted(starts)
    for i in (0, len(table) // 2, len(table) - 1):
        assert isinstance(table.name(i), str)
        table.symbolize(starts[i])


@fuzz_settings(500)
@given(data=st.binary(max_size=600), layout=st.sampled_from([b"\xfa", b"\xf0", b"\xf1"]))
def test_pclntab_parser_on_raw_bytes(data: bytes, layout: bytes) -> None:
    with contextlib.suppress(PclntabError):
        parse_pclntab(layout + b"\xff\xff\xff" + data, True)


@fuzz_settings(500)
@given(data=st.binary(max_size=400), edits=edits(), cut=cuts)
def test_xz_sections_raise_only_minidebuginfo_error(data: bytes, edits, cut) -> None:
    for candidate in (data, mutate(lzma.compress(data or b"x"), edits, cut)):
        with contextlib.suppress(MiniDebugInfoError):
            assert isinstance(decompress(candidate), bytes)


# Perf map lines: valid ones, and the kinds of garbage a crashed or foreign writer leaves.
hex_numbers = st.integers(0, (1 << 64) - 1).map(lambda n: f"{n:x}")
valid_lines = st.builds(
    lambda start, size, name: f"{start} {size} {name}",
    hex_numbers,
    st.integers(1, 1 << 20).map(lambda n: f"{n:x}"),
    st.text(st.characters(exclude_characters="\n\r", exclude_categories=["Cs"]), min_size=1)
    .map(str.strip)
    .filter(bool),
)
garbage_lines = st.one_of(
    st.just("garbage"),
    st.builds(lambda a: f"{a} 10", hex_numbers),
    st.builds(lambda a: f"zz{a} 10 name", hex_numbers),
    st.builds(lambda a: f"{a}ffffffffffffffff 10 too_wide", hex_numbers),
)


@fuzz_settings(2000)
@given(lines=st.lists(st.tuples(st.booleans(), st.data()), max_size=30))
def test_perf_map_parser_counts_good_and_garbage_lines(lines) -> None:
    text = []
    good = garbage = 0
    for is_valid, data in lines:
        if is_valid:
            text.append(data.draw(valid_lines))
            good += 1
        else:
            text.append(data.draw(garbage_lines))
            garbage += 1
    starts, sizes, names, bad = parse_perf_map("".join(f"{t}\n" for t in text).encode())
    assert (len(starts), len(sizes), len(names), bad) == (good, good, good, garbage)


@fuzz_settings(2000)
@given(data=st.binary(max_size=2000))
def test_perf_map_parser_on_raw_bytes(data: bytes) -> None:
    starts, sizes, names, bad = parse_perf_map(data)
    assert len(starts) == len(sizes) == len(names)
    assert bad >= 0


@pytest.fixture(scope="module")
def fake_jit_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[HostFS, Path]:
    root = tmp_path_factory.mktemp("fuzz-proc")
    proc = root / "proc" / "5151"
    (proc / "root" / "tmp").mkdir(parents=True)
    (proc / "maps").write_text("7f0000000000-7f0000100000 r-xp 00000000 00:00 0 \n")
    (proc / "status").write_text("NSpid:\t5151\n")
    return HostFS(root), proc / "root" / "tmp" / "perf-5151.map"


@fuzz_settings(600)
@given(data=st.binary(max_size=1500), addresses=st.lists(st.integers(0, (1 << 64) - 1)))
def test_symbolizer_never_raises_on_any_perf_map(fake_jit_process, data: bytes, addresses) -> None:
    hostfs, path = fake_jit_process
    path.write_bytes(data)
    symbolizer = Symbolizer(hostfs)
    frames = symbolizer.user_frames(5151, [*addresses, 0x7F0000000010])
    assert len(frames) == len([a for a in addresses if a]) + 1


def test_seeds_are_valid_inputs() -> None:
    # The fuzzers start from files that do load: mutations are what is being tested.
    for data in elf_seeds():
        ElfSymbolsCache().load(io.BytesIO(data), None)
    for data in pclntab_seeds():
        assert len(parse_pclntab(data, True, (0x401000, 0x500000))) >= 3
    ElfImage(io.BytesIO(elf_seeds()[0]))
