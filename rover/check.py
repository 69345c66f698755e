"""`rover check`: can profiling work on this machine, and if not, why."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

from rover.bpf.headers import HeaderSearch, KernelHeaders, KernelHeadersNotFound
from rover.bpf.tracefs import ensure_tracefs
from rover.hostfs import HostFS
from rover.profile import ProfileType

# Capability numbers from linux/capability.h.
CAPABILITIES = {
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    required: bool = True

    def line(self) -> str:
        mark = "ok" if self.ok else ("FAIL" if self.required else "warn")
        return f"[{mark:>4}] {self.name:<16} {self.detail}"


def effective_capabilities(status_text: str) -> set[str]:
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            bits = int(line.split()[1], 16)
            return {name for name, bit in CAPABILITIES.items() if bits >> bit & 1}
    return set()


def run_checks(
    hostfs: HostFS | None = None, kernel_headers: str | None = None
) -> list[CheckResult]:
    hostfs = hostfs or HostFS()
    results = [_kernel(), _btf(hostfs), _perf_events(), _tracepoints(), _privileges()]
    search = HeaderSearch(hostfs=hostfs, configured_dir=kernel_headers)
    headers: KernelHeaders | None = None
    try:
        headers = search.find()
        results.append(CheckResult("kernel headers", True, headers.describe()))
    except KernelHeadersNotFound as exc:
        results.append(CheckResult("kernel headers", False, str(exc)))
    for profile_type in ProfileType:
        results.append(_can_profile(profile_type, headers))
    return results


def _kernel() -> CheckResult:
    release = platform.release()
    major, minor = (int(x) for x in release.split(".")[:2])
    ok = (major, minor) >= (4, 18)
    detail = f"Linux {release}" + ("" if ok else " (4.18 or newer is needed)")
    return CheckResult("kernel", ok, detail)


def _btf(hostfs: HostFS) -> CheckResult:
    path = hostfs.host_path("/sys/kernel/btf/vmlinux")
    ok = path.is_file()
    return CheckResult("BTF", ok, str(path) if ok else f"{path} absent", required=False)


def _perf_events() -> CheckResult:
    path = Path("/proc/sys/kernel/perf_event_paranoid")
    if not path.is_file():
        return CheckResult(
            "perf events", False, "the kernel has no perf events (CONFIG_PERF_EVENTS)"
        )
    paranoid = int(path.read_text().strip())
    return CheckResult("perf events", True, f"available (perf_event_paranoid={paranoid})")


def _tracepoints() -> CheckResult:
    found = ensure_tracefs()
    if found is None:
        return CheckResult(
            "tracepoints",
            False,
            "sched:sched_switch not found: mount tracefs "
            "(mount -t tracefs tracefs /sys/kernel/tracing)",
        )
    return CheckResult("tracepoints", True, f"sched:sched_switch at {found}")


def _privileges() -> CheckResult:
    caps = effective_capabilities(Path("/proc/self/status").read_text())
    uid = os.geteuid()
    can_bpf = "CAP_SYS_ADMIN" in caps or {"CAP_BPF", "CAP_PERFMON"} <= caps
    names = ", ".join(sorted(caps)) or "none"
    detail = f"uid {uid}, capabilities: {names}"
    if not can_bpf:
        detail += " (needs CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN on kernels before 5.8)"
    return CheckResult("privileges", can_bpf, detail)


def _can_profile(profile_type: ProfileType, headers: KernelHeaders | None) -> CheckResult:
    from rover.bpf.engine import ProfilerEngine
    from rover.bpf.loader import BPFLoadError

    name = f"{profile_type.value} profiling"
    if headers is None:
        return CheckResult(name, False, "cannot run without kernel headers")
    try:
        engine = ProfilerEngine(profile_type, headers)
    except BPFLoadError as exc:
        return CheckResult(name, False, str(exc).splitlines()[0])
    engine.close()
    return CheckResult(name, True, "program compiled, loaded and attached")
