"""Helpers for the rover.symbols tests: compile small programs, run them, talk to them.

Every test program prints ``name=0x<address>`` lines for functions it wants
checked (runtime addresses, so the tests never rely on our own load-bias
arithmetic), then ``ready``, then waits for commands on stdin:

* ``dlopen PATH``: load a shared library, print ``lib_spin=`` / ``lib_hidden=``
* ``mmap PATH``: map a file readable+executable, print ``mapped=``
* ``jit``: map anonymous rwx memory, print ``jit=``
* ``exit``: exit
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import NoteSection, SymbolTableSection

C_PROGRAM = r"""
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

volatile int sink;

__attribute__((noinline)) int c_leaf(int x) {
    for (int i = 0; i < 100; i++) sink += i * x;
    return sink;
}

__attribute__((noinline)) int c_outer(int x) { return c_leaf(x) + 1; }

/* Ends with a call to a function that does not return: the return address
   pushed by that call is the first byte after c_tail_call. */
__attribute__((noinline, noreturn)) void c_never_returns(void) {
    for (;;) pause();
}

/* One named section keeps these two adjacent, in this order (GCC moves
   functions that call noreturn ones out of .text otherwise). */
__attribute__((noinline, section(".text.tail"))) void c_tail_call(void) {
    sink = 1;
    c_never_returns();
}

__attribute__((noinline, section(".text.tail"))) void c_after_tail_call(void) { sink = 2; }

static void load_library(const char *path) {
    void *handle = dlopen(path, RTLD_NOW);
    if (!handle) {
        printf("error=%s\n", dlerror());
        return;
    }
    printf("lib_spin=%p\n", dlsym(handle, "lib_spin"));
    void *(*hidden)(void) = (void *(*)(void))dlsym(handle, "lib_hidden_address");
    if (hidden) printf("lib_hidden=%p\n", hidden());
}

int main(int argc, char **argv) {
    if (argc > 1) load_library(argv[1]);
    printf("c_leaf=%p\nc_outer=%p\nmain=%p\n", (void *)c_leaf, (void *)c_outer, (void *)main);
    printf("c_tail_call=%p\nc_after_tail_call=%p\n", (void *)c_tail_call,
           (void *)c_after_tail_call);
    printf("ready\n");
    fflush(stdout);
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        if (!strncmp(line, "dlopen ", 7)) {
            load_library(line + 7);
        } else if (!strncmp(line, "mmap ", 5)) {
            int fd = open(line + 5, O_RDONLY);
            off_t size = lseek(fd, 0, SEEK_END);
            void *p = mmap(0, size, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd, 0);
            printf("mapped=%p\n", p);
            close(fd);
        } else if (!strcmp(line, "jit")) {
            void *p = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            printf("jit=%p\n", p);
        } else if (!strcmp(line, "exit")) {
            return 0;
        }
        printf("ready\n");
        fflush(stdout);
    }
    return 0;
}
"""

C_LIBRARY = r"""
volatile int lib_sink;

__attribute__((visibility("hidden"), noinline)) void lib_hidden(void) {
    for (int i = 0; i < 100; i++) lib_sink += i;
}

__attribute__((noinline)) void lib_spin(void) {
    for (int i = 0; i < 100; i++) lib_sink += i;
    lib_hidden();
}

void *lib_hidden_address(void) { return (void *)lib_hidden; }
"""

CPP_PROGRAM = r"""
#include <cstdio>
#include <cstring>

namespace ns {
class Worker {
  public:
    void spin();
    volatile int n = 0;
};

__attribute__((noinline)) void Worker::spin() {
    for (int i = 0; i < 100; i++) n += i;
}

template <typename T> __attribute__((noinline)) T add(T a, T b) { return a + b; }
}  // namespace ns

int main() {
    // GCC extension (-Wno-pmf-conversions): the code address of a member function.
    void (*spin)(ns::Worker *) = (void (*)(ns::Worker *))(&ns::Worker::spin);
    std::printf("spin=%p\nadd=%p\nready\n", (void *)spin, (void *)&ns::add<int>);
    std::fflush(stdout);
    char line[256];
    while (std::fgets(line, sizeof line, stdin) && std::strcmp(line, "exit\n") != 0) {
        std::printf("ready\n");
        std::fflush(stdout);
    }
    return 0;
}
"""

RUST_PROGRAM = r"""
use std::io::{BufRead, Write};

mod worker {
    #[inline(never)]
    pub fn rust_hot_spin(seed: u64) -> u64 {
        let mut x = seed;
        for _ in 0..100 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        x
    }
}

