"""Stripped Go binaries named from .gopclntab: real Go 1.19 builds and synthetic layouts."""

from __future__ import annotations

import collections
import logging
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from symbols_helpers import (
    RunningProgram,
    build,
    find_tool,
    make_pclntab,
    nm_functions,
    section_range,
)

from rover.symbols import Symbolizer
from rover.symbols.elf_file import ElfImage
from rover.symbols.gopclntab import PclntabError, parse_pclntab, read_gopclntab


def names(frames):
    return [f.name for f in frames]


def pclntab_of(path: Path):
    with open(path, "rb") as f:
        return read_gopclntab(ElfImage(f))


@pytest.mark.parametrize("binary", ["go_stripped", "go_pie_stripped"])
def test_stripped_go_binary_resolves_from_pclntab(binary: str) -> None:
    path = build(binary)
    assert not nm_functions(path)  # -ldflags="-s -w": no .symtab
    symbolizer = Symbolizer()
    with RunningProgram([str(path)]) as prog:
        symbolizer.prepare(prog.pid)
        a = prog.addresses
        frames = symbolizer.user_frames(prog.pid, [a["work"] + 4, a["main"] + 20])
        assert symbolizer.symbol_sources(prog.pid)[str(path)] == ("gopclntab",)
    assert names(frames) == ["main.work", "main.main"]
    assert all(f.symbolized and f.module == binary and f.file == str(path) for f in frames)
    assert symbolizer.counters["gopclntab_used"] == 1
    assert symbolizer.counters["gopclntab_errors"] == 0


def go_nm(path: Path) -> dict[int, set[str]]:
    """address -> names of the text symbols ``go tool nm`` lists (ABI suffixes dropped)."""
    env = dict(os.environ, GO111MODULE="off", GOFLAGS="")
    out = subprocess.run(
        [find_tool("go"), "tool", "nm", str(path)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    found: dict[int, set[str]] = collections.defaultdict(set)
    for line in out.splitlines():
        address, kind, name = line.split(maxsplit=2)
        if kind in "Tt":
            found[int(address, 16)].add(name.removesuffix(".abi0"))
    return found


def test_pclntab_agrees_with_go_tool_nm() -> None:
    # The same program built without -s -w has the same text layout and a .symtab.
    table = pclntab_of(build("go_stripped"))
    listed = go_nm(build("go"))
    assert len(table) > 1000
    differ = [
        table.raw_name(i)
        for i in range(len(table))
        if table.raw_name(i) not in listed.get(table.start(i), ())
    ]
    # pclntab spells array types of generated equality functions "[...]" ("[5]" in .symtab).
    assert all("[...]" in name for name in differ), differ
    assert len(differ) < 10


@pytest.mark.parametrize("layout", [116, 118, 120])
@pytest.mark.parametrize(("ptr_size", "little_endian"), [(8, True), (4, True), (8, False)])
def test_synthetic_pclntab_layouts(layout: int, ptr_size: int, little_endian: bool) -> None:
    text = 0x401000
    functions = [(text, "runtime.text"), (text + 0x40, "main.work"), (text + 0x90, "main.main")]
    data = make_pclntab(
        layout,
        functions,
        text + 0x100,
        ptr_size=ptr_size,
        little_endian=little_endian,
        text_start=text,
    )
    table = parse_pclntab(data, little_endian, (text, text + 0x1000))
    assert [(table.start(i), table.raw_name(i)) for i in range(len(table))] == functions
    assert table.symbolize(text + 0x41) == "main.work"
    assert table.symbolize(text + 0xFF) == "main.main"
    assert table.symbolize(text + 0x100) is None


def test_go_118_offsets_use_text_section_when_header_is_unrelocated() -> None:
    text = 0x1000
    data = make_pclntab(118, [(text, "a.f"), (text + 0x10, "a.g")], text + 0x20, text_start=text)
    header_text = bytearray(data)
    struct.pack_into("<Q", header_text, 8 + 2 * 8, 0)  # textStart as an unrelocated PIE has it
    table = parse_pclntab(bytes(header_text), True, (text, text + 0x100))
    assert table.symbolize(text + 0x11) == "a.g"


def test_real_pclntab_read_as_go_120_layout() -> None:
    # 1.20 changed the magic, not the parts read here.
    path = build("go_stripped")
    offset, size = section_range(path, ".gopclntab")
    data = bytearray(path.read_bytes()[offset : offset + size])
    assert struct.unpack_from("<I", data)[0] == 0xFFFFFFF0  # Go 1.19 writes the 1.18 layout
    struct.pack_into("<I", data, 0, 0xFFFFFFF1)
    as_120 = parse_pclntab(bytes(data), True)
    original = pclntab_of(path)
    assert len(as_120) == len(original)
    assert as_120.symbolize(original.start(len(original) - 1)) == "main.main"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: struct.pack_into("<I", d, 0, 0xFFFFFFFB), "Go 1.2-1.15"),
        (lambda d: struct.pack_into("<I", d, 0, 0x12345678), "unknown pclntab magic"),
        (lambda d: struct.pack_into("<Q", d, 8, 1 << 40), "lies outside"),
        (lambda d: struct.pack_into("<B", d, 7, 3), "damaged"),
        (lambda d: d.__delitem__(slice(len(d) // 2, None)), "outside"),
    ],
)
def test_damaged_pclntab_raises_pclntab_error(damage, message: str) -> None:
    path = build("go_stripped")
    offset, size = section_range(path, ".gopclntab")
    data = bytearray(path.read_bytes()[offset : offset + size])
    damage(data)
    with pytest.raises(PclntabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_pclntab(bytes(data), True)


def _damaged_go_binary(tmp_path: Path) -> Path:
    """The stripped Go binary with its function table out of order (the runtime would
    refuse to start it, so it is only mapped by another process)."""
    damaged = tmp_path / "damaged_go"
    shutil.copy(build("go_stripped"), damaged)
    offset, _ = section_range(damaged, ".gopclntab")
    data = bytearray(damaged.read_bytes())
    (pcln,) = struct.unpack_from("<Q", data, offset + 8 + 7 * 8)
    struct.pack_into("<I", data, offset + pcln + 8 * 10, 0xFFFFFFF0)  # 10th entry offset
    damaged.write_bytes(bytes(data))
    return damaged


def test_damaged_pclntab_gives_module_offsets(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = _damaged_go_binary(tmp_path)
    with pytest.raises(PclntabError, match="out of order"):
        pclntab_of(damaged)
    caplog.set_level(logging.WARNING, logger="rover.symbols")
    symbolizer = Symbolizer()
    with RunningProgram([str(build("c_pie"))]) as prog, RunningProgram([str(build("c_pie"))]) as b:
        mapped = prog.send(f"mmap {damaged}")["mapped"]
        symbolizer.prepare(prog.pid)
        frames = symbolizer.user_frames(prog.pid, [mapped + 0x1010, prog.addresses["main"] + 8])
        mapped_again = b.send(f"mmap {damaged}")["mapped"]
        symbolizer.prepare(b.pid)
        again = symbolizer.user_frames(b.pid, [mapped_again + 0x1020])
    assert names(frames) == ["damaged_go+0x1010", "main"]
    assert names(again) == ["damaged_go+0x1020"]
    assert symbolizer.counters["gopclntab_errors"] == 1
    assert symbolizer.counters["elf_load_errors"] == 0
    assert symbolizer.counters["unsymbolized_frames"] == 2
    reports = [r.getMessage() for r in caplog.records if "damaged_go" in r.getMessage()]
    assert len(reports) == 1 and "out of order" in reports[0]
