"""Benchmarks of rover.symbols, measured against binutils in the same run.

    .venv/bin/python bench/bench_symbols.py [--library PATH] [--repeat N] [--naive]

1. Loading the function symbols of a large shared library (default libLLVM-14,
   ~34k dynamic functions) cold, i.e. never from our cache, against
   ``nm -D --defined-only`` on the same file. Target: at most 2x nm.
2. Address lookups per second after loading, single and batched. Target: 1M/s.
3. For context: parsing /proc/kallsyms, and whole user stacks through Symbolizer.
4. A stripped library with its separate debug file (default libc, whose debug
   file libc6-dbg installs under /usr/lib/debug/.build-id): found, merged with
   ``.dynsym`` and loaded, against ``nm --defined-only`` on the debug file.
   Skipped when no debug file is installed. Target: at most 2x nm.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rover.hostfs import HostFS  # noqa: E402
from rover.symbols import Symbolizer  # noqa: E402
from rover.symbols.cache import ElfSymbols, ElfSymbolsCache  # noqa: E402
from rover.symbols.debug_files import DebugFiles  # noqa: E402
from rover.symbols.elf_file import ElfImage  # noqa: E402
from rover.symbols.elf_table import ElfSymbolTable, load_symbol_table  # noqa: E402
from rover.symbols.kallsyms import KernelSymbols  # noqa: E402
from rover.symbols.report import Reporter  # noqa: E402

Result = TypeVar("Result")

DEFAULT_LIBRARY = "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1"
DEFAULT_STRIPPED = "/usr/lib/x86_64-linux-gnu/libc.so.6"
LOOKUPS = 1_000_000


def timed(function: Callable[[], Result], repeat: int) -> tuple[float, Result]:
    """Median wall time of ``repeat`` calls, and the last result."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def load_cold(path: str) -> ElfSymbolTable:
    with open(path, "rb") as stream:
        return load_symbol_table(ElfImage(stream))


def load_with_all_names(path: str) -> ElfSymbolTable:
    """Load, then decode and demangle every name: all the work nm's output implies."""
    table = load_cold(path)
    for i in range(len(table)):
        table.name(i)
    return table


def run_nm(path: str) -> None:
    subprocess.run(["nm", "-D", "--defined-only", path], stdout=subprocess.DEVNULL, check=True)


