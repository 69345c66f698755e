"""HTTP/1 parser throughput: parsed requests per second on one core.

Feeds a keep-alive connection's syscalls (a typical small GET received, a small
JSON response sent, one syscall each) to one Http1Parser and prints the rate of
completed exchanges. Run manually:
    .venv/bin/python bench/bench_http1.py [exchanges]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this tree's rover

from rover.network.http1 import Http1Parser  # noqa: E402
from rover.network.model import DataSyscall, Direction  # noqa: E402

REQUEST = (
    b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\n"
    b"Host: orders.shop.svc.cluster.local:8080\r\n"
    b"User-Agent: Go-http-client/1.1\r\n"
    b"Accept: application/json\r\n"
    b"sw8: 1-MmE5MGQ0-MmE5MGQ1-1-c2hvcA==-aW5zdA==-L29yZGVycw==-b3JkZXJzOjgwODA=\r\n"
    b"Accept-Encoding: gzip\r\n\r\n"
)
BODY = b'{"id":12345,"status":"shipped","items":[{"sku":"A-1","qty":2}]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
) + BODY


def syscalls(n: int) -> list[DataSyscall]:
    out = []
    t = 0
    for i in range(n):
        for k, (direction, payload) in enumerate(
            ((Direction.RECV, REQUEST), (Direction.SEND, RESPONSE))
        ):
            out.append(
                DataSyscall(
                    conn_id=1,
                    pid=1,
                    fd=3,
                    tid=1,
                    data_id=2 * i + k,
                    syscall="Read" if direction is Direction.RECV else "Write",
                    direction=direction,
                    start_ns=t,
                    end_ns=t + 20_000,
                    size=len(payload),
                    payload=payload,
                )
            )
            t += 100_000
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    feed = syscalls(n)
    best = 0.0
    for _ in range(3):
        parser = Http1Parser(1, 1)
        done = 0
        start = time.perf_counter()
        for sc in feed:
            done += len(parser.feed(sc))
        elapsed = time.perf_counter() - start
        assert done == n, (done, parser.counters)
        best = max(best, n / elapsed)
    print(
        f"HTTP/1 parsing in user space: {best:,.0f} requests/s per core "
        f"(request + response parsed; best of 3 runs of {n:,} keep-alive exchanges)"
    )


if __name__ == "__main__":
    main()
