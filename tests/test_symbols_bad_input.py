"""Bad input never raises: corrupt, truncated, non-ELF, missing and unreadable files."""

from __future__ import annotations

import io
import json
import logging
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from symbols_helpers import RunningProgram, build

from rover.hostfs import HostFS
from rover.symbols import Symbolizer
from rover.symbols.cache import ElfSymbolsCache
from rover.symbols.elf_file import ElfLoadError
from rover.symbols.report import Reporter

NOBODY = "65534"


def _non_elf(path: Path) -> None:
    path.write_bytes(b"#!/bin/sh\necho this is not an ELF file\n" * 200)


def _truncated(path: Path) -> None:
    path.write_bytes(build("libspin.so").read_bytes()[:300])


def _section_headers_past_eof(path: Path) -> None:
    data = bytearray(build("libspin.so").read_bytes())
    struct.pack_into("<Q", data, 0x28, len(data) + 0x100000)  # e_shoff
    path.write_bytes(bytes(data))


def _garbage_section_headers(path: Path) -> None:
    data = bytearray(build("libspin.so").read_bytes())
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    rng = random.Random(7)
    data[shoff:] = bytes(rng.randrange(256) for _ in range(len(data) - shoff))
    path.write_bytes(bytes(data))


def _symbol_table_past_eof(path: Path) -> None:
    data = bytearray(build("libspin.so").read_bytes())
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shentsize, shnum) = struct.unpack_from("<HH", data, 0x3A)
    for i in range(shnum):
        header = shoff + i * shentsize
        (sh_type,) = struct.unpack_from("<I", data, header + 4)
        if sh_type in (2, 11):  # SHT_SYMTAB, SHT_DYNSYM: sh_size at +32
            struct.pack_into("<Q", data, header + 32, 1 << 40)
    path.write_bytes(bytes(data))


