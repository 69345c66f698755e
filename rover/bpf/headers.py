"""Find kernel headers for bcc and tell bcc where they are.

Order (first usable wins):
  1. the host's own headers: ``/lib/modules/$(uname -r)/{build,source}``, read
     through the host-root mapping when the agent runs in a container;
  2. a directory configured by the user;
  3. headers shipped alongside the agent (the container image carries common
     distribution kernels' headers), preferring the closest kernel version.

Debian splits headers into an arch tree (``linux-headers-X-amd64``: generated
files and ``.config``) and a common tree (``linux-headers-X-common``: sources).
bcc's ``BCC_KERNEL_SOURCE`` accepts only one tree, so the source tree is given
there and the arch tree's include directories are passed as extra ``-I`` flags.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from rover.hostfs import HostFS

log = logging.getLogger(__name__)

DEFAULT_SHIPPED_DIR = "/usr/share/rover/kernel-headers"
# Set by an install elsewhere (scripts/install.sh --headers-dir) to where it put them.
SHIPPED_DIR_ENV = "ROVER_SHIPPED_KERNEL_HEADERS"
_ARCH = {"x86_64": "x86", "aarch64": "arm64"}


def shipped_headers_dir() -> str:
    """``$ROVER_SHIPPED_KERNEL_HEADERS`` when set, else /usr/share/rover/kernel-headers."""
    return os.environ.get(SHIPPED_DIR_ENV) or DEFAULT_SHIPPED_DIR


class KernelHeadersNotFound(Exception):
    """No usable kernel headers; the message lists what was tried."""


# Why headers of another kernel version compile working programs: what bpf/*.c reads of
# the kernel is the stable pt_regs layout, perf-event context and tracepoint fields (bcc
# takes those from the running kernel's tracefs), never a struct that changes per version.
MISMATCH_IS_FINE = (
    "usable: rover's BPF programs read no kernel struct whose layout changes between versions"
)


# What a header tree must have to be used: bcc's own prologue and what bpf/*.c include.
# An incomplete tree is refused here: bcc 0.26 crashes (SIGSEGV in its AST visitor)
# rather than report the compile errors a missing header causes.
REQUIRED_SOURCE_FILES = (
    "include/linux/kconfig.h",
    "include/linux/types.h",
    "include/linux/sched.h",
    "include/uapi/linux/ptrace.h",
    "include/uapi/linux/bpf_perf_event.h",
)
REQUIRED_BUILD_FILES = ("include/generated/autoconf.h",)


@dataclass(frozen=True)
class KernelHeaders:
    """A usable header set: ``source`` has include/linux, ``build`` the generated files.

    ``release`` is the headers' kernel release ("" if the tree does not say), ``running``
    the release of the kernel they are used for.
    """

    source: Path
    build: Path
    origin: str  # "host", "configured" or "shipped"
    release: str = ""
    running: str = ""

    @property
    def matches_running(self) -> bool | None:
        """Whether the headers are the running kernel's; None when either is unknown."""
        if not self.release or not self.running:
            return None
        return self.release == self.running

    def describe(self) -> str:
        """Where the headers came from (host, configured, shipped), where they are, and
        whether their version is the running kernel's."""
        where = str(self.source) if self.source == self.build else f"{self.build} + {self.source}"
        version = f" {self.release}" if self.release else " of unknown version"
        text = f"{self.origin} headers{version} at {where}"
        if self.matches_running:
            return text + ", matching the running kernel"
        if self.matches_running is False:
            return text + f", which do not match the running kernel {self.running}"
        return text + (f" (running kernel {self.running})" if self.running else "")

    def describe_for_user(self) -> str:
        """:meth:`describe`, plus why headers of another version still work."""
        if self.matches_running:
            return self.describe()
        return f"{self.describe()}; {MISMATCH_IS_FINE}"

    def bcc_environment(self) -> dict[str, str]:
        return {"BCC_KERNEL_SOURCE": str(self.source)}

    def bcc_cflags(self, machine: str | None = None) -> list[str]:
        """Extra include paths for the arch tree when it is not the source tree."""
        if self.source == self.build:
            return []
        arch = _ARCH.get(machine or platform.machine(), "x86")
        b = self.build
        dirs = [
            b / "arch" / arch / "include" / "generated" / "uapi",
            b / "arch" / arch / "include" / "generated",
            b / "include",
            b / "include" / "generated" / "uapi",
        ]
        return [f"-I{d}" for d in dirs]


