"""Peak memory and time of `rover convert` / `rover diff` on a big folded file and a gzip bomb.

Generates a folded file of realistic stacks (a call graph of 60,000 functions,
10-40 frames deep plus sometimes kernel frames, every line a distinct stack:
1,000,000 lines by default, about 430 MB), converts it to every output format,
reads the pprof and speedscope outputs back, diffs the folded file with its
pprof conversion, and feeds rover a gzip bomb (1 GiB of zeros as .pb.gz). Each
run is its own process; its peak resident size is its VmHWM.

With --baseline DIR (a source tree holding an older rover/, e.g. from
`git archive COMMIT rover | tar -x -C DIR`) every run is repeated with that
code and the ratios printed. Run:
    .venv/bin/python bench/bench_convert.py [--lines N] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

KERNEL = [
    "entry_SYSCALL_64_after_hwframe_[k]", "do_syscall_64_[k]", "__x64_sys_read_[k]",
    "ksys_read_[k]", "vfs_read_[k]", "__x64_sys_futex_[k]", "do_futex_[k]", "futex_wait_[k]",
    "schedule_[k]", "__schedule_[k]", "tcp_recvmsg_[k]", "sock_recvmsg_[k]",
    "copy_user_enhanced_fast_string_[k]", "page_fault_[k]", "handle_mm_fault_[k]",
]  # fmt: skip
WORDS = ["alloc", "buffer", "commit", "dispatch", "encode", "flush", "grow", "handle", "index",
         "join", "kick", "load", "merge", "notify", "open", "parse", "query", "read", "scan",
         "task", "update", "visit", "write", "yield", "zip"]  # fmt: skip
PROCESSES = ["api-server", "worker", "postgres", "envoy"]


def generate_folded(path: Path, lines: int, seed: int = 1) -> None:
    """Random walks down a call graph: most functions call one or a few others, a tenth
    dispatch to many; hotter callees first. Every line is a distinct stack."""
    rng = random.Random(seed)
    names = []
    for i in range(60_000):
        word = rng.choice(WORDS)
        names.append(
            (f"{rng.choice(WORDS).title()}::{word}{i}", f"{word}_{i}", f"rt.{word}{i}")[i % 3]
        )
    callees = []
    for _ in names:
        r = rng.random()
        count = 1 if r < 0.55 else rng.randint(2, 4) if r < 0.9 else rng.randint(8, 40)
        callees.append([rng.randrange(len(names)) for _ in range(count)])
    seen: set[int] = set()
    with open(path, "w") as f:
        while len(seen) < lines:
            process = rng.randrange(len(PROCESSES))
            stack = [PROCESSES[process], "_start", "__libc_start_main", "main"]
            function, depth = process, rng.randint(10, 40)
            while len(stack) < depth:
                stack.append(names[function])
                choices = callees[function]
                function = choices[min(int(rng.paretovariate(1.2)) - 1, len(choices) - 1)]
            if rng.random() < 0.3:
                first = rng.randrange(5)
                stack.extend(KERNEL[first : first + rng.randint(2, 8)])
            line = ";".join(stack)
            if hash(line) not in seen:
                seen.add(hash(line))
                f.write(f"{line} {int(rng.paretovariate(1.1))}\n")


def gzip_bomb(path: Path, size: int = 2**30) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(2**20)
    with open(path, "wb") as f:
        for _ in range(size // len(zeros)):
            f.write(compressor.compress(zeros))
        f.write(compressor.flush())


# rover's own peak, VmHWM, read as it exits: a child's ru_maxrss would also count this
# script's peak (Linux keeps the larger across fork and exec).
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


def measure(args: list[str], source_tree: str | None, cwd: Path) -> tuple[int, float, float, str]:
    """(exit code, peak MiB, seconds, last stderr line) of one rover run.

    ``cwd`` must not hold a rover/ (python -c puts it first on the path).
    """
    peak_file = cwd / ".vmhwm"
    env = {**os.environ, "ROVER_VMHWM_FILE": str(peak_file)}
    if source_tree:
        env["PYTHONPATH"] = os.path.abspath(source_tree)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", MEASURED, *args], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, check=False,
    )  # fmt: skip
    seconds = time.monotonic() - started
    peak = int(peak_file.read_text()) / 1024
    lines = result.stderr.strip().splitlines()
    return result.returncode, peak, seconds, lines[-1] if lines else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--baseline", help="a source tree with an older rover/ to compare")
    parser.add_argument("--dir", help="keep the files here (default: a temporary directory)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(options.dir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        folded = work / "big.folded"
        started = time.monotonic()
        generate_folded(folded, options.lines)
        gzip_bomb(work / "bomb.pb.gz")
        size = folded.stat().st_size / 2**20
        print(f"{options.lines:,} lines, {size:.0f} MiB, generated in "
              f"{time.monotonic() - started:.0f} s")  # fmt: skip

        runs = [(f"folded -> {ext}", ["convert", folded, work / f"out.{ext}"])
                for ext in ("folded", "pb.gz", "speedscope.json", "html", "svg")]  # fmt: skip
        runs += [
            ("pb.gz -> folded", ["convert", work / "out.pb.gz", work / "back.folded"]),
            ("speedscope.json -> folded",
             ["convert", work / "out.speedscope.json", work / "back2.folded"]),
            ("diff folded pb.gz", ["diff", folded, work / "out.pb.gz", "-o", work / "diff.html"]),
            ("gzip bomb (1 GiB of zeros)", ["convert", work / "bomb.pb.gz", work / "b.folded"]),
        ]  # fmt: skip
        header = f"{'run':30} {'exit':>4} {'peak MiB':>9} {'seconds':>8}"
        if options.baseline:
            header += f" {'baseline MiB':>12} {'s':>6} {'memory ratio':>12}"
        print(header)
        for name, args in runs:
            code, peak, seconds, last = measure(list(map(str, args)), None, work)
            line = f"{name:30} {code:>4} {peak:>9.0f} {seconds:>8.1f}"
            if options.baseline:
                _, old_peak, old_seconds, _ = measure(list(map(str, args)), options.baseline, work)
                line += f" {old_peak:>12.0f} {old_seconds:>6.1f} {peak / old_peak:>11.2f}x"
            print(line + (f"  ({last})" if code else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
