"""`rover convert` stays within its memory budget on big and hostile inputs.

Each conversion runs in its own process, whose peak resident size (VmHWM)
is checked against a generous bound: several times what it takes now, a
fraction of what reading the whole file into objects took (see
docs/benchmarks.md for the measured numbers).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

# rover's own peak, VmHWM, read as it exits: a child's ru_maxrss would also count its
# parent's peak (Linux keeps the larger across fork and exec), here pytest's.
MEASURED = """
import os, sys
from rover.cli import main
try:
    code = main(sys.argv[1:])
finally:
    with open("/proc/self/status") as status, open(os.environ["ROVER_VMHWM_FILE"], "w") as out:
        out.write(next(line for line in status if line.startswith("VmHWM:")).split()[1])
sys.exit(code)
"""


@dataclass
class Run:
    returncode: int
    stderr: str
    peak_mib: float  # VmHWM
    seconds: float


def run_measured(*args: object, timeout: float = 300) -> Run:
    """Run the rover command line and measure its peak resident size."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_file = Path(tmp) / "vmhwm"
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", MEASURED, *map(str, args)], capture_output=True, text=True,
            timeout=timeout, env={**os.environ, "ROVER_VMHWM_FILE": str(peak_file)}, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - started
        peak_kib = int(peak_file.read_text())
    return Run(result.returncode, result.stderr, peak_kib / 1024, seconds)


def realistic_folded(path: Path, lines: int, seed: int = 7) -> None:
    """Deep stacks (10-40 frames) walking a call graph of 20,000 functions: few shared
    prefixes, many distinct frames, every line a distinct stack."""
    rng = random.Random(seed)
    names = [f"{rng.choice(('ns::Class', 'rt.', 'lib_'))}fn{i}" for i in range(20_000)]
    callees = [[rng.randrange(len(names)) for _ in range(rng.choice((1, 1, 2, 3, 9)))]
               for _ in names]  # fmt: skip
    seen: set[int] = set()
    with open(path, "w") as f:
        while len(seen) < lines:
            process = rng.randrange(4)
            stack, fn = [f"proc{process}", "_start", "main"], process
            for _ in range(rng.randint(10, 40)):
                stack.append(names[fn])
                fn = rng.choice(callees[fn])
            line = ";".join(stack)
            if hash(line) not in seen:
                seen.add(hash(line))
                f.write(f"{line} {rng.randint(1, 50)}\n")


@pytest.fixture(scope="module")
def big_folded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.folded"
    realistic_folded(path, 200_000)
    return path


@pytest.mark.parametrize("extension", ["html", "folded", "pb.gz"])
def test_big_folded_file_converts_in_bounded_memory(tmp_path, big_folded, extension):
    run = run_measured("convert", big_folded, tmp_path / f"out.{extension}")
    assert run.returncode == 0, run.stderr
    size = big_folded.stat().st_size / 2**20
    # About 150 MiB now for a 50 MiB file; whole-file reading took about 8x the file.
    assert run.peak_mib < max(300, 3 * size), f"{run.peak_mib:.0f} MiB for {size:.0f} MiB"


def test_repeated_lines_cost_nothing_more(tmp_path):
    """Memory follows the distinct stacks, not the lines."""
    path = tmp_path / "repeated.folded"
    stacks = [f"proc;main;{'lib;' * 20}work{i} 1\n" for i in range(10)]
    with open(path, "w") as f:
        for _ in range(100_000):
            f.writelines(stacks)  # 1,000,000 lines, 10 distinct stacks
    run = run_measured("convert", path, tmp_path / "out.html")
    assert run.returncode == 0, run.stderr
    assert run.peak_mib < 150, f"{run.peak_mib:.0f} MiB for 10 distinct stacks"


def test_gzip_bomb_is_refused_quickly(tmp_path):
    bomb = tmp_path / "bomb.pb.gz"
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(2**20)
    with open(bomb, "wb") as f:
        for _ in range(1024):  # 1 GiB of zeros in about 4 MiB
            f.write(compressor.compress(zeros))
        f.write(compressor.flush())
    run = run_measured("convert", bomb, tmp_path / "out.folded", timeout=60)
    assert run.returncode == 2
    message = run.stderr.strip().splitlines()[-1]
    assert "bomb.pb.gz decompresses to more than 256 MiB" in message, run.stderr
    assert run.peak_mib < 150 and run.seconds < 20, (run.peak_mib, run.seconds)
