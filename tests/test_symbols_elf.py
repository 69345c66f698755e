"""ELF symbol tables: bulk loading, merging, address ranges, build ids, load bias."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from symbols_helpers import build, find_tool, nm_functions, run

from rover.byte_cache import ENTRY_OVERHEAD_BYTES
from rover.symbols.cache import (
    _IDENTITY_BYTES,
    ElfSymbols,
    ElfSymbolsCache,
    KnownBadFile,
    file_identity,
)
from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.symbols.elf_table import ElfSymbolTable, load_symbol_table

LIBC = Path("/usr/lib/x86_64-linux-gnu/libc.so.6")

# Symbols with and without sizes, a gap after a sized symbol, and a symbol
# nested inside another.
RANGES_ASM = r"""
    .text
    .globl unsized_a
    .type unsized_a, @function
unsized_a:
    .skip 16, 0x90
    .globl sized_b
    .type sized_b, @function
sized_b:
    .skip 2, 0x90
    .size sized_b, 2
    .skip 14, 0x90
    .globl outer
    .type outer, @function
outer:
    .skip 8, 0x90
    .globl inner
    .type inner, @function
inner:
    .skip 4, 0x90
    .size inner, 4
    .skip 20, 0x90
    .size outer, 32
    .globl sized_last
    .type sized_last, @function
sized_last:
    ret
    .size sized_last, 1
