"""TLS plaintext for real: Python's ssl (the system's libssl.so.3, SSL_read_ex and
SSL_write_ex) between two watched processes, uprobes attached by the observer.

Needs root, a working bcc and uprobes (fails, never skips, without them).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from processes import RunningProcess
from tls_peer import REQUEST, RESPONSE

from rover.bpf.headers import HeaderSearch
from rover.hostfs import HostFS
from rover.network.model import ConnectionStats, DataSyscall, Direction, Protocol, Role
from rover.network.observer import NetworkObserver
from rover.network.tls import PROBED, find_tls_libraries
from rover.symbols.elf_file import ElfImage
from rover.symbols.elf_table import defined_functions

pytestmark = pytest.mark.bpf

HERE = Path(__file__).resolve().parent
TLS_PEER = str(HERE / "tls_peer.py")
PLAIN_PEER = str(HERE / "network_peer.py")
LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def observer() -> Iterator[NetworkObserver]:
    with NetworkObserver(HeaderSearch().find()) as obs:
        assert obs.tls, "no uprobe PMU: TLS plaintext cannot be tested"
        yield obs


@pytest.fixture
def tls_peers(spawn, certificate) -> Callable[[], RunningProcess]:
    cert, key = certificate
    return lambda: spawn([sys.executable, TLS_PEER, str(cert), str(key)])


def command(peer: RunningProcess, line: str) -> list[str]:
    peer.send_line(line)
    reply = peer.read_line(15)
    assert reply is not None and reply.startswith(("ok", "port")), (reply, peer.stderr_text())
    return reply.split()[1:]


def gather(observer: NetworkObserver, done: Callable[[list], bool], timeout: float = 10.0):
    events: list = []
    deadline = time.monotonic() + timeout
    while not done(events):
        if time.monotonic() > deadline:
            raise AssertionError(f"the expected events did not come: {events}")
        events += observer.poll(50)
    return events


def only(items: list[ConnectionStats]) -> ConnectionStats:
    assert len(items) == 1, items
    return items[0]


def test_symbol_offsets_of_the_system_libssl() -> None:
    with open(LIBSSL, "rb") as f:
        image = ElfImage(f)
        values = defined_functions(image, [*PROBED, "no_such_function"])
        assert set(values) == set(PROBED)
        nm = subprocess.run(["nm", "-D", LIBSSL], capture_output=True, text=True, check=True)
        exported = {
            parts[2].split("@")[0]: int(parts[0], 16)
            for parts in (line.split() for line in nm.stdout.splitlines())
            if len(parts) == 3 and parts[1] == "T"
        }
        assert {name: exported[name] for name in PROBED} == values
        # libssl's text segment is mapped at its file offset: the offsets are the addresses
        assert all(image.file_offset(v) == v for v in values.values())
        assert image.file_offset(1 << 40) is None
    # the executable of nginx only imports them
    with open("/usr/sbin/nginx", "rb") as f:
        assert defined_functions(ElfImage(f), list(PROBED)) == {}


def test_plaintext_of_tls_exchanges_on_both_ends(observer, tls_peers) -> None:
    server, client = tls_peers(), tls_peers()
    before = observer.counters()
    for peer in (server, client):
        observer.add_pid(peer.pid)
        (entry,) = [e for e in observer.tls_attachments() if e.pid == peer.pid]
        assert entry.library.path.endswith("/libssl.so.3") and not entry.library.static
        assert entry.library.version.startswith("3.0.") and not entry.error
        assert len(entry.attachments) == 2 * len(PROBED)  # entry and return of each
        # once per (process, library): a second look attaches nothing more
        assert observer.attach_tls(peer.pid)[0].attachments == entry.attachments
    try:
        port = int(command(server, "serve")[0])
        exchanges = 3
        command(client, f"keepalive {port} {exchanges}")

        def complete(events: list) -> bool:
            return sum(isinstance(e, DataSyscall) for e in events) >= 4 * exchanges

        events = gather(observer, complete)
        data = [e for e in events if isinstance(e, DataSyscall)]
        # every data event is plaintext from the TLS library: no ciphertext syscall events
        assert {e.syscall for e in data} == {"SSL_write", "SSL_read"}
        assert all(e.ssl for e in data)
        for pid, sent, received in ((client.pid, REQUEST, RESPONSE),
                                    (server.pid, RESPONSE, REQUEST)):  # fmt: skip
            mine = sorted((e for e in data if e.pid == pid), key=lambda e: e.data_id)
            assert len({e.conn_id for e in mine}) == 1
            assert [e.data_id for e in mine] == list(range(2 * exchanges))
            first = "SSL_write" if pid == client.pid else "SSL_read"
            for i, event in enumerate(mine):
                writes = (event.syscall == "SSL_write") == ((i % 2 == 0) == (first == "SSL_write"))
                assert writes, [e.syscall for e in mine]
                expected = sent if event.syscall == "SSL_write" else received
                direction = Direction.SEND if event.syscall == "SSL_write" else Direction.RECV
                assert (event.payload, event.size, event.direction) == (
                    expected,
                    len(expected),
                    direction,
                )
                assert event.start_ns <= event.end_ns
        # layer-4 counters are the ciphertext of the syscalls (handshake, record overhead)
        client_conn = only([c for c in observer.connections() if c.pid == client.pid])
        server_conn = only([c for c in observer.connections() if c.pid == server.pid])
        for conn, role in ((client_conn, Role.CLIENT), (server_conn, Role.SERVER)):
            assert conn.ssl and conn.protocol is Protocol.HTTP1 and conn.role is role
        plain_up, plain_down = exchanges * len(REQUEST), exchanges * len(RESPONSE)
        assert client_conn.write_bytes > plain_up + 200  # + ClientHello and record overhead
        assert server_conn.write_bytes > plain_down + 1000  # + certificate
        assert client_conn.write_bytes == server_conn.read_bytes
        assert server_conn.write_bytes == client_conn.read_bytes
        assert client_conn.write_count >= exchanges and server_conn.read_count >= exchanges
        after = observer.counters()
        assert after["tls_calls"] - before["tls_calls"] == 4 * exchanges
        assert after["tls_syscalls"] > before["tls_syscalls"]
        assert after["tls_unknown_connection"] == before["tls_unknown_connection"]
        assert after["tls_libraries_attached"] - before["tls_libraries_attached"] == 2
        assert after["tls_attach_failed"] == after["tls_unsupported_libraries"] == 0
        command(client, "closeall")
    finally:
        for peer in (server, client):
            observer.remove_pid(peer.pid)
    assert not [e for e in observer.tls_attachments() if e.pid in (server.pid, client.pid)]


def test_process_without_openssl_gets_no_probes(observer, spawn) -> None:
    peer = spawn([sys.executable, PLAIN_PEER])  # socket only: Python maps no libssl
    assert find_tls_libraries(peer.pid, HostFS()) == []
    before = observer.counters()
    observer.add_pid(peer.pid)
    try:
        assert [e for e in observer.tls_attachments() if e.pid == peer.pid] == []
    finally:
        observer.remove_pid(peer.pid)
    after = observer.counters()
    assert after["tls_libraries_attached"] == before["tls_libraries_attached"]
    assert after["tls_attach_failed"] == before["tls_attach_failed"]


def test_library_loaded_after_watching_is_probed_on_refresh(observer, spawn) -> None:
    peer = spawn([sys.executable, "-c", "print('ready', flush=True); input(); import ssl; "
                  "print('ok', flush=True); input()"])  # fmt: skip
    observer.add_pid(peer.pid)
    try:
        assert [e for e in observer.tls_attachments() if e.pid == peer.pid] == []
        peer.send_line("import")
        assert peer.read_line(15) == "ok"
        observer.refresh_tls()
        (entry,) = [e for e in observer.tls_attachments() if e.pid == peer.pid]
        assert len(entry.attachments) == 2 * len(PROBED)
    finally:
        observer.remove_pid(peer.pid)
