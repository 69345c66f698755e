"""A BPF map held by file descriptor, read and written as ctypes values.

The surface is the part of bcc's table objects the engines use (``m[key]``,
``m[key] = value``, ``del m[key]``, iteration, ``Leaf``), so code written for one
reads the same with the other, but nothing here loads bcc: the agent holds maps
the compile helper handed over (``rover.bpf.compile_helper``). Key and value
types come from the programs' headers (``rover.bpf.contract``) and are checked
against the sizes the kernel reports, so a layout mismatch is an error at load,
not garbage at run time.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from typing import Any

from rover.bpf import syscall


class MapLayoutError(Exception):
    """A map's key or value type does not match the map the kernel holds."""


def cpu_list(name: str) -> list[int]:
    """The CPUs of ``/sys/devices/system/cpu/<name>`` ("possible", "online"): "0-3,5"."""
    text = open(f"/sys/devices/system/cpu/{name}").read().strip()  # noqa: SIM115
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


@functools.cache
def possible_cpus() -> int:
    """CPUs a per-CPU map keeps a value for."""
    return len(cpu_list("possible"))


def raw_type(size: int) -> type:
    return ctypes.c_uint8 * size


class BpfMap:
    """One map: its ``fd`` (owned by whoever made it: ``LoadedProgram``), its kernel info,
    its ctypes types."""

    def __init__(
        self, name: str, fd: int, key_type: type | None = None, leaf_type: type | None = None
    ) -> None:
        self.name = name
        self._fd = fd
        self.info = syscall.map_info(fd)
        self.Key: Any = key_type or raw_type(self.info.key_size)
        self.Leaf: Any = leaf_type or raw_type(self.info.value_size)
        self.percpu = self.info.type in syscall.BPF_MAP_TYPES_PERCPU
        if ctypes.sizeof(self.Key) != self.info.key_size:
            raise MapLayoutError(
                f"map {name}: key is {self.info.key_size} bytes in the kernel, "
                f"{ctypes.sizeof(self.Key)} in {self.Key.__name__}"
            )
        if ctypes.sizeof(self.Leaf) != self.info.value_size:
            raise MapLayoutError(
                f"map {name}: value is {self.info.value_size} bytes in the kernel, "
                f"{ctypes.sizeof(self.Leaf)} in {self.Leaf.__name__}"
            )
        # Per-CPU values come as one slot per possible CPU, each rounded up to 8 bytes.
        self._slot = (self.info.value_size + 7) // 8 * 8
        self._value_bytes = self._slot * possible_cpus() if self.percpu else self.info.value_size

    def get_fd(self) -> int:
        return self._fd

    # -- elements ----------------------------------------------------------
    def _key(self, key: Any) -> Any:
        return key if isinstance(key, self.Key) else self.Key(key)

    def _decode(self, raw: bytes) -> Any:
        """A value read from the kernel: a plain int for an integer leaf, else the ctypes
        value; a list of one per CPU for per-CPU maps."""
        if not self.percpu:
            return _plain(self.Leaf.from_buffer_copy(raw))
        leaf = self.Leaf
        return [_plain(leaf.from_buffer_copy(raw, i * self._slot)) for i in range(possible_cpus())]

    def get(self, key: Any) -> Any:
        """The value of ``key`` (a list of one per CPU for per-CPU maps); None if absent."""
        buffer = ctypes.create_string_buffer(self._value_bytes)
        if not syscall.lookup(self._fd, self._key(key), buffer):
            return None
        return self._decode(buffer.raw)

    def __contains__(self, key: Any) -> bool:
        return self.get(key) is not None

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.percpu:
            raise TypeError(f"map {self.name}: per-CPU values are written by the kernel only")
        leaf = value if isinstance(value, self.Leaf) else self.Leaf(value)
        syscall.update(self._fd, bytes(self._key(key)), bytes(leaf))

    def __delitem__(self, key: Any) -> None:
        try:
            syscall.delete(self._fd, bytes(self._key(key)))
        except FileNotFoundError:
            raise KeyError(key) from None

    # -- iteration ---------------------------------------------------------
    def _raw_keys(self) -> Iterator[bytes]:
        key: bytes | None = None
        while (key := syscall.next_key(self._fd, key, self.info.key_size)) is not None:
            yield key

    def __iter__(self) -> Iterator[Any]:
        for raw in self._raw_keys():
            yield self.Key.from_buffer_copy(raw)

    def keys(self) -> list[Any]:
        return list(self)

    def items(self) -> list[tuple[Any, Any]]:
        pairs = []
        for key in self:
            value = self.get(key)
            if value is not None:  # deleted meanwhile
                pairs.append((key, value))
        return pairs

    def values(self) -> list[Any]:
        return [value for _, value in self.items()]

    def __len__(self) -> int:
        return sum(1 for _ in self._raw_keys())

    def clear(self) -> None:
        for key in self.keys():
            with contextlib.suppress(KeyError):
                del self[key]

    def take_all(self) -> list[tuple[Any, Any]]:
        """Read and delete every element (a map no program writes any more)."""
        try:
            raw = syscall.lookup_and_delete_batch(
                self._fd, self.info.key_size, self._value_bytes, self.info.max_entries
            )
        except OSError:  # no batch operations before Linux 5.6: one by one
            items = self.items()
            self.clear()
            return items
        return [(self.Key.from_buffer_copy(k), self._decode(v)) for k, v in raw]


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, ctypes._SimpleCData) else value
