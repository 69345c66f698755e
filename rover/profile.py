"""The in-memory profile model shared by every producer and consumer.

BPF output becomes a :class:`Profile`; exporters and the uploader consume it.
Frames are names, never addresses: symbolization happens before this model.

Stacks are stored **root first** (outermost caller at index 0, leaf last), the
order folded stacks and flame graphs use. Each stack carries one integer per
value type (like pprof's sample types): on-CPU profiles count samples and
CPU nanoseconds, off-CPU profiles count switches and blocked nanoseconds.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field


class ProfileType(enum.Enum):
    ON_CPU = "on-cpu"
    OFF_CPU = "off-cpu"


class FrameKind(enum.Enum):
    USER = "user"
    KERNEL = "kernel"


@dataclass(frozen=True, slots=True)
class Frame:
    """One symbolized frame.

    ``name`` is the demangled function name, or ``module+0xoffset`` when no
    symbol covers the address (``symbolized`` is then False). ``module`` is the
    file (basename) or ``[kernel]`` / a kernel module name; ``file`` its full
    path as the process saw it and ``build_id`` its GNU build id (hex), when
    known (pprof mappings use them).
    """

    name: str
    kind: FrameKind = FrameKind.USER
    module: str = ""
    symbolized: bool = True
    file: str = ""
    build_id: str = ""

    @property
    def is_kernel(self) -> bool:
        return self.kind is FrameKind.KERNEL


@dataclass(frozen=True, slots=True)
class ValueType:
    """What one column of sample values means, e.g. ("samples", "count")."""

    type: str
    unit: str


ON_CPU_VALUES = (ValueType("samples", "count"), ValueType("cpu", "nanoseconds"))
OFF_CPU_VALUES = (ValueType("switches", "count"), ValueType("off_cpu", "nanoseconds"))


@dataclass(frozen=True, slots=True)
class StackKey:
    """A distinct stack of one process: frames root first."""

    pid: int
    frames: tuple[Frame, ...]


@dataclass
class ProcessInfo:
    pid: int
    name: str
    cmdline: str = ""


@dataclass
class Profile:
    """Aggregated stacks of one profiling run (or one flush interval)."""

    type: ProfileType
    value_types: tuple[ValueType, ...]
    samples: dict[StackKey, list[int]] = field(default_factory=dict)
    processes: dict[int, ProcessInfo] = field(default_factory=dict)
    start_time_ns: int = 0
    duration_ns: int = 0
    # sampling period in nanoseconds (on-CPU), 0 when not applicable
    period_ns: int = 0
    # counters a person should see: drops, collisions, unsymbolized frames...
    counters: dict[str, int] = field(default_factory=dict)

    @classmethod
    def new(cls, profile_type: ProfileType, **kwargs: object) -> Profile:
        values = ON_CPU_VALUES if profile_type is ProfileType.ON_CPU else OFF_CPU_VALUES
        return cls(type=profile_type, value_types=values, **kwargs)  # type: ignore[arg-type]

    def add(self, pid: int, frames: tuple[Frame, ...], values: list[int]) -> None:
        """Add ``values`` to the stack ``frames`` (root first) of ``pid``."""
        key = StackKey(pid, frames)
        current = self.samples.get(key)
        if current is None:
            self.samples[key] = list(values)
        else:
            for i, v in enumerate(values):
                current[i] += v

    def merge(self, other: Profile) -> None:
        """Add every stack of ``other`` (same type) into this profile."""
        if other.type is not self.type:
            raise ValueError(f"cannot merge {other.type.value} into {self.type.value}")
        for key, values in other.samples.items():
            self.add(key.pid, key.frames, values)
        self.processes.update(other.processes)
        for name, n in other.counters.items():
            self.count(name, n)
        self.duration_ns += other.duration_ns

    def split_by_process(self) -> dict[int, Profile]:
        """One profile per process that has samples: same type, times and period; the
        counters stay here (they are the whole profile's)."""
        parts: dict[int, Profile] = {}
        for key, values in self.samples.items():
            part = parts.get(key.pid)
            if part is None:
                info = self.processes.get(key.pid)
                part = parts[key.pid] = Profile(
                    type=self.type,
                    value_types=self.value_types,
                    processes={key.pid: info} if info is not None else {},
                    start_time_ns=self.start_time_ns,
                    duration_ns=self.duration_ns,
                    period_ns=self.period_ns,
                )
            part.samples[key] = list(values)
        return parts

    def count(self, counter: str, n: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + n

    def value_index(self, value_type: str) -> int:
        for i, vt in enumerate(self.value_types):
            if vt.type == value_type:
                return i
        names = ", ".join(vt.type for vt in self.value_types)
        raise KeyError(f"profile has no value {value_type!r} (it has {names})")

    def total(self, index: int = 0) -> int:
        return sum(v[index] for v in self.samples.values())

    def __iter__(self) -> Iterator[tuple[StackKey, list[int]]]:
        return iter(self.samples.items())

    def __len__(self) -> int:
        return len(self.samples)
