"""A TLS peer for the TLS observation tests (Python's ssl: the system's libssl.so.3,
through ``SSL_read_ex``/``SSL_write_ex``), driven by lines on stdin.

``python tls_peer.py CERT KEY`` imports ssl (libssl is mapped before "ready"), then
answers each command with one line:

- ``serve``: a TLS listener on 127.0.0.1 (a thread accepts, a thread per connection
  answers each request with RESPONSE: one recv and one sendall each), "port N"
- ``keepalive PORT N``: a TLS connection (no certificate check), N exchanges of REQUEST
  (sendall, then recv until the whole RESPONSE came), kept open, "ok LOCALPORT FD"
- ``closeall``: close (TLS shutdown not waited for) the kept connections, "ok"
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading

REQUEST = b"GET /secret HTTP/1.1\r\nHost: localhost\r\nX-Plain: visible\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello, tls!\n"


def serve(cert: str, key: str) -> int:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)

    def answer(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:
            while tls.recv(4096):
                tls.sendall(RESPONSE)

    def loop() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return int(listener.getsockname()[1])


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    kept: list[ssl.SSLSocket] = []
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "serve":
            reply = f"port {serve(cert, key)}"
        elif command == "keepalive":
            raw = socket.create_connection(("127.0.0.1", int(args[0])))
            tls = client.wrap_socket(raw, server_hostname="localhost")
            kept.append(tls)
            for _ in range(int(args[1])):
                tls.sendall(REQUEST)
                got = b""
                while len(got) < len(RESPONSE):
                    got += tls.recv(4096)
            reply = f"ok {tls.getsockname()[1]} {tls.fileno()}"
        elif command == "closeall":
            for tls in kept:
                tls.close()
            kept.clear()
            reply = "ok"
        else:
            reply = f"unknown command {command}"
        print(reply, flush=True)


if __name__ == "__main__":
    main()
