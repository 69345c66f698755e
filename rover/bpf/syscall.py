"""The bpf(2) and perf_event_open(2) calls user space makes itself, on file descriptors.

The agent holds its programs and maps as file descriptors (handed over by the
compile helper, ``rover.bpf.compile_helper``) and never loads bcc, whose
compiler is most of a bcc user's memory. So reading, updating and creating maps
and attaching programs are done here with the system calls directly (``man 2
bpf``, ``man 2 perf_event_open``), by ctypes, as bcc itself does underneath.
Errors are ``OSError`` with the kernel's errno.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from dataclasses import dataclass

_SYS_BPF = 321  # x86-64
_SYS_PERF_EVENT_OPEN = 298
_MAP_CREATE = 0
_MAP_LOOKUP_ELEM = 1
_MAP_UPDATE_ELEM = 2
_MAP_DELETE_ELEM = 3
_MAP_GET_NEXT_KEY = 4
_OBJ_GET_INFO_BY_FD = 15
_MAP_LOOKUP_AND_DELETE_BATCH = 25

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PROG_ARRAY = 3
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_STACK_TRACE = 7
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
BPF_MAP_TYPES_PERCPU = frozenset(
    {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}
)
BPF_ANY = 0
BPF_F_INNER_MAP = 1 << 12  # an inner map whose max_entries may differ from the template's

PERF_TYPE_SOFTWARE = 1
PERF_TYPE_TRACEPOINT = 2
PERF_COUNT_SW_CPU_CLOCK = 0
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_ATTR_FREQ = 1 << 10  # perf_event_attr bit field: sample_freq, not sample_period
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _MapCreate(ctypes.Structure):
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
        ("map_ifindex", ctypes.c_uint32),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class _MapElem(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # next_key for BPF_MAP_GET_NEXT_KEY
        ("flags", ctypes.c_uint64),
    ]


class _MapBatch(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _InfoByFd(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _MapInfo(ctypes.Structure):  # the head of struct bpf_map_info
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


class _PerfEventAttr(ctypes.Structure):  # PERF_ATTR_SIZE_VER5 (112 bytes)
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),  # sample_freq when the freq bit is set
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
        ("wakeup_events", ctypes.c_uint32),
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("reserved", ctypes.c_uint16),
    ]


def _call(number: int, *args: object) -> int:
    result = _libc.syscall(number, *args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(result)


def _bpf(command: int, attr: ctypes.Structure) -> int:
    return _call(_SYS_BPF, command, ctypes.byref(attr), ctypes.sizeof(attr))


@dataclass(frozen=True)
class MapInfo:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    """What the kernel says of map ``fd`` (BPF_OBJ_GET_INFO_BY_FD)."""
    info = _MapInfo()
    attr = _InfoByFd(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    _bpf(_OBJ_GET_INFO_BY_FD, attr)
    return MapInfo(
        info.type,
        info.key_size,
        info.value_size,
        info.max_entries,
        info.map_flags,
        info.name.decode(errors="replace"),
    )


def create_array(name: str, value_size: int, entries: int, flags: int = 0) -> int:
    """A new BPF_MAP_TYPE_ARRAY (u32 keys); its file descriptor."""
    attr = _MapCreate(
        map_type=BPF_MAP_TYPE_ARRAY,
        key_size=4,
        value_size=value_size,
        max_entries=entries,
        map_flags=flags,
        map_name=name.encode()[:15],
    )
    return _bpf(_MAP_CREATE, attr)


def lookup(fd: int, key: ctypes.Array | ctypes.Structure | ctypes._SimpleCData, value) -> bool:  # noqa: ANN001
    """Read ``key`` of map ``fd`` into ``value`` (a ctypes buffer); False when absent."""
    attr = _MapElem(map_fd=fd, key=ctypes.addressof(key), value=ctypes.addressof(value))
    try:
        _bpf(_MAP_LOOKUP_ELEM, attr)
    except FileNotFoundError:
        return False
    return True


def update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    """Set ``key`` to ``value`` in map ``fd`` (both exactly the map's sizes)."""
    key_buffer = ctypes.create_string_buffer(key, len(key))
    value_buffer = ctypes.create_string_buffer(value, len(value))
    attr = _MapElem(
        map_fd=fd,
        key=ctypes.addressof(key_buffer),
        value=ctypes.addressof(value_buffer),
        flags=flags,
    )
    _bpf(_MAP_UPDATE_ELEM, attr)


def delete(fd: int, key: bytes) -> None:
    """Delete ``key`` from map ``fd``; FileNotFoundError (ENOENT) when absent."""
    key_buffer = ctypes.create_string_buffer(key, len(key))
    _bpf(_MAP_DELETE_ELEM, _MapElem(map_fd=fd, key=ctypes.addressof(key_buffer)))


def next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after ``key`` (None: the first) in map ``fd``; None after the last."""
    out = ctypes.create_string_buffer(key_size)
    attr = _MapElem(map_fd=fd, value=ctypes.addressof(out))
    if key is not None:
        key_buffer = ctypes.create_string_buffer(key, key_size)
        attr.key = ctypes.addressof(key_buffer)
    try:
        _bpf(_MAP_GET_NEXT_KEY, attr)
    except FileNotFoundError:
        return None
    return out.raw


def lookup_and_delete_batch(
    fd: int, key_size: int, value_size: int, entries: int
) -> list[tuple[bytes, bytes]]:
    """Read and delete every element of hash map ``fd`` in batches.

    Raises OSError(EINVAL/ENOTSUPP) on kernels without batch operations (before 5.6).
    """
    keys = ctypes.create_string_buffer(key_size * entries)
    values = ctypes.create_string_buffer(value_size * entries)
    token_in, token_out = ctypes.c_uint64(0), ctypes.c_uint64(0)
    result: list[tuple[bytes, bytes]] = []
    first = True
    while True:
        attr = _MapBatch(
            in_batch=0 if first else ctypes.addressof(token_in),
            out_batch=ctypes.addressof(token_out),
            keys=ctypes.addressof(keys),
            values=ctypes.addressof(values),
            count=entries,
            map_fd=fd,
        )
        done = False
        try:
            _bpf(_MAP_LOOKUP_AND_DELETE_BATCH, attr)
        except FileNotFoundError:
            done = True  # the last batch; attr.count still says how many it holds
        raw_keys, raw_values = keys.raw, values.raw
        for i in range(attr.count):
            result.append(
                (
                    raw_keys[i * key_size : (i + 1) * key_size],
                    raw_values[i * value_size : (i + 1) * value_size],
                )
            )
        if done or attr.count == 0:
            return result
        token_in.value = token_out.value
        first = False


def perf_event_open(attr: _PerfEventAttr, pid: int, cpu: int) -> int:
    attr.size = ctypes.sizeof(attr)
    return _call(
        _SYS_PERF_EVENT_OPEN,
        ctypes.byref(attr),
        pid,
        cpu,
        -1,
        ctypes.c_ulong(_PERF_FLAG_FD_CLOEXEC),
    )


def attach_perf_event(event_fd: int, program_fd: int) -> None:
    """Run ``program_fd`` on every sample of ``event_fd``, and start the event."""
    fcntl.ioctl(event_fd, _PERF_EVENT_IOC_SET_BPF, program_fd)
    fcntl.ioctl(event_fd, _PERF_EVENT_IOC_ENABLE, 0)


def cpu_clock_attr(frequency: int) -> _PerfEventAttr:
    """A software CPU-clock event sampling ``frequency`` times a second."""
    return _PerfEventAttr(
        type=PERF_TYPE_SOFTWARE,
        config=PERF_COUNT_SW_CPU_CLOCK,
        sample_period=frequency,
        flags=_PERF_ATTR_FREQ,
    )


UPROBE_PMU = "/sys/bus/event_source/devices/uprobe"


def _pmu_type(pmu: str) -> int:
    with open(f"{pmu}/type") as f:
        return int(f.read())


def _retprobe_bit(pmu: str) -> int:
    """The config bit that makes a uprobe a uretprobe (``format/retprobe``: "config:0")."""
    with open(f"{pmu}/format/retprobe") as f:
        text = f.read().strip()
    field, _, bits = text.partition(":")
    if field != "config" or not bits.isdigit():
        raise OSError(0, f"unexpected uprobe retprobe format {text!r}")
    return int(bits)


def open_uprobe(path: str, offset: int, pid: int, retprobe: bool = False) -> int:
    """A perf event of the uprobe PMU at file offset ``offset`` of ``path`` (a uretprobe
    when ``retprobe``), for process ``pid`` (-1: every process); its file descriptor.

    The kernel resolves ``path`` in this process's mount namespace (``/proc/PID/root/...``
    works). Raises OSError (no uprobe PMU: ENOENT; refused: the kernel's errno).
    """
    path_buffer = ctypes.create_string_buffer(os.fsencode(path))
    config = 1 << _retprobe_bit(UPROBE_PMU) if retprobe else 0
    attr = _PerfEventAttr(
        type=_pmu_type(UPROBE_PMU),
        config=config,
        config1=ctypes.addressof(path_buffer),  # uprobe_path
        config2=offset,  # probe_offset
        sample_period=1,
        wakeup_events=1,
    )
    # one event for the process on any CPU, or for every process (pid -1) "on CPU 0":
    # a probe's BPF program runs wherever the probe is hit either way
    return perf_event_open(attr, pid, -1 if pid >= 0 else 0)


def tracepoint_attr(tracepoint_id: int) -> _PerfEventAttr:
    return _PerfEventAttr(
        type=PERF_TYPE_TRACEPOINT, config=tracepoint_id, sample_period=1, wakeup_events=1
    )