fn main() {
    let mut out = std::io::stdout();
    writeln!(out, "rust_hot_spin=0x{:x}", worker::rust_hot_spin as *const () as usize).unwrap();
    writeln!(out, "main=0x{:x}", main as *const () as usize).unwrap();
    std::hint::black_box(worker::rust_hot_spin(1));
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        if line.map(|l| l == "exit").unwrap_or(true) {
            return;
        }
        writeln!(out, "ready").unwrap();
        out.flush().unwrap();
    }
}
"""

GO_PROGRAM = r"""
package main

import (
	"bufio"
	"fmt"
	"os"
	"reflect"
)

var sink int

//go:noinline
func work(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s += i
	}
	return s
}

func main() {
	sink = work(10)
	fmt.Printf("work=0x%x\n", reflect.ValueOf(work).Pointer())
	fmt.Printf("main=0x%x\n", reflect.ValueOf(main).Pointer())
	fmt.Println("ready")
	in := bufio.NewReader(os.Stdin)
	for {
		line, err := in.ReadString('\n')
		if err != nil || line == "exit\n" {
			return
		}
		fmt.Println("ready")
	}
}
"""


def find_tool(name: str) -> str:
    """A compiler on PATH or in ~/.cargo/bin (rustup's default place)."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in (Path.home() / ".cargo/bin" / name, Path("/root/.cargo/bin") / name):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(f"compiler {name!r} not found")


def run(*command: str | os.PathLike[str], env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, env=env, timeout=600
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{result.stderr}")
    return result.stdout


def compile_c(source: str, output: Path, *flags: str, compiler: str = "gcc") -> Path:
    src = output.with_suffix(".cpp" if compiler == "g++" else ".c")
    src.write_text(source)
    run(find_tool(compiler), *flags, "-o", output, src)
    return output


def compile_rust(source: str, output: Path, *flags: str) -> Path:
    src = output.with_suffix(".rs")
    src.write_text(source)
    run(find_tool("rustc"), "-O", *flags, "--crate-name", "hot_rust", "-o", output, src)
    return output


def compile_go(source: str, output: Path, *flags: str) -> Path:
    workdir = output.parent / f"{output.name}-go"
    workdir.mkdir(exist_ok=True)
    (workdir / "main.go").write_text(source)
    env = dict(os.environ, GO111MODULE="off", GOFLAGS="", CGO_ENABLED="0")
    env.setdefault("GOCACHE", str(BIN_DIR / "go-cache"))
    run(find_tool("go"), "build", *flags, "-o", output, workdir / "main.go", env=env)
    return output


def split_debug_file(binary: Path, stripped: Path, debug: Path, link: bool = True) -> None:
    """``stripped``: ``binary`` without symbols; ``debug``: its separate debug file,
    named in ``stripped``'s ``.gnu_debuglink`` (with its CRC) when ``link``."""
    run("objcopy", "--only-keep-debug", binary, debug)
    run("strip", "--strip-all", "-o", stripped, binary)
    if link:
        run("objcopy", f"--add-gnu-debuglink={debug}", stripped)


def add_minidebuginfo(binary: Path, output: Path) -> Path:
    """``binary`` stripped, with MiniDebugInfo as Fedora builds it (gdb manual, "MiniDebugInfo"):
    the function symbols ``.dynsym`` lacks, in an xz-compressed ELF in ``.gnu_debugdata``."""
    work = Path(tempfile.mkdtemp(dir=output.parent))
    try:
        dynamic = {line.split()[0] for line in _nm("-D", binary)}
        functions = {f[0] for f in map(str.split, _nm(binary)) if len(f) > 1 and f[1] in "Tt"}
        (work / "keep").write_text("".join(f"{name}\n" for name in sorted(functions - dynamic)))
        run("objcopy", "--only-keep-debug", binary, work / "debug")
        run(
            "objcopy", "-S", "--remove-section", ".gdb_index", "--remove-section", ".comment",
            f"--keep-symbols={work / 'keep'}", work / "debug", work / "mini",
        )  # fmt: skip
        run("strip", "--strip-all", "-R", ".comment", "-o", output, binary)
        run("xz", work / "mini")
        run("objcopy", "--add-section", f".gnu_debugdata={work / 'mini.xz'}", output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output


def _nm(*args: str | os.PathLike[str]) -> list[str]:
    return run("nm", "--format=posix", "--defined-only", *args).splitlines()


def section_range(path: Path, name: str) -> tuple[int, int]:
    """(file offset, size) of section ``name`` of ``path``."""
    with open(path, "rb") as f:
        section = ELFFile(f).get_section_by_name(name)
        if section is None:
            raise LookupError(f"{path} has no section {name}")
        return section["sh_offset"], section["sh_size"]


def build_id_of(path: Path) -> str:
    with open(path, "rb") as f:
        for section in ELFFile(f).iter_sections():
            if isinstance(section, NoteSection):
                for note in section.iter_notes():
                    if note["n_type"] == "NT_GNU_BUILD_ID":
                        return note["n_desc"]
    raise LookupError(f"{path} has no build id")


def nm_functions(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (st_value, st_size) of the FUNC symbols of ``path``, read with pyelftools."""
    found: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for section in elf.iter_sections():
            if not isinstance(section, SymbolTableSection):  # .symtab and .dynsym
                continue
            for sym in section.iter_symbols():
                if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"]:
                    found.setdefault(sym.name, (sym["st_value"], sym["st_size"]))
    return found


def file_offset_of(path: Path, vaddr: int) -> int:
    """The file offset holding virtual address ``vaddr`` of ``path``."""
    with open(path, "rb") as f:
        for segment in ELFFile(f).iter_segments():
            h = segment.header
            if h["p_type"] == "PT_LOAD" and h["p_vaddr"] <= vaddr < h["p_vaddr"] + h["p_filesz"]:
                return vaddr - h["p_vaddr"] + h["p_offset"]
    raise ValueError(f"{vaddr:#x} is in no PT_LOAD of {path}")


class RunningProgram:
    """A test program speaking the protocol of this module's docstring."""

    def __init__(self, argv: list[str], *, timeout: float = 60.0, **popen: Any) -> None:
        self.timeout = timeout
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **popen,
        )
        self.pid = self.process.pid
        self.addresses: dict[str, int] = {}
        self._buffer = b""
        self._wait_ready()

    def send(self, command: str) -> dict[str, int]:
        """Send one command; return the addresses it printed."""
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()
        return self._wait_ready()

    def exit(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"exit\n")
        self.process.stdin.close()
        self.process.wait(timeout=self.timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=self.timeout)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> RunningProgram:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self) -> dict[str, int]:
        printed: dict[str, int] = {}
        deadline = time.monotonic() + self.timeout
        while True:
            line = self._read_line(deadline)
            if line == "ready":
                self.addresses.update(printed)
                return printed
            name, sep, value = line.partition("=")
            if name == "error":
                raise RuntimeError(f"test program failed: {value}")
            if sep:
                printed[name] = int(value, 16)

    def _read_line(self, deadline: float) -> str:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("test program did not answer")
            chunk = os.read(fd, 4096)
            if not chunk:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"test program exited early: {err}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode().strip()


@contextlib.contextmanager
def namespaced_program(
    binary: Path,
    files: Mapping[str, Path] | None = None,
    private_dirs: Sequence[str] = (),
) -> Iterator[tuple[RunningProgram, str]]:
    """Run ``binary`` (a program of this module's protocol) in its own mount namespace.

    The binary is copied onto a tmpfs mounted over a fresh /tmp dir only the
    namespace sees; each of ``private_dirs`` (existing host dirs, e.g.
    /usr/lib/debug) is hidden behind an empty tmpfs there; then each ``files``
    entry (path in the namespace: relative ones beside the binary, ``{dir}``
    standing for the binary's dir -> host file) is copied in. Yields the
    program and its path in the namespace; nothing is left on the host.
    """
    host_dir = tempfile.mkdtemp(prefix="rover-symbols-mntns-", dir="/tmp")
    exe_path = f"{host_dir}/{binary.name}"
    q = shlex.quote
    commands = [f"mount -t tmpfs rover-test {q(host_dir)}", f"cp {q(str(binary))} {q(exe_path)}"]
    commands += [f"mount -t tmpfs rover-test {q(d)}" for d in private_dirs]
    for destination, source in (files or {}).items():
        target = os.path.join(host_dir, destination.format(dir=host_dir))
        commands += [f"mkdir -p {q(os.path.dirname(target))}", f"cp {q(str(source))} {q(target)}"]
    commands.append(f"exec {q(exe_path)}")
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(commands)]
    try:
        with RunningProgram(argv) as program:
            yield program, exe_path
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)


