"""Kernel frames from /proc/kallsyms (the real one, and crafted files)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rover.profile import FrameKind
from rover.symbols import Symbolizer
from rover.symbols.kallsyms import KernelSymbols


def kallsyms_address(name: str) -> int:
    for line in Path("/proc/kallsyms").read_text().splitlines():
        fields = line.split()
        if fields[2] == name and len(fields) == 3:
            return int(fields[0], 16)
    raise LookupError(name)


def test_real_kernel_function() -> None:
    symbolizer = Symbolizer()
    schedule = kallsyms_address("schedule")
    assert schedule  # we run as root: kallsyms shows addresses
    frames = symbolizer.kernel_frames([schedule, schedule + 4, 0, kallsyms_address("do_nanosleep")])
    assert [f.name for f in frames] == ["schedule", "schedule", "do_nanosleep"]
    assert all(f.kind is FrameKind.KERNEL and f.module == "[kernel]" for f in frames)
    assert all(f.symbolized and f.is_kernel for f in frames)
    assert symbolizer.counters["unsymbolized_frames"] == 0


def test_unknown_kernel_address() -> None:
    symbolizer = Symbolizer()
    frames = symbolizer.kernel_frames([0x1000])
    assert frames[0].name == "[kernel]+0x1000" and not frames[0].symbolized
    assert frames[0].kind is FrameKind.KERNEL
    assert symbolizer.counters["unsymbolized_frames"] == 1


FAKE_KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81000000 t startup_64
ffffffff81001000 T do_one_initcall
ffffffff81002000 D some_data
ffffffff81003000 t local_helper
ffffffff81003800 W weak_thing
ffffffff81004000 T _etext
ffffffffc0100000 t nft_do_chain\t[nf_tables]
ffffffffc0100400 T nft_register_expr\t[nf_tables]
ffffffffc0200000 t bpf_prog_6deef7357e7b4530_sd_fw_egress\t[bpf]
this line is garbage
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kallsyms"
    path.write_text(text)
    return str(path)


def test_text_symbols_modules_and_aliases(tmp_path: Path) -> None:
    symbolizer = Symbolizer(kallsyms_path=write(tmp_path, FAKE_KALLSYMS))
    addresses = [
        0xFFFFFFFF81000010,  # _stext and startup_64 alias: the global one
        0xFFFFFFFF81002010,  # data symbols are not text: still do_one_initcall
        0xFFFFFFFF81003010,
        0xFFFFFFFF81003810,
        0xFFFFFFFFC0100010,
        0xFFFFFFFFC0100410,
        0xFFFFFFFFC0200010,
    ]
    frames = symbolizer.kernel_frames(addresses)
    assert [(f.name, f.module) for f in frames] == [
        ("_stext", "[kernel]"),
        ("do_one_initcall", "[kernel]"),
        ("local_helper", "[kernel]"),
        ("weak_thing", "[kernel]"),
        ("nft_do_chain", "nf_tables"),
        ("nft_register_expr", "nf_tables"),
        ("bpf_prog_6deef7357e7b4530_sd_fw_egress", "bpf"),
    ]


def test_past_the_end_of_kernel_text_is_unknown(tmp_path: Path) -> None:
    symbolizer = Symbolizer(kallsyms_path=write(tmp_path, FAKE_KALLSYMS))
    frames = symbolizer.kernel_frames([0xFFFFFFFF81004010, 0xFFFFFFFF80000000])
    assert [f.name for f in frames] == [
        "[kernel]+0xffffffff81004010",
        "[kernel]+0xffffffff80000000",
    ]
    assert not any(f.symbolized for f in frames)


def test_kptr_restrict_zeroes_leave_frames_unsymbolized(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    restricted = "".join(
        f"0000000000000000 {line.split()[1]} {line.split(maxsplit=2)[2]}\n"
        for line in FAKE_KALLSYMS.splitlines()
        if len(line.split()) >= 3 and line.split()[0] != "this"
    )
    symbolizer = Symbolizer(kallsyms_path=write(tmp_path, restricted))
    caplog.set_level(logging.WARNING, logger="rover.symbols")
    for _ in range(3):
        frames = symbolizer.kernel_frames([0xFFFFFFFF81001010])
        assert frames[0].name == "[kernel]+0xffffffff81001010" and not frames[0].symbolized
    assert symbolizer.counters["kallsyms_restricted"] == 1
    assert len([r for r in caplog.records if "kptr_restrict" in r.getMessage()]) == 1


def test_missing_kallsyms(tmp_path: Path) -> None:
    symbolizer = Symbolizer(kallsyms_path=str(tmp_path / "nope"))
    frames = symbolizer.kernel_frames([0xFFFFFFFF81001010, 0xFFFFFFFF81001020])
    assert not any(f.symbolized for f in frames)
    assert symbolizer.counters["kallsyms_errors"] == 1


def test_kallsyms_is_read_once(tmp_path: Path) -> None:
    path = Path(write(tmp_path, FAKE_KALLSYMS))
    symbolizer = Symbolizer(kallsyms_path=str(path))
    assert symbolizer.kernel_frames([0xFFFFFFFF81001010])[0].name == "do_one_initcall"
    path.unlink()
    assert symbolizer.kernel_frames([0xFFFFFFFF81003010])[0].name == "local_helper"


def test_parse_real_kallsyms_is_sorted_and_text_only() -> None:
    table = KernelSymbols.parse(Path("/proc/kallsyms").read_text())
    text_lines = [
        line
        for line in Path("/proc/kallsyms").read_text().splitlines()
        if line.split()[1] in "tTwW"
    ]
    assert 0 < len(table) <= len(text_lines)
    found = table.lookup(kallsyms_address("schedule"))
    assert found is not None and found.name == "schedule"


def test_kernel_frames_name_their_file(tmp_path: Path) -> None:
    symbolizer = Symbolizer(kallsyms_path=write(tmp_path, FAKE_KALLSYMS))
    frames = symbolizer.kernel_frames([0xFFFFFFFF81001010, 0xFFFFFFFFC0100010, 0xFFFFFFFF80000000])
    assert [(f.module, f.file) for f in frames] == [
        ("[kernel]", "[kernel.kallsyms]"),
        ("nf_tables", "nf_tables"),
        ("[kernel]", "[kernel.kallsyms]"),  # unsymbolized, still the kernel's
    ]


@pytest.mark.bpf
def test_real_module_symbols_name_their_module() -> None:
    # Loaded BPF programs are listed in /proc/kallsyms as the module "[bpf]", exactly
    # like a loadable module's functions (this kernel may have no loadable modules).
    from rover.bpf.engine import ProfilerEngine
    from rover.bpf.headers import HeaderSearch
    from rover.profile import ProfileType

    engine = ProfilerEngine(ProfileType.ON_CPU, HeaderSearch().find())
    try:
        modules = [
            line.split()
            for line in Path("/proc/kallsyms").read_text().splitlines()
            if line.endswith("]") and line.split()[1] in "tT"
        ]
        assert modules, "no module symbols in /proc/kallsyms with a BPF program loaded"
        address, _, name, module = modules[-1][:4]
        symbolizer = Symbolizer()
        frame = symbolizer.kernel_frames([int(address, 16) + 1])[0]
    finally:
        engine.close()
    assert (frame.name, frame.module, frame.file) == (name, module.strip("[]"), module.strip("[]"))
    assert frame.symbolized and frame.kind is FrameKind.KERNEL
