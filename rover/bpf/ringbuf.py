"""A BPF ring buffer (``BPF_MAP_TYPE_RINGBUF``) read by its map fd, in pure Python.

The layout is the kernel's (and what libbpf's ``ringbuf.c`` reads): the map's fd is
mmapped as one consumer page (read-write: user space writes its position there),
then one producer page and the data area, read-only, the data area mapped twice in a
row so that a record wrapping around the end reads as one contiguous slice. Each
record starts with an 8-byte header: a u32 length whose bit 31 says the producer
is still writing it (BUSY: stop there) and bit 30 that it was discarded, then the
page offset (unused here); records are 8-byte aligned. Readiness is epoll on the fd.
"""

from __future__ import annotations

import contextlib
import mmap
import select
import struct
from collections.abc import Callable

from rover.bpf import syscall

BPF_MAP_TYPE_RINGBUF = 27
BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingBuffer:
    """The ring buffer of map ``fd`` (not owned: close the map elsewhere, after
    :meth:`close`)."""

    def __init__(self, fd: int) -> None:
        info = syscall.map_info(fd)
        if info.type != BPF_MAP_TYPE_RINGBUF:
            raise ValueError(f"map fd {fd} is not a ring buffer (type {info.type})")
        self.size = info.max_entries
        self._mask = self.size - 1
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(
            fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        try:
            self._producer = mmap.mmap(
                fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._consumer.close()
            raise
        self._data = memoryview(self._producer)[page:]
        self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)

    def consume(
        self, callback: Callable[[memoryview], object] | None = None, limit: int | None = None
    ) -> list[bytes]:
        """The records ready now, in order, at most ``limit`` of them (a busy producer
        would otherwise keep the reader here for good): passed to ``callback`` (a
        memoryview valid only during the call) or, without one, returned as bytes."""
        out: list[bytes] = []
        left = -1 if limit is None else limit
        consumer = _U64.unpack_from(self._consumer, 0)[0]
        data, mask = self._data, self._mask
        while True:
            producer = _U64.unpack_from(self._producer, 0)[0]
            if consumer >= producer:
                break
            while consumer < producer:
                if left == 0:
                    _U64.pack_into(self._consumer, 0, consumer)
                    return out
                left -= 1
                start = consumer & mask
                length = _U32.unpack_from(data, start)[0]
                if length & BUSY:
                    _U64.pack_into(self._consumer, 0, consumer)
                    return out
                size = length & ~(BUSY | DISCARD)
                if not length & DISCARD:
                    record = data[start + HEADER : start + HEADER + size]
                    if callback is None:
                        out.append(bytes(record))
                    else:
                        callback(record)
                    record.release()
                consumer += (size + HEADER + 7) & ~7
                _U64.pack_into(self._consumer, 0, consumer)
        return out

    def poll(
        self,
        timeout_ms: int,
        callback: Callable[[memoryview], object] | None = None,
        limit: int | None = None,
    ) -> list[bytes]:
        """Wait up to ``timeout_ms`` (-1: forever) for records, then :meth:`consume`."""
        if not self.available():
            with contextlib.suppress(InterruptedError):
                self._epoll.poll(timeout_ms / 1000 if timeout_ms >= 0 else -1)
        return self.consume(callback, limit)

    def available(self) -> int:
        """Bytes written and not consumed yet."""
        consumer = _U64.unpack_from(self._consumer, 0)[0]
        producer = _U64.unpack_from(self._producer, 0)[0]
        return max(0, producer - consumer)

    def fileno(self) -> int:
        """An fd that is readable when records are ready (the epoll set)."""
        return self._epoll.fileno()

    def close(self) -> None:
        self._epoll.close()
        self._data.release()
        self._producer.close()
        self._consumer.close()