@contextlib.contextmanager
def chrooted_program(binary: Path, root: Path) -> Iterator[RunningProgram]:
    """Run ``binary`` (static, of this module's protocol) as ``/app`` chrooted into ``root``:
    its ``/proc/PID/root`` is ``root``, as a container's is its image."""
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    shutil.copy(binary, root / "app")
    with RunningProgram(["chroot", str(root), "/app"]) as program:
        yield program


def mapping_of(pid: int, address: int) -> tuple[int, int, int, str]:
    """(start, end, offset, path) of the mapping of ``pid`` containing ``address``."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if start <= address < end:
            return start, end, int(fields[2], 16), fields[5] if len(fields) > 5 else ""
    raise LookupError(f"{address:#x} is in no mapping of {pid}")


C_FLAGS = ("-O1", "-falign-functions=1", "-fno-toplevel-reorder")
LIB_FLAGS = ("-O1", "-shared", "-fPIC")
_RECIPES = {
    "c_pie": lambda out: compile_c(C_PROGRAM, out, *C_FLAGS, "-fPIE", "-pie", "-ldl"),
    "c_nopie": lambda out: compile_c(C_PROGRAM, out, *C_FLAGS, "-fno-pie", "-no-pie", "-ldl"),
    # Needs no file but itself: runs chrooted into an otherwise empty directory.
    "c_static": lambda out: compile_c(C_PROGRAM, out, *C_FLAGS, "-static", "-ldl"),
    "libspin.so": lambda out: compile_c(C_LIBRARY, out, *LIB_FLAGS),
    # One R+X segment from file offset 0: maps lists the r-xp mapping first.
    "libflat.so": lambda out: compile_c(C_LIBRARY, out, *LIB_FLAGS, "-Wl,-z,noseparate-code"),
    "cpp": lambda out: compile_c(CPP_PROGRAM, out, "-O1", "-Wno-pmf-conversions", compiler="g++"),
    "rust_legacy": lambda out: compile_rust(RUST_PROGRAM, out),
    "rust_v0": lambda out: compile_rust(RUST_PROGRAM, out, "-C", "symbol-mangling-version=v0"),
    "go": lambda out: compile_go(GO_PROGRAM, out),
    "go_pie": lambda out: compile_go(GO_PROGRAM, out, "-buildmode=pie"),
    "go_stripped": lambda out: compile_go(GO_PROGRAM, out, "-ldflags=-s -w"),
    "go_pie_stripped": lambda out: compile_go(GO_PROGRAM, out, "-buildmode=pie", "-ldflags=-s -w"),
}
_SOURCES_DIGEST = hashlib.sha256(
    "\0".join((C_PROGRAM, C_LIBRARY, CPP_PROGRAM, RUST_PROGRAM, GO_PROGRAM, *C_FLAGS)).encode()
).hexdigest()[:12]
BIN_DIR = Path(tempfile.gettempdir()) / f"rover-symbols-tests-{_SOURCES_DIGEST}"


def build(name: str) -> Path:
    """The test binary ``name`` (see ``_RECIPES``), built once and kept across runs."""
    output = BIN_DIR / name
    if output.exists():
        return output
    BIN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BIN_DIR) as tmp:
        built = _RECIPES[name](Path(tmp) / name)
        os.replace(built, output)
    return output


PCLNTAB_MAGIC = {116: 0xFFFFFFFA, 118: 0xFFFFFFF0, 120: 0xFFFFFFF1}


def make_pclntab(
    layout: int,
    functions: Sequence[tuple[int, str]],
    end: int,
    *,
    ptr_size: int = 8,
    little_endian: bool = True,
    text_start: int = 0,
) -> bytes:
    """A synthetic Go pclntab (layouts 116, 118, 120: see rover/symbols/gopclntab.py).

    ``functions`` are (entry address, name), sorted; ``end`` ends the last one.
    Go 1.18+ entries are written as offsets from ``text_start``.
    """
    order = "<" if little_endian else ">"
    word = "I" if ptr_size == 4 else "Q"
    field_format = "I" if layout >= 118 else word
    field = struct.calcsize(field_format)
    words = 7 if layout == 116 else 8
    header_size = 8 + words * ptr_size
    names = b""
    name_offsets = []
    for _, name in functions:
        name_offsets.append(len(names))
        names += name.encode() + b"\0"
    names_offset = header_size
    tables_offset = names_offset + len(names)  # cu, file and pc tables: empty here
    pcln = (tables_offset + 7) & ~7
    base = text_start if layout >= 118 else 0
    functab = b""
    records = b""
    records_start = (2 * len(functions) + 1) * field
    for (entry, _), name_offset in zip(functions, name_offsets, strict=True):
        record_offset = records_start + len(records)
        functab += struct.pack(order + field_format * 2, entry - base, record_offset)
        records += struct.pack(order + field_format + "i4x", entry - base, name_offset)
    functab += struct.pack(order + field_format, end - base)
    offsets = [names_offset, tables_offset, tables_offset, tables_offset, pcln]
    values = [len(functions), 0] + ([text_start] if layout >= 118 else []) + offsets
    header = struct.pack(order + "IBBBB", PCLNTAB_MAGIC[layout], 0, 0, 1, ptr_size)
    header += struct.pack(order + word * words, *values)
    body = header + names
    return body + bytes(pcln - len(body)) + functab + records
