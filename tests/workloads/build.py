"""Build the test workloads into a shared cache directory.

`build(name)` compiles one workload (see `WORKLOADS`) and returns the binary's path.
Binaries are rebuilt only when their source (or this file) is newer. Each build runs in
a private temporary directory and the binary is moved into place with `os.replace`, so
concurrent pytest processes can build the same workload safely.

Run as a script to build everything: `python tests/workloads/build.py [name ...]`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE_DIR = Path("/tmp/rover-test-workloads")
CACHE_DIR_ENV = "ROVER_TEST_WORKLOADS"

FRAME_POINTER_FLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-mno-omit-leaf-frame-pointer"]

# Name a symbolizer should give each on-CPU workload's hot leaf (demangled, no Rust hash).
HOT_FUNCTION: dict[str, str] = {
    "hot_c_fp": "c_hot_spin",
    "hot_c_nofp": "c_hot_spin",
    "hot_cpp": "ns::Worker::spin()",
    "hot_rust": "hot_rust::worker::rust_hot_spin",
    "hot_go": "main.work",
}

# Full call chain (outermost first, leaf last) for workloads whose frames are all user code.
CALL_CHAIN: dict[str, list[str]] = {
    "hot_c_fp": ["main", "c_outer", "c_hot_spin"],
    "hot_c_nofp": ["main", "c_outer", "c_hot_spin"],
    "hot_cpp": ["main", "ns::Worker::spin()"],
    "hot_rust": ["hot_rust::main", "hot_rust::worker::rust_hot_spin"],
    "hot_go": ["main.main", "main.work"],
    "block_c": ["main", "block_loop", "block_sleep"],
    "chain_c": ["main", "chain_a", "chain_b"],
    "repeat_c": ["main", "left_a", "left_b", "wait_leaf"],  # and right_a, right_b
    "regcfa_c": ["main", "reg_outer", "reg_leaf"],
    "unwind_snapshot": ["main", "snap_a", "snap_b"],
    "unwind_cpp": ["main", "cxx_outer()", "cxx_work()"],
    "pingpong_c": ["main", "rally", "pass"],
    "unwind_expr": ["main", "expr_outer", "drap_frame"],
}


class WorkloadBuildError(RuntimeError):
    """A compiler failed or is missing; the message carries its stderr."""


@dataclass(frozen=True)
class Workload:
    source: str
    toolchain: str  # "gcc", "g++", "rustc" or "go"
    flags: tuple[str, ...] = ()


WORKLOADS: dict[str, Workload] = {
    "hot_c_fp": Workload("hot_c.c", "gcc", tuple(FRAME_POINTER_FLAGS)),
    "hot_c_nofp": Workload("hot_c.c", "gcc", ("-O2", "-fomit-frame-pointer")),
    "hot_cpp": Workload("hot_cpp.cpp", "g++", tuple(FRAME_POINTER_FLAGS)),
    "hot_rust": Workload(
        "hot_rust.rs", "rustc", ("-O", "-C", "force-frame-pointers=yes", "-C", "debuginfo=1")
    ),
    "hot_go": Workload("hot_go.go", "go"),
    "block_c": Workload("block_c.c", "gcc", (*FRAME_POINTER_FLAGS, "-fno-optimize-sibling-calls")),
    # .eh_frame unwinding (tests/test_unwind_*.py): no frame pointers anywhere.
    "chain_c": Workload("chain_c.c", "gcc", ("-O2", "-fomit-frame-pointer")),
    "unwind_expr": Workload("unwind_expr.c", "gcc", ("-O2", "-fomit-frame-pointer")),
    "pingpong_c": Workload("pingpong_c.c", "gcc", ("-O2", "-fomit-frame-pointer", "-pthread")),
    "unwind_snapshot": Workload("unwind_snapshot.c", "gcc", ("-O2", "-fomit-frame-pointer")),
    "repeat_c": Workload("repeat_c.c", "gcc", ("-O2", "-fomit-frame-pointer")),
    "regcfa_c": Workload("regcfa_c.c", "gcc", ("-O2", "-fomit-frame-pointer")),
    "unwind_cpp": Workload("unwind_cpp.cpp", "g++", ("-O2", "-fomit-frame-pointer")),
}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def find_tool(name: str) -> str:
    """Locate a compiler on PATH or in ~/.cargo/bin (rustup's default)."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in (Path.home() / ".cargo/bin" / name, Path("/root/.cargo/bin") / name):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise WorkloadBuildError(f"compiler {name!r} not found on PATH or in ~/.cargo/bin")


def _compile_command(name: str, workload: Workload, output: Path) -> list[str]:
    source = str(SOURCE_DIR / workload.source)
    match workload.toolchain:
        case "gcc" | "g++":
            return [find_tool(workload.toolchain), *workload.flags, "-o", str(output), source]
        case "rustc":
            crate = Path(workload.source).stem
            return [
                find_tool("rustc"),
                *workload.flags,
                "--crate-name",
                crate,
                "-o",
                str(output),
                source,
            ]
        case "go":
            return [find_tool("go"), "build", "-o", str(output), source]
    raise ValueError(f"unknown toolchain {workload.toolchain!r} for {name}")


def _compile_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    go_cache = cache_dir() / ".go"
    env.update(
        GO111MODULE="off",
        GOFLAGS="",
        GOCACHE=str(go_cache / "cache"),
        GOPATH=str(go_cache / "path"),
        CARGO_HOME=env.get("CARGO_HOME", str(Path.home() / ".cargo")),
        TMPDIR=str(workdir),
    )
    return env


def _inputs_digest(workload: Workload) -> str:
    """What a binary is built from, by content: checkouts sharing the cache directory (a
    CI clone, another branch) then never take each other's binaries, whatever the mtimes."""
    digest = hashlib.sha256(repr(workload).encode())
    for path in (SOURCE_DIR / workload.source, *sorted(SOURCE_DIR.glob("*.h"))):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _is_fresh(binary: Path, digest: str) -> bool:
    stamp = binary.with_name(binary.name + ".inputs")
    return binary.exists() and stamp.exists() and stamp.read_text() == digest


def build(name: str) -> Path:
    """Build workload `name` (if stale) and return the path of its binary."""
    if name not in WORKLOADS:
        raise KeyError(f"unknown workload {name!r}; known: {', '.join(sorted(WORKLOADS))}")
    workload = WORKLOADS[name]
    out_dir = cache_dir()
    binary = out_dir / name
    digest = _inputs_digest(workload)
    if _is_fresh(binary, digest):
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=out_dir) as tmp:
        workdir = Path(tmp)
        output = workdir / name
        command = _compile_command(name, workload, output)
        result = subprocess.run(
            command, cwd=workdir, env=_compile_env(workdir), capture_output=True, text=True
        )
        if result.returncode != 0 or not output.exists():
            raise WorkloadBuildError(
                f"building workload {name} failed (exit {result.returncode}):\n"
                f"$ {' '.join(command)}\n{result.stderr}{result.stdout}"
            )
        os.replace(output, binary)
        binary.with_name(name + ".inputs").write_text(digest)
    return binary


def main(names: list[str]) -> None:
    for name in names or sorted(WORKLOADS):
        print(build(name))


if __name__ == "__main__":
    main(sys.argv[1:])
