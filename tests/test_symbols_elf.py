"""ELF symbol tables: bulk loading, merging, address ranges, build ids, load bias."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from symbols_helpers import build, find_tool, nm_functions, run

from rover.symbols.cache import ElfSymbolsCache
from rover.symbols.elf_file import ElfImage
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
