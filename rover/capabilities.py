"""Which Linux capabilities the agent needs on this kernel, and what for.

Found by running `rover check` and `rover profile` under reduced capability sets
(tests/test_deploy_capabilities.py); docs/deploy.md has the table per kernel.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

# Capability numbers from linux/capability.h.
CAPABILITIES = {
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYSLOG": 34,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# CAP_BPF and CAP_PERFMON exist from 5.8; before, CAP_SYS_ADMIN covers both.
SPLIT_BPF_CAPS_SINCE = (5, 8)
# From 5.11 BPF memory is charged to the memory cgroup, not to RLIMIT_MEMLOCK.
MEMCG_BPF_ACCOUNTING_SINCE = (5, 11)
# From 5.9 /proc/PID/map_files/ opens with CAP_CHECKPOINT_RESTORE (before: CAP_SYS_ADMIN).
CHECKPOINT_RESTORE_SINCE = (5, 9)


def effective_capabilities(status_text: str) -> set[str]:
    """The capabilities of CAPABILITIES set in ``CapEff`` of a /proc/PID/status text."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            bits = int(line.split()[1], 16)
            return {name for name, bit in CAPABILITIES.items() if bits >> bit & 1}
    return set()


@dataclass(frozen=True)
class CapabilityNeed:
    """One capability the agent uses; any of ``satisfied_by`` grants it."""

    name: str
    purpose: str
    required: bool  # False: profiling works, but something is lost (the purpose says what)
    satisfied_by: tuple[str, ...] = ()

    def met(self, caps: set[str]) -> bool:
        return any(c in caps for c in (self.name, *self.satisfied_by))

    def describe(self, caps: set[str]) -> tuple[bool, str]:
        """(present, one-line detail) for `rover check`."""
        if self.met(caps):
            return True, f"{self.name}: {self.purpose}"
        return False, f"missing {self.name}: needed to {self.purpose}"


def capability_needs(
    kernel: tuple[int, int], memlock_hard_limit: int, kallsyms: tuple[int, int]
) -> list[CapabilityNeed]:
    """What this kernel asks of the agent.

    ``memlock_hard_limit``: RLIMIT_MEMLOCK's hard limit (bcc raises the soft one);
    ``kallsyms``: (kernel.kptr_restrict, kernel.perf_event_paranoid).
    """
    needs: list[CapabilityNeed] = []
    if kernel < SPLIT_BPF_CAPS_SINCE:
        needs.append(
            CapabilityNeed(
                "CAP_SYS_ADMIN",
                "load BPF programs and attach perf events (kernels before 5.8 have no "
                "CAP_BPF or CAP_PERFMON)",
                required=True,
            )
        )
    else:
        needs += [
            CapabilityNeed(
                "CAP_BPF",
                "load BPF programs and create their maps",
                required=True,
                satisfied_by=("CAP_SYS_ADMIN",),
            ),
            CapabilityNeed(
                "CAP_PERFMON",
                "attach perf events (on-CPU sampling, the sched_switch tracepoint)",
                required=True,
                satisfied_by=("CAP_SYS_ADMIN",),
            ),
        ]
    if kernel < MEMCG_BPF_ACCOUNTING_SINCE and memlock_hard_limit != resource.RLIM_INFINITY:
        needs.append(
            CapabilityNeed(
                "CAP_SYS_RESOURCE",
                "raise the locked-memory limit for BPF maps (kernels before 5.11 charge "
                f"them to RLIMIT_MEMLOCK, whose hard limit here is {memlock_hard_limit} bytes)",
                required=True,
            )
        )
    needs.append(
        CapabilityNeed(
            "CAP_SYS_PTRACE",
            "read /proc/PID/maps, exe and root of processes of other users or with more "
            "capabilities (symbols, process discovery)",
            required=True,
        )
    )
    needs.append(
        CapabilityNeed(
            "CAP_DAC_READ_SEARCH",
            "read files other users keep private and /proc/PID/mem ([vdso] symbols); "
            "without it such frames show as module+offset",
            required=False,
            satisfied_by=("CAP_DAC_OVERRIDE",),
        )
    )
    if kernel >= CHECKPOINT_RESTORE_SINCE:
        needs.append(
            CapabilityNeed(
                "CAP_CHECKPOINT_RESTORE",
                "open /proc/PID/map_files/ (executables and libraries deleted while running, "
                "e.g. after a package upgrade); without it their frames show as module+offset",
                required=False,
                satisfied_by=("CAP_SYS_ADMIN",),
            )
        )
    kptr_restrict, paranoid = kallsyms
    if kptr_restrict == 1 or (kptr_restrict == 0 and paranoid > 1):
        needs.append(
            CapabilityNeed(
                "CAP_SYSLOG",
                "read kernel symbol addresses in /proc/kallsyms (kernel.kptr_restrict="
                f"{kptr_restrict}, perf_event_paranoid={paranoid}); without it kernel "
                "frames show as [kernel]+0xaddress",
                required=False,
            )
        )
    return needs
