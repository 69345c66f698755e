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

import hashlib
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile

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
    env.setdefault("GOCACHE", str(Path.home() / ".cache/go-build"))
    run(find_tool("go"), "build", *flags, "-o", output, workdir / "main.go", env=env)
    return output


def nm_functions(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (st_value, st_size) of the FUNC symbols of ``path``, read with pyelftools."""
    found: dict[str, tuple[int, int]] = {}
    with open(path, "rb") as f:
        elf = ELFFile(f)
        for section in elf.iter_sections():
            if section["sh_type"] not in ("SHT_SYMTAB", "SHT_DYNSYM"):
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

    def __init__(self, argv: list[str], *, timeout: float = 60.0, **popen: object) -> None:
        self.timeout = timeout
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **popen,  # type: ignore[arg-type]
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
    "libspin.so": lambda out: compile_c(C_LIBRARY, out, *LIB_FLAGS),
    # One R+X segment from file offset 0: maps lists the r-xp mapping first.
    "libflat.so": lambda out: compile_c(C_LIBRARY, out, *LIB_FLAGS, "-Wl,-z,noseparate-code"),
    "cpp": lambda out: compile_c(CPP_PROGRAM, out, "-O1", "-Wno-pmf-conversions", compiler="g++"),
    "rust_legacy": lambda out: compile_rust(RUST_PROGRAM, out),
    "rust_v0": lambda out: compile_rust(RUST_PROGRAM, out, "-C", "symbol-mangling-version=v0"),
    "go": lambda out: compile_go(GO_PROGRAM, out),
    "go_pie": lambda out: compile_go(GO_PROGRAM, out, "-buildmode=pie"),
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
