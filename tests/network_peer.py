"""A TCP peer for the network observer's tests, driven by lines on stdin.

Prints "ready", then answers each command with one line:

- ``serve``: listen on 127.0.0.1 (a thread accepts and answers), "port N"
- ``open PORT``: connect, no traffic yet, "ok LOCALPORT FD"
- ``use N``: N HTTP exchanges on the connection of ``open`` (kept open), "ok"
- ``keepalive PORT N``: connect, N HTTP exchanges (sendall/recv), kept open, "ok LOCALPORT FD"
- ``short PORT N``: N connections of one exchange each, the i-th by way i % 4 of
  (send/recv, sendmsg/recvmsg, write/read, writev/readv), closed, "ok LOCALPORT ..."
- ``raw PORT N``: a connection of N non-HTTP exchanges, closed, "ok LOCALPORT FD"
- ``reuse PORT``: two connections one after the other (one exchange each), "ok FD FD"
- ``file PATH``: a file written three times and closed, "ok FD"
- ``unix PATH``: an AF_UNIX listener and connection (socket, connect, accept) and a
  socketpair, each carrying a request and its answer, "ok FD FD FD FD"
- ``closeall``: close the connections kept open, "ok"

The server answers an HTTP request (starts with a method) with RESPONSE, anything
else with b"PONG" + the bytes after the first four; one recv and one sendall per
request, so counts are exact.
"""

from __future__ import annotations

import os
import socket
import sys
import threading

REQUEST = b"GET /item HTTP/1.1\r\nHost: test\r\n\r\n"
REQUEST_PARTS = (b"GET /item HTTP/1.1\r\n", b"Host: test\r\n\r\n")
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
RAW = b"PING-0123456789abcdef"


def answer(data: bytes) -> bytes:
    return RESPONSE if data.startswith(b"GET ") else b"PONG" + data[4:]


def serve_one(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(answer(data))


def serve() -> int:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def loop() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return int(listener.getsockname()[1])


def exchange(sock: socket.socket, way: int = 0, request: bytes = REQUEST) -> None:
    expected = len(answer(request))
    fd = sock.fileno()
    if way == 0:
        sock.sendall(request)
        got = sock.recv(4096)
    elif way == 1:
        sock.sendmsg(list(REQUEST_PARTS))
        got, _, _, _ = sock.recvmsg(4096)
    elif way == 2:
        os.write(fd, request)
        got = os.read(fd, 4096)
    else:
        os.writev(fd, list(REQUEST_PARTS))
        buffer = bytearray(4096)
        got = bytes(buffer[: os.readv(fd, [buffer])])
    if len(got) != expected:
        raise SystemExit(f"short answer: {got!r}")


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port))


def main() -> None:
    kept: list[socket.socket] = []
    opened: socket.socket | None = None
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "serve":
            reply = f"port {serve()}"
        elif command == "open":
            opened = connect(int(args[0]))
            kept.append(opened)
            reply = f"ok {opened.getsockname()[1]} {opened.fileno()}"
        elif command == "use":
            assert opened is not None
            for _ in range(int(args[0])):
                exchange(opened)
            reply = "ok"
        elif command == "keepalive":
            sock = connect(int(args[0]))
            kept.append(sock)
            for _ in range(int(args[1])):
                exchange(sock)
            reply = f"ok {sock.getsockname()[1]} {sock.fileno()}"
        elif command == "short":
            ports = []
            for i in range(int(args[1])):
                with connect(int(args[0])) as sock:
                    ports.append(str(sock.getsockname()[1]))
                    exchange(sock, i % 4)
            reply = "ok " + " ".join(ports)
        elif command == "raw":
            with connect(int(args[0])) as sock:
                for _ in range(int(args[1])):
                    exchange(sock, 0, RAW)
                reply = f"ok {sock.getsockname()[1]} {sock.fileno()}"
        elif command == "reuse":
            fds = []
            for _ in range(2):
                with connect(int(args[0])) as sock:
                    fds.append(str(sock.fileno()))
                    exchange(sock)
            reply = "ok " + " ".join(fds)
        elif command == "file":
            with open(args[0], "wb", buffering=0) as f:
                for _ in range(3):
                    f.write(REQUEST)
                reply = f"ok {f.fileno()}"
        elif command == "unix":
            reply = "ok " + " ".join(str(fd) for fd in unix(args[0]))
        elif command == "closeall":
            for sock in kept:
                sock.close()
            kept.clear()
            reply = "ok"
        else:
            reply = f"unknown command {command}"
        print(reply, flush=True)


def unix(path: str) -> list[int]:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    client = socket.socket(socket.AF_UNIX)
    client.connect(path)
    server, _ = listener.accept()
    left, right = socket.socketpair()
    fds = [client.fileno(), server.fileno(), left.fileno(), right.fileno()]
    for a, b in ((client, server), (left, right)):
        a.sendall(REQUEST)
        b.recv(4096)
        b.sendall(RESPONSE)
        a.recv(4096)
    for sock in (client, server, left, right, listener):
        sock.close()
    os.unlink(path)
    return fds


if __name__ == "__main__":
    main()
