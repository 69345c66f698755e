"""Parsing /proc/PID/maps."""

from __future__ import annotations

import os
from pathlib import Path

from rover.symbols.maps import MappingKind, parse_maps

MAPS = """\
7f0000010000-7f0000020000 r-xp 00002000 fe:00 123 /usr/lib/libc.so.6
55550000a000-55550000b000 r--p 00000000 fe:00 99 /usr/bin/app
555500001000-555500005000 r-xp 00001000 fe:00 99 /usr/bin/app
7f0000030000-7f0000031000 r-xp 00000000 fe:00 77 /tmp/old build/lib x.so (deleted)
7f0000040000-7f0000041000 rwxp 00000000 00:00 0
7f0000050000-7f0000052000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
7f0000060000-7f0000061000 r-xs 00000000 00:01 5 /memfd:jit-code (deleted)
not a mapping line
zzzz-1000 r-xp 0 fe:00 1 /bad/address
"""


def test_only_executable_mappings_sorted_by_start() -> None:
    mappings = parse_maps(MAPS)
    assert [m.start for m in mappings] == sorted(m.start for m in mappings)
    assert [m.module for m in mappings] == [
        "app",
        "libc.so.6",
        "lib x.so",
        "[anon]",
        "[vdso]",
        "memfd:jit-code",
        "[vsyscall]",
    ]


def test_fields() -> None:
    app = parse_maps(MAPS)[0]
    assert (app.start, app.end, app.offset) == (0x555500001000, 0x555500005000, 0x1000)
    assert (app.dev, app.inode, app.path) == ("fe:00", 99, "/usr/bin/app")
    assert app.kind is MappingKind.FILE and not app.deleted
    assert app.file_offset(0x555500001010) == 0x1010
    assert app.map_files_name == "555500001000-555500005000"


def test_deleted_and_special_mappings() -> None:
    by_module = {m.module: m for m in parse_maps(MAPS)}
    deleted = by_module["lib x.so"]
    assert deleted.deleted and deleted.path == "/tmp/old build/lib x.so"
    assert deleted.kind is MappingKind.FILE
    assert by_module["[anon]"].kind is MappingKind.ANONYMOUS
    assert by_module["[vdso]"].kind is MappingKind.VDSO
    assert by_module["[vsyscall]"].kind is MappingKind.SPECIAL
    assert by_module["memfd:jit-code"].deleted


def test_own_maps() -> None:
    mappings = parse_maps(Path(f"/proc/{os.getpid()}/maps").read_text())
    assert any(m.module.startswith("python3") for m in mappings)
    assert any(m.kind is MappingKind.VDSO for m in mappings)
    assert all(m.end > m.start for m in mappings)
