"""`rover check`: can profiling work on this machine, and if not, why."""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rover.bpf.headers import HeaderSearch, KernelHeaders, KernelHeadersNotFound
from rover.bpf.tracefs import ensure_tracefs
from rover.capabilities import capability_needs, effective_capabilities
from rover.hostfs import HostFS
from rover.profile import ProfileType

if TYPE_CHECKING:
    from rover.network.observer import NetworkObserver


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    required: bool = True

    def line(self) -> str:
        mark = "ok" if self.ok else ("FAIL" if self.required else "warn")
        return f"[{mark:>4}] {self.name:<16} {self.detail}"


def run_checks(
    hostfs: HostFS | None = None, kernel_headers: str | None = None
) -> list[CheckResult]:
    hostfs = hostfs or HostFS()
    results = [_kernel(), _btf(hostfs), _perf_events(), _tracepoints(), *_privileges()]
    search = HeaderSearch(hostfs=hostfs, configured_dir=kernel_headers)
    headers: KernelHeaders | None = None
    try:
        headers = search.find()
        results.append(CheckResult("kernel headers", True, headers.describe_for_user()))
    except KernelHeadersNotFound as exc:
        results.append(CheckResult("kernel headers", False, str(exc)))
    for profile_type in ProfileType:
        results += _can_profile(profile_type, headers, hostfs)
    results += network_checks(headers)
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
            "(mount -t tracefs tracefs /sys/kernel/tracing; in a container, mount the "
            "host's /sys/kernel/tracing, or give CAP_SYS_ADMIN so rover can mount it)",
        )
    return CheckResult("tracepoints", True, f"sched:sched_switch at {found}")


def _privileges() -> list[CheckResult]:
    caps = effective_capabilities(Path("/proc/self/status").read_text())
    names = ", ".join(sorted(caps)) or "none"
    overview = CheckResult("privileges", True, f"uid {os.geteuid()}, capabilities: {names}")
    kallsyms = _kallsyms_settings()
    results = [overview]
    for need in capability_needs(_kernel_version(), _memlock_hard_limit(), kallsyms):
        present, detail = need.describe(caps)
        results.append(CheckResult("privileges", present, detail, required=need.required))
    if kallsyms[0] >= 2:
        detail = "kernel.kptr_restrict=2 hides kernel addresses from everyone: kernel frames "
        detail += "show as [kernel]+0xaddress (sysctl kernel.kptr_restrict=1 and CAP_SYSLOG fix it)"
        results.append(CheckResult("kernel symbols", False, detail, required=False))
    return results


def _kernel_version() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _memlock_hard_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]


def _kallsyms_settings() -> tuple[int, int]:
    """(kernel.kptr_restrict, kernel.perf_event_paranoid); missing files read as 0 and 2."""
    values = []
    for name, default in (("kptr_restrict", 0), ("perf_event_paranoid", 2)):
        try:
            values.append(int(Path(f"/proc/sys/kernel/{name}").read_text().strip()))
        except (OSError, ValueError):
            values.append(default)
    return values[0], values[1]


def _can_profile(
    profile_type: ProfileType, headers: KernelHeaders | None, hostfs: HostFS
) -> list[CheckResult]:
    """The program of ``profile_type`` compiled, loaded, attached and closed (frame-pointer
    unwinding), and whether the kernel's verifier accepts its CFI stack walk (``eh_frame``
    unwinding, and ``auto`` for code without frame pointers)."""
    from rover.bpf.engine import EngineConfig
    from rover.bpf.loader import BPFLoadError
    from rover.unwind.modes import EH_FRAME, make_engine

    name = f"{profile_type.value} profiling"
    walk = f"{name} (eh_frame)"
    if headers is None:
        return [
            CheckResult(name, False, "cannot run without kernel headers"),
            CheckResult(walk, False, "cannot run without kernel headers"),
        ]
    try:
        engine = make_engine(profile_type, headers, EngineConfig(), EH_FRAME, hostfs)
    except BPFLoadError as exc:
        reason = str(exc).splitlines()[0]
        return [CheckResult(name, False, reason), CheckResult(walk, False, reason)]
    walks = engine.walks_cfi
    compiled_here = engine.compiled_here
    engine.close()
    where = (
        "in a helper process"
        if compiled_here is None
        else f"in this process, not by the helper, which {compiled_here}"
    )
    loaded = CheckResult(name, True, f"program compiled ({where}), loaded and attached")
    if walks:
        return [loaded, CheckResult(walk, True, "CFI stack walk verified by the kernel")]
    refused = (
        "this kernel's verifier refuses the CFI stack walk: only frame_pointer unwinding "
        "works (--unwind frame_pointer, profiling.unwind: frame_pointer): code built "
        "without frame pointers loses its callers"
    )
    return [loaded, CheckResult(walk, False, refused, required=False)]


UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe/type")


def network_checks(headers: KernelHeaders | None) -> list[CheckResult]:
    """Network profiling: its tracepoints (syscalls mandatory; sock/tcp optional), its
    program compiled, loaded and attached, and uprobes (TLS plaintext) available."""
    from rover.bpf.loader import BPFLoadError
    from rover.bpf.tracefs import tracepoint_dir
    from rover.network.observer import (
        MANDATORY_TRACEPOINTS,
        OPTIONAL_TRACEPOINTS,
        NetworkObserver,
    )

    ensure_tracefs()
    absent = [f"{c}:{e}" for c, e in MANDATORY_TRACEPOINTS if tracepoint_dir(c, e) is None]
    optional = [f"{c}:{e}" for c, e in OPTIONAL_TRACEPOINTS if tracepoint_dir(c, e) is None]
    if absent:
        detail = f"missing {', '.join(absent)} (needs CONFIG_FTRACE_SYSCALLS)"
        results = [CheckResult("network hooks", False, detail)]
    elif optional:
        detail = f"syscall tracepoints present; missing {', '.join(optional)} (less detail)"
        results = [CheckResult("network hooks", False, detail, required=False)]
    else:
        detail = f"{len(MANDATORY_TRACEPOINTS) + len(OPTIONAL_TRACEPOINTS)} tracepoints present"
        results = [CheckResult("network hooks", True, detail)]
    if headers is None:
        results.append(CheckResult("network profiling", False, "cannot run without kernel headers"))
    elif not absent:
        observer = NetworkObserver(headers)
        try:
            observer.start()
        except BPFLoadError as exc:
            reason = str(exc).splitlines()[0]
            results.append(CheckResult("network profiling", False, reason))
        else:
            detail = (
                f"program compiled, loaded and attached to {len(observer.attached)} tracepoints"
            )
            results.append(CheckResult("network profiling", True, detail))
            results.append(uprobe_check(observer))
        finally:
            observer.close()
    if not any(r.name == "uprobes" for r in results):
        results.append(uprobe_check(None))
    return results


def uprobe_check(observer: NetworkObserver | None) -> CheckResult:
    """Whether TLS plaintext can be read here: the network program's SSL_write probes
    attached for real to the OpenSSL this process maps (Python's ssl module loads the
    system's libssl)."""
    if not UPROBE_PMU.is_file():
        detail = f"{UPROBE_PMU} absent: no TLS plaintext (CONFIG_UPROBE_EVENTS)"
        return CheckResult("uprobes", False, detail, required=False)
    if observer is None:
        detail = "uprobe PMU present; not tried (the network program could not be loaded)"
        return CheckResult("uprobes", False, detail, required=False)
    try:
        import ssl  # noqa: F401 - maps libssl into this process, for the attempt
    except ImportError:
        detail = "uprobe PMU present; not tried (no OpenSSL in this Python to attach to)"
        return CheckResult("uprobes", False, detail, required=False)
    pid = os.getpid()
    observer.add_pid(pid)
    try:
        entries = observer.tls_attachments()
    finally:
        observer.remove_pid(pid)
    if not entries:
        detail = "uprobe PMU present; not tried (no libssl mapped in this process)"
        return CheckResult("uprobes", False, detail, required=False)
    entry = entries[0]
    library = f"{entry.library.path} (OpenSSL {entry.library.version or '?'})"
    if entry.attachments:
        count = len(entry.attachments)
        detail = f"{count} uprobes attached to SSL_read/SSL_write(_ex) of {library}"
        return CheckResult("uprobes", True, detail, required=False)
    detail = f"could not attach to {library}: {entry.error}"
    return CheckResult("uprobes", False, detail, required=False)