@dataclass
class HeaderSearch:
    """Where to look, and a record of what was tried (for error messages and `rover check`)."""

    hostfs: HostFS = field(default_factory=HostFS)
    configured_dir: str | None = None
    shipped_dir: str = field(default_factory=shipped_headers_dir)
    release: str = field(default_factory=platform.release)
    tried: list[str] = field(default_factory=list)

    def find(self) -> KernelHeaders:
        self.tried = []
        for candidate in self._candidates():
            if candidate is not None:
                log.info("using %s", candidate.describe())
                return candidate
        hint = (
            "install the kernel headers of the running kernel "
            f"(Debian/Ubuntu: apt-get install linux-headers-{self.release}; "
            f"RHEL/Fedora: dnf install kernel-devel-{self.release}), "
            "or point profiling.kernel_headers / --kernel-headers at a headers directory"
        )
        raise KernelHeadersNotFound(
            "no usable kernel headers found; tried: " + "; ".join(self.tried) + ". Next: " + hint
        )

    def _candidates(self):
        yield self._host()
        if self.configured_dir:
            yield self._from_dir(Path(self.configured_dir), "configured")
        yield self._shipped()

    def _host(self) -> KernelHeaders | None:
        moddir = Path("/lib/modules") / self.release
        build = _resolve_in_root(self.hostfs.root, moddir / "build")
        source = _resolve_in_root(self.hostfs.root, moddir / "source")
        shown = self.hostfs.host_path(moddir)
        if build is None:
            self.tried.append(f"{shown}/build (missing)")
            return None
        if source is None or not (source / "include" / "linux" / "kconfig.h").is_file():
            source = build
        return self._check(source, build, "host", f"{shown}/{{build,source}}")

    def _from_dir(self, root: Path, origin: str) -> KernelHeaders | None:
        """A directory that is a header tree, or holds an arch + common pair."""
        if not root.is_dir():
            self.tried.append(f"{origin} {root} (not a directory)")
            return None
        if (root / "include").is_dir():
            build = root
            source = _debian_common_sibling(root) or root
            return self._check(source, build, origin, f"{origin} {root}")
        found = self._best_in(root, origin)
        if found is None:
            self.tried.append(f"{origin} {root} (no header tree inside)")
        return found

    def _shipped(self) -> KernelHeaders | None:
        root = Path(self.shipped_dir)
        if not root.is_dir():
            self.tried.append(f"shipped {root} (absent)")
            return None
        found = self._best_in(root, "shipped")
        if found is None:
            self.tried.append(f"shipped {root} (no header tree inside)")
        return found

    def _best_in(self, root: Path, origin: str) -> KernelHeaders | None:
        """Among ``linux-headers-*`` trees in ``root``, the one closest to the running kernel."""
        trees = [
            p
            for p in sorted(root.iterdir())
            if p.is_dir() and (p / "include").is_dir() and not _is_debian_common(p)
        ]
        trees.sort(key=lambda p: _version_distance(self.release, p.name))
        for tree in trees:
            source = _debian_common_sibling(tree) or tree
            found = self._check(source, tree, origin, f"{origin} {tree}")
            if found is not None:
                return found
        return None

    def _check(self, source: Path, build: Path, origin: str, label: str) -> KernelHeaders | None:
        missing = [
            str(p)
            for p in (
                *(source / name for name in REQUIRED_SOURCE_FILES),
                *(build / name for name in REQUIRED_BUILD_FILES),
            )
            if not p.is_file()
        ]
        if missing:
            self.tried.append(f"{label} (missing {', '.join(missing)})")
            return None
        return KernelHeaders(source, build, origin, _tree_release(build), self.release)


def _resolve_in_root(root: Path, path: Path, depth: int = 0) -> Path | None:
    """Resolve ``path`` (absolute on the host) with symlinks interpreted inside ``root``."""
    if depth > 16:
        return None
    current = root
    parts = path.parts[1:]
    for i, part in enumerate(parts):
        candidate = current / part
        if candidate.is_symlink():
            target = Path(os.readlink(candidate))
            rest = Path(*parts[i + 1 :]) if i + 1 < len(parts) else Path()
            if target.is_absolute():
                return _resolve_in_root(root, target / rest, depth + 1)
            host_parent = Path("/") / current.relative_to(root)
            joined = Path(os.path.normpath(host_parent / target / rest))
            return _resolve_in_root(root, joined, depth + 1)
        current = candidate
    return current if current.exists() else None


def _is_debian_common(tree: Path) -> bool:
    return tree.name.endswith("-common") or "-common-" in tree.name


def _debian_common_sibling(tree: Path) -> Path | None:
    """``linux-headers-6.1.0-13-amd64`` -> its ``linux-headers-6.1.0-13-common``."""
    name = tree.name
    m = re.match(
        r"(linux-headers-.+?)-(amd64|arm64|cloud-amd64|cloud-arm64|rt-amd64|rt-arm64)$", name
    )
    if not m:
        return None
    for suffix in ("-common", "-common-rt"):
        sibling = tree.parent / (m.group(1) + suffix)
        if (sibling / "include" / "linux" / "kconfig.h").is_file():
            return sibling
    return None


def _tree_release(build: Path) -> str:
    release_file = build / "include" / "config" / "kernel.release"
    if release_file.is_file():
        return release_file.read_text().strip()
    uts = build / "include" / "generated" / "utsrelease.h"
    if uts.is_file():
        m = re.search(r'"(.+)"', uts.read_text())
        if m:
            return m.group(1)
    return ""


def _version_tuple(text: str) -> tuple[int, ...]:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return (0, 0, 0)
    return tuple(int(g or 0) for g in m.groups())


def _version_distance(release: str, name: str) -> tuple[int, int, int]:
    want, have = _version_tuple(release), _version_tuple(name)
    return (abs(want[0] - have[0]), abs(want[1] - have[1]), -have[2])