def load_naive(path: str) -> int:
    """The per-symbol pyelftools loop this module avoids (for comparison only)."""
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    count = 0
    with open(path, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if isinstance(section, SymbolTableSection):  # .symtab and .dynsym
                for sym in section.iter_symbols():
                    if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"]:
                        count += len(sym.name) > 0
    return count


def bench_load(path: str, repeat: int, naive: bool) -> None:
    print(f"== load: {path} ({os.path.getsize(path) / 1e6:.0f} MB)")
    run_nm(path)  # warm the page cache for both sides
    load_cold(path)
    nm_time, _ = timed(lambda: run_nm(path), repeat)
    our_time, table = timed(lambda: load_cold(path), repeat)
    ratio = our_time / nm_time
    verdict = "OK" if ratio <= 2.0 else "OVER TARGET"
    print(f"nm -D --defined-only   median {nm_time * 1e3:8.1f} ms  ({repeat} runs)")
    print(f"rover load (cold)      median {our_time * 1e3:8.1f} ms  {len(table)} functions")
    print(f"ratio rover / nm       {ratio:8.2f}x   (target <= 2x: {verdict})")
    all_time, _ = timed(lambda: load_with_all_names(path), repeat)
    all_ratio = all_time / nm_time
    print(
        f"rover load + every name demangled  {all_time * 1e3:8.1f} ms  "
        f"({all_ratio:.2f}x nm; nm does not demangle)"
    )
    if naive:
        naive_time, _ = timed(lambda: load_naive(path), 1)
        print(
            f"naive pyelftools loop  {naive_time * 1e3:8.1f} ms  ({naive_time / nm_time:.1f}x nm)"
        )


def bench_lookups(path: str) -> None:
    table = load_cold(path)
    low, high = table.start(0), table.start(len(table) - 1)
    rng = random.Random(42)
    addresses = [rng.randrange(low, high) for _ in range(LOOKUPS)]
    print(f"== lookups: {LOOKUPS:,} random addresses in {Path(path).name}'s text")

    start = time.perf_counter()
    for address in addresses:
        table.lookup(address)
    rate = LOOKUPS / (time.perf_counter() - start)
    print(f"single lookup() -> index          {rate:12,.0f} /s  {_verdict(rate)}")

    for address in addresses[:50_000]:  # the names a real profile keeps hitting
        table.symbolize(address)
    hot = addresses[:50_000] * (LOOKUPS // 50_000)
    start = time.perf_counter()
    for address in hot:
        table.symbolize(address)
    rate = LOOKUPS / (time.perf_counter() - start)
    print(f"single symbolize() -> name (warm) {rate:12,.0f} /s  {_verdict(rate)}")

    array = np.array(addresses, dtype=np.uint64)
    start = time.perf_counter()
    table.lookup_many(array)
    rate = LOOKUPS / (time.perf_counter() - start)
    print(f"batch lookup_many() -> indices    {rate:12,.0f} /s  {_verdict(rate)}")


def bench_kallsyms() -> None:
    text = Path("/proc/kallsyms").read_text()
    parse_time, table = timed(lambda: KernelSymbols.parse(text), 5)
    print(f"== kallsyms: parse {parse_time * 1e3:.1f} ms for {len(table):,} text symbols")


def bench_stacks() -> None:
    # This interpreter's own maps: python, libc, libm, numpy's libraries...
    symbolizer = Symbolizer()
    pid = os.getpid()
    start = time.perf_counter()
    symbolizer.prepare(pid)
    prepare_time = time.perf_counter() - start
    ranges = [
        tuple(int(x, 16) for x in line.split()[0].split("-"))
        for line in Path("/proc/self/maps").read_text().splitlines()
        if " r-xp " in line
    ]
    rng = random.Random(1)
    stacks = [[rng.randrange(*rng.choice(ranges)) for _ in range(20)] for _ in range(2000)]
    for stack in stacks:
        symbolizer.user_frames(pid, stack)  # first pass: names decoded and demangled
    start = time.perf_counter()
    for _ in range(5):
        for stack in stacks:
            symbolizer.user_frames(pid, stack)
    rate = 5 * 20 * len(stacks) / (time.perf_counter() - start)
    print(f"== Symbolizer: prepare(own pid) {prepare_time * 1e3:.1f} ms")
    print(f"user_frames, repeated 20-frame stacks  {rate:12,.0f} frames/s")


def bench_debug_file(path: str, repeat: int) -> None:
    with open(path, "rb") as stream:
        build_id = ElfImage(stream).build_id or ""
    debug = Path(f"/usr/lib/debug/.build-id/{build_id[:2]}/{build_id[2:]}.debug")
    if not build_id or not debug.exists():
        print(f"== debug file: none installed for {path} (skipped)")
        return
    debug_files = DebugFiles(HostFS(), Reporter(()))

    def load() -> ElfSymbols:
        with open(path, "rb") as stream:
            symbols = ElfSymbolsCache().load(
                stream, None, lambda image: debug_files.symbols_for(image, os.getpid(), path, None)
            )
        assert "debug_file" in symbols.sources
        return symbols

    def nm() -> None:
        subprocess.run(["nm", "--defined-only", debug], stdout=subprocess.DEVNULL, check=True)

    nm()
    load()
    nm_time, _ = timed(nm, repeat)
    our_time, symbols = timed(load, repeat)
    ratio = our_time / nm_time
    verdict = "OK" if ratio <= 2.0 else "OVER TARGET"
    print(f"== debug file: {path} + {debug} ({debug.stat().st_size / 1e6:.0f} MB)")
    print(f"nm --defined-only (debug file)   median {nm_time * 1e3:8.1f} ms")
    print(
        f"rover find + load + merge        median {our_time * 1e3:8.1f} ms"
        f"  {len(symbols.table)} functions, {ratio:.2f}x nm (target <= 2x: {verdict})"
    )


def _verdict(rate: float) -> str:
    return "(target >= 1M/s: OK)" if rate >= 1e6 else "(target >= 1M/s: UNDER)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", default=DEFAULT_LIBRARY)
    parser.add_argument("--stripped", default=DEFAULT_STRIPPED, help="a library with a debug file")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--naive", action="store_true", help="also time a naive pyelftools loop")
    args = parser.parse_args()
    if not os.path.exists(args.library):
        sys.exit(f"{args.library} not found; pass --library PATH (a large shared library)")
    bench_load(args.library, args.repeat, args.naive)
    bench_lookups(args.library)
    bench_kallsyms()
    bench_stacks()
    bench_debug_file(args.stripped, args.repeat)


if __name__ == "__main__":
    main()