# name -> (how to make the file, whether loading it is an error). Garbage
# section headers still parse: the file just has no symbol table to offer.
CORRUPTIONS = {
    "non_elf": (_non_elf, True),
    "truncated": (_truncated, True),
    "section_headers_past_eof": (_section_headers_past_eof, True),
    "garbage_section_headers": (_garbage_section_headers, False),
    "symbol_table_past_eof": (_symbol_table_past_eof, True),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_bad_mapped_file_gives_module_offset_frames(
    corruption: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / f"{corruption}.bin"
    make, rejected = CORRUPTIONS[corruption]
    make(bad)
    symbolizer = Symbolizer()
    caplog.set_level(logging.WARNING, logger="rover.symbols")
    with RunningProgram([str(build("c_pie"))]) as prog:
        mapped = prog.send(f"mmap {bad}")["mapped"]
        symbolizer.prepare(prog.pid)
        symbolizer.prepare(prog.pid)
        frames = symbolizer.user_frames(prog.pid, [mapped + 0x10, prog.addresses["main"] + 8])
        assert frames[0].name == f"{bad.name}+0x10"
        assert frames[0].module == bad.name and not frames[0].symbolized
        assert frames[1].name == "main"  # the rest of the process is unaffected
        # A second process mapping the same file: not parsed nor reported again.
        with RunningProgram([str(build("c_pie"))]) as other:
            mapped_again = other.send(f"mmap {bad}")["mapped"]
            symbolizer.prepare(other.pid)
            frames = symbolizer.user_frames(other.pid, [mapped_again + 0x20])
            assert frames[0].name == f"{bad.name}+0x20"
    assert symbolizer.counters["elf_load_errors"] == int(rejected)
    assert symbolizer.counters["unsymbolized_frames"] == 2
    reports = [r for r in caplog.records if bad.name in r.getMessage()]
    assert len(reports) == int(rejected)


def test_random_corruptions_only_ever_raise_elf_load_error() -> None:
    original = build("libspin.so").read_bytes()
    rng = random.Random(1234)
    loaded = rejected = 0
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randrange(1, 40)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        cache = ElfSymbolsCache()
        try:
            symbols = cache.load(io.BytesIO(bytes(data)), None)
        except ElfLoadError:
            rejected += 1
            continue
        loaded += 1
        for address in (0, 0x1000, 0x1100, 1 << 63):
            symbols.table.symbolize(address)
    assert loaded and rejected


def _fake_proc(tmp_path: Path, pid: int, maps: str) -> HostFS:
    proc = tmp_path / "proc" / str(pid)
    (proc / "root").mkdir(parents=True)
    (proc / "maps").write_text(maps)
    return HostFS(tmp_path)


def test_missing_file_gives_module_offset_frames(tmp_path: Path) -> None:
    maps = (
        "555555554000-555555556000 r-xp 00001000 fe:00 42 /opt/app/gone\n"
        "garbage line that is not a mapping\n"
    )
    symbolizer = Symbolizer(hostfs=_fake_proc(tmp_path, 4242, maps))
    symbolizer.prepare(4242)
    frames = symbolizer.user_frames(4242, [0x555555554100, 0x555555554200])
    assert [f.name for f in frames] == ["gone+0x1100", "gone+0x1200"]
    assert symbolizer.counters["elf_load_errors"] == 1
    assert symbolizer.counters["file_open_errors"] == 1


def test_unreadable_maps_is_counted_not_raised(tmp_path: Path) -> None:
    hostfs = _fake_proc(tmp_path, 4343, "")
    maps = tmp_path / "proc" / "4343" / "maps"
    maps.unlink()
    maps.mkdir()  # reading it fails with IsADirectoryError, not "process gone"
    symbolizer = Symbolizer(hostfs=hostfs)
    symbolizer.prepare(4343)
    frames = symbolizer.user_frames(4343, [0x1234])
    assert [f.name for f in frames] == ["[unknown]+0x1234"]
    assert symbolizer.counters["maps_read_errors"] >= 1


def test_unreadable_file_as_unprivileged_user() -> None:
    # Root reads everything, so this runs the target and the symbolizer as
    # nobody, against a file made unreadable after the target mapped it.
    directory = Path(tempfile.mkdtemp(prefix="rover-unreadable-"))
    try:
        directory.chmod(0o755)
        victim = directory / "victim.so"
        shutil.copy(build("libspin.so"), victim)
        victim.chmod(0o644)
        drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        with RunningProgram([*drop, str(build("c_pie"))]) as prog:
            mapped = prog.send(f"mmap {victim}")["mapped"]
            victim.chmod(0o000)
            script = (
                "import json, sys\n"
                "from rover.symbols import Symbolizer\n"
                "s = Symbolizer()\n"
                "pid, mapped, main = (int(a) for a in sys.argv[1:])\n"
                "s.prepare(pid)\n"
                "frames = s.user_frames(pid, [mapped + 0x10, main + 8])\n"
                "print(json.dumps({'names': [f.name for f in frames], 'counters': s.counters}))\n"
            )
            argv = [sys.executable, "-c", script, str(prog.pid), str(mapped)]
            argv.append(str(prog.addresses["main"]))
            result = subprocess.run(
                [*drop, *argv], capture_output=True, text=True, timeout=60, cwd="/"
            )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["names"] == ["victim.so+0x10", "main"]
        assert report["counters"]["file_open_errors"] == 1
        assert report["counters"]["elf_load_errors"] == 1
        assert "victim.so" in result.stderr and "Permission denied" in result.stderr
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_user_frames_never_raises_on_odd_addresses() -> None:
    symbolizer = Symbolizer()
    with RunningProgram([str(build("c_pie"))]) as prog:
        symbolizer.prepare(prog.pid)
        odd = [1, 0xFFFFFFFFFFFFFFFF, 1 << 47, prog.addresses["main"] + 8, 2]
        frames = symbolizer.user_frames(prog.pid, odd)
        assert len(frames) == len(odd)
        assert frames[3].name == "main"
        assert [f.symbolized for f in frames] == [False, False, False, True, False]


def test_an_unreadable_section_name_table_is_counted_and_logged_once(caplog) -> None:
    data = bytearray(build("libspin.so").read_bytes())
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    (shentsize, _shnum, shstrndx) = struct.unpack_from("<HHH", data, 0x3A)
    names_header = shoff + shentsize * shstrndx
    struct.pack_into("<Q", data, names_header + 0x18, len(data) + 0x100000)  # its sh_offset
    reporter = Reporter(("section_name_errors",))
    with caplog.at_level(logging.WARNING, logger="rover.symbols"):
        for _ in range(2):  # a second load of the same file is not reported again
            cache = ElfSymbolsCache(reporter=reporter)
            symbols = cache.load(io.BytesIO(bytes(data)), None, subject="libspin.so")
            assert len(symbols.table)  # the symbols survive: .symtab is found by type
    assert reporter.counters["section_name_errors"] == 1
    assert caplog.text.count("unreadable section names") == 1