"""


def load(path: Path) -> tuple[ElfImage, ElfSymbolTable]:
    with open(path, "rb") as stream:
        image = ElfImage(stream)
        return image, load_symbol_table(image)


def all_functions(path: Path) -> dict[int, set[str]]:
    """address -> names of defined FUNC/IFUNC symbols, read symbol by symbol with pyelftools."""
    found: dict[int, set[str]] = {}
    with open(path, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if not isinstance(section, SymbolTableSection):  # .symtab and .dynsym
                continue
            for sym in section.iter_symbols():
                # STT_LOOS is how pyelftools names STT_GNU_IFUNC.
                is_function = sym["st_info"]["type"] in ("STT_FUNC", "STT_LOOS")
                defined = sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]
                if is_function and defined and sym.name:
                    found.setdefault(sym["st_value"], set()).add(sym.name)
    return found


@pytest.fixture(scope="module")
def ranges_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ranges")
    source = directory / "ranges.s"
    source.write_text(RANGES_ASM)
    output = directory / "libranges.so"
    run(find_tool("gcc"), "-shared", "-nostdlib", "-o", output, source)
    return output


@pytest.mark.parametrize("path", [LIBC, build("c_pie"), build("libspin.so"), build("cpp")])
def test_every_function_symbol_resolves_to_its_name(path: Path) -> None:
    _, table = load(path)
    expected = all_functions(path)
    assert len(table) == len(expected)  # one entry per address: .symtab and .dynsym merged
    for address, names in expected.items():
        index = table.lookup(address)
        assert index >= 0 and table.start(index) == address
        assert table.raw_name(index) in names


def test_symbols_without_size_reach_the_next_symbol(ranges_lib: Path) -> None:
    _, table = load(ranges_lib)
    f = nm_functions(ranges_lib)
    a = f["unsized_a"][0]
    assert [table.symbolize(a + d) for d in (0, 7, 15)] == ["unsized_a"] * 3
    assert table.symbolize(a + 16) == "sized_b"


def test_gap_after_a_sized_symbol_belongs_to_no_symbol(ranges_lib: Path) -> None:
    """As in perf: past a sized symbol is a hidden function, not the one before it."""
    _, table = load(ranges_lib)
    b = nm_functions(ranges_lib)["sized_b"][0]
    assert table.symbolize(b + 1) == "sized_b"
    assert table.symbolize(b + 9) is None  # past its size, before the next symbol
    assert table.lookup_many([b + 1, b + 9]).tolist() == [table.lookup(b + 1), -1]


def test_containing_symbol_wins_over_nearest_preceding(ranges_lib: Path) -> None:
    _, table = load(ranges_lib)
    f = nm_functions(ranges_lib)
    outer = f["outer"][0]
    assert table.symbolize(outer + 9) == "inner"
    assert table.symbolize(outer + 20) == "outer"


def test_nothing_past_the_end_of_the_section_or_before_the_first_symbol(
    ranges_lib: Path,
) -> None:
    _, table = load(ranges_lib)
    f = nm_functions(ranges_lib)
    last = f["sized_last"][0]
    assert table.symbolize(last) == "sized_last"
    assert table.symbolize(last + 1) is None
    assert table.symbolize(f["unsized_a"][0] - 1) is None


def test_batch_lookup_matches_single_lookup() -> None:
    _, table = load(LIBC)
    rng = random.Random(5)
    low, high = table.start(0) - 0x100, table.start(len(table) - 1) + 0x1000
    addresses = [rng.randrange(low, high) for _ in range(20000)]
    batch = table.lookup_many(addresses).tolist()
    assert batch == [table.lookup(a) for a in addresses]
    assert min(batch) >= -1 and max(batch) < len(table)


def test_32_bit_elf(tmp_path: Path) -> None:
    source = tmp_path / "t32.c"
    source.write_text("int helper(int x) { return x * 3; }\nvoid entry(void) { helper(2); }\n")
    output = tmp_path / "t32"
    flags = ["-m32", "-O1", "-nostdlib", "-static", "-fno-pie", "-no-pie", "-Wl,-e,entry"]
    run(find_tool("gcc"), *flags, "-o", output, source)
    image, table = load(output)
    assert image.elf_class == 32 and image.is_exec
    f = nm_functions(output)
    assert table.symbolize(f["helper"][0] + 1) == "helper"
    assert table.symbolize(f["entry"][0]) == "entry"
    assert image.load_bias(0x8049000, 0x1000, 0x1000) == 0


@pytest.mark.parametrize("style", ["sha1", "md5", "none"])
def test_build_id_matches_readelf(tmp_path: Path, style: str) -> None:
    source = tmp_path / "b.c"
    source.write_text("int main(void) { return 0; }\n")
    output = tmp_path / "b"
    run(find_tool("gcc"), f"-Wl,--build-id={style}", "-o", output, source)
    notes = subprocess.run(["readelf", "-n", str(output)], capture_output=True, text=True)
    expected = [line.split()[-1] for line in notes.stdout.splitlines() if "Build ID" in line]
    image, _ = load(output)
    assert image.build_id == (expected[0] if expected else None)


def test_load_bias_uses_the_segment_the_mapping_maps() -> None:
    image, _ = load(build("libspin.so"))
    assert not image.is_exec
    text = next(s for s in image.segments if s.executable)
    # Mapped r-xp at 0x7f0000001000 from its segment's page: the bias is where vaddr 0 lands.
    start = 0x7F0000001000
    map_offset = text.offset & ~0xFFF
    bias = image.load_bias(start, map_offset, 0x1000)
    assert bias == start - map_offset + text.offset - text.vaddr
    flat, _ = load(build("libflat.so"))
    assert flat.segments[0].executable and flat.segments[0].offset == 0
    assert flat.load_bias(0x7F0000000000, 0, 0x1000) == 0x7F0000000000
    exe, _ = load(build("c_nopie"))
    assert exe.is_exec and exe.load_bias(0x401000, 0x1000, 0x1000) == 0


def test_cache_shares_by_build_id_but_prefers_the_unstripped_file(tmp_path: Path) -> None:
    stripped = tmp_path / "libstripped.so"
    stripped.write_bytes(build("libspin.so").read_bytes())
    subprocess.run(["strip", "--strip-all", str(stripped)], check=True)
    cache = ElfSymbolsCache()
    hidden = nm_functions(build("libspin.so"))["lib_hidden"][0]
    with open(stripped, "rb") as f:
        first = cache.load(f, None)
    assert first.table.symbolize(hidden) is None  # hidden: not in .dynsym
    with open(build("libspin.so"), "rb") as f:
        full = cache.load(f, None)
    assert full.table.symbolize(hidden) == "lib_hidden" and cache.loads == 2
    with open(stripped, "rb") as f:
        again = cache.load(f, None)  # the same build id: served the full table
    assert again is full and cache.loads == 2 and cache.hits == 1


def _identity(path: Path) -> tuple[int, int, int, int]:
    return file_identity(path.stat())


def _charged(symbols: ElfSymbols) -> int:
    """What the cache charges for a file reached by one identity."""
    return symbols.nbytes + _IDENTITY_BYTES + ENTRY_OVERHEAD_BYTES


def test_symbol_cache_evicts_the_least_recent_file_at_its_byte_budget(tmp_path: Path) -> None:
    lib, program = build("libspin.so"), build("c_pie")
    sizes = {}
    for path in (lib, program):
        with open(path, "rb") as f:
            sizes[path] = _charged(ElfSymbolsCache().load(f, _identity(path)))
    # Room for either file, not for both.
    cache = ElfSymbolsCache(max(sizes.values()) + 64)
    hidden = nm_functions(lib)["lib_hidden"][0]
    with open(lib, "rb") as f:
        first = cache.load(f, _identity(lib))
    assert cache.cached(_identity(lib)) is first
    assert first.table.symbolize(hidden) == "lib_hidden"
    with open(program, "rb") as f:
        cache.load(f, _identity(program))
    stats = cache.stats()
    assert (stats.name, stats.entries, stats.evictions) == ("symbol_tables", 1, 1)
    assert stats.bytes == sizes[program] <= stats.budget_bytes
    assert cache.cached(_identity(lib)) is None  # evicted: its identity leads nowhere
    assert _identity(lib) not in cache._by_identity
    # Looked up again, the file is loaded again and names the same symbol.
    with open(lib, "rb") as f:
        again = cache.load(f, _identity(lib))
    assert again is not first and cache.loads == 3
    assert again.table.symbolize(hidden) == "lib_hidden"
    assert again.table.nbytes == first.table.nbytes


def test_symbol_table_bigger_than_the_budget_is_used_but_not_kept(caplog) -> None:
    lib = build("libspin.so")
    cache = ElfSymbolsCache(1024)
    hidden = nm_functions(lib)["lib_hidden"][0]
    for _ in range(2):
        with open(lib, "rb") as f:
            symbols = cache.load(f, _identity(lib))
        assert symbols.table.symbolize(hidden) == "lib_hidden"
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.refused, cache.loads) == (0, 0, 2, 2)
    assert cache.cached(_identity(lib)) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "exceed cache.symbol_table_bytes (1 KiB)" in warnings[0]


def test_every_identity_of_one_build_is_charged_and_forgotten_with_it(tmp_path: Path) -> None:
    """The same library in three containers: one table, three identities leading to it."""
    copies = []
    for i in range(3):
        copy = tmp_path / f"c{i}" / "libspin.so"
        copy.parent.mkdir()
        copy.write_bytes(build("libspin.so").read_bytes())
        copies.append(copy)
    cache = ElfSymbolsCache()
    for copy in copies:
        with open(copy, "rb") as f:
            cache.load(f, _identity(copy))
    table = cache.cached(_identity(copies[0]))
    assert table is not None and all(cache.cached(_identity(c)) is table for c in copies)
    assert cache.loads == 1 and cache.stats().entries == 1
    assert cache.stats().bytes == table.nbytes + 3 * _IDENTITY_BYTES + ENTRY_OVERHEAD_BYTES
    program = build("c_pie")
    with open(program, "rb") as f:
        program_bytes = _charged(ElfSymbolsCache().load(f, _identity(program)))
    # Room for either entry, not both: the program pushes the library out.
    cache._store.set_budget(max(cache.stats().bytes, program_bytes))
    with open(program, "rb") as f:
        cache.load(f, _identity(program))
    assert cache.stats().entries == 1 and cache.stats().evictions == 1
    assert all(cache.cached(_identity(c)) is None for c in copies)
    assert not any(_identity(c) in cache._by_identity for c in copies)


def test_a_file_that_failed_is_remembered_within_the_budget(tmp_path: Path) -> None:
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"\x7fELF" + b"\xff" * 60)
    cache = ElfSymbolsCache()
    with open(bad, "rb") as f, pytest.raises(ElfLoadError):
        cache.load(f, _identity(bad))
    with pytest.raises(KnownBadFile):
        cache.cached(_identity(bad))
    stats = cache.stats()
    assert stats.entries == 1 and 0 < stats.bytes < 2048
