"""TLS to the backend: server verification, mutual TLS, insecure_skip_verify, bad files."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fake_oap import FakeOAP, ServerTLS

from rover.backend import BackendClient, BackendConfigError, BackendUnavailable
from rover.config import BackendConfig

AGENT = "agent-tls"


@dataclass(frozen=True)
class Issued:
    cert: bytes
    key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


class CertificateAuthority:
    def __init__(self, name: str) -> None:
        self.key = _key()
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            _builder(name, self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, common_name: str, dns: list[str], ips: list[str], client: bool = False
    ) -> Issued:
        key = _key()
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = _builder(common_name, self.name, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@dataclass
class Pki:
    dir: Path
    ca: CertificateAuthority
    server: Issued  # valid for localhost / 127.0.0.1
    other_host: Issued  # valid only for oap.example.com
    client: Issued

    def write(self, name: str, data: bytes) -> str:
        path = self.dir / name
        path.write_bytes(data)
        return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca = CertificateAuthority("rover test CA")
    return Pki(
        dir=tmp_path_factory.mktemp("pki"),
        ca=ca,
        server=ca.issue("localhost", ["localhost"], ["127.0.0.1"]),
        other_host=ca.issue("oap.example.com", ["oap.example.com"], []),
        client=ca.issue("rover-agent", [], [], client=True),
    )


@pytest.fixture
def servers() -> Iterator[list[FakeOAP]]:
    started: list[FakeOAP] = []
    yield started
    for oap in started:
        oap.stop()


def _serve(servers: list[FakeOAP], tls: ServerTLS) -> FakeOAP:
    oap = FakeOAP(tls=tls).start()
    servers.append(oap)
    return oap


def _query(config: BackendConfig) -> None:
    with BackendClient(config) as client:
        client.query_tasks(AGENT, 0)


def test_tls_with_ca_verifies_the_server(pki: Pki, servers: list[FakeOAP]) -> None:
    oap = _serve(servers, ServerTLS(pki.server.cert, pki.server.key))
    ca = pki.write("ca.pem", pki.ca.pem)
    _query(BackendConfig(addr=f"localhost:{oap.port}", enable_tls=True, ca_pem_path=ca))
    _query(BackendConfig(addr=oap.addr, enable_tls=True, ca_pem_path=ca))  # IP SAN
    assert len(oap.calls_of("queryTasks", ok_only=True)) == 2


def test_tls_rejects_a_server_from_another_ca(pki: Pki, servers: list[FakeOAP]) -> None:
    oap = _serve(servers, ServerTLS(pki.server.cert, pki.server.key))
    stranger = pki.write("stranger-ca.pem", CertificateAuthority("stranger").pem)
    config = BackendConfig(addr=oap.addr, enable_tls=True, ca_pem_path=stranger, call_timeout=3)
    with pytest.raises(BackendUnavailable) as err:
        _query(config)
    assert err.value.code == "UNAVAILABLE"
    assert not oap.calls


def test_tls_rejects_a_certificate_for_another_host(pki: Pki, servers: list[FakeOAP]) -> None:
    oap = _serve(servers, ServerTLS(pki.other_host.cert, pki.other_host.key))
    ca = pki.write("ca.pem", pki.ca.pem)
    with pytest.raises(BackendUnavailable):
        _query(BackendConfig(addr=oap.addr, enable_tls=True, ca_pem_path=ca, call_timeout=3))


def test_mutual_tls(pki: Pki, servers: list[FakeOAP]) -> None:
    oap = _serve(servers, ServerTLS(pki.server.cert, pki.server.key, client_ca=pki.ca.pem))
    ca = pki.write("ca.pem", pki.ca.pem)
    cert = pki.write("client.pem", pki.client.cert)
    key = pki.write("client.key", pki.client.key)
    base = BackendConfig(addr=oap.addr, enable_tls=True, ca_pem_path=ca, call_timeout=3)

    _query(dataclasses.replace(base, client_pem_path=cert, client_key_path=key))
    assert len(oap.calls_of("queryTasks")) == 1

    # without a client certificate (a lone cert path is ignored, as in Rover) the server refuses
    with pytest.raises(BackendUnavailable):
        _query(dataclasses.replace(base, client_pem_path=cert))
    assert len(oap.calls_of("queryTasks")) == 1


def test_skip_verify_accepts_a_certificate_for_another_host(
    pki: Pki, servers: list[FakeOAP]
) -> None:
    oap = _serve(servers, ServerTLS(pki.other_host.cert, pki.other_host.key))
    # no CA configured at all: system roots would not trust it either
    _query(BackendConfig(addr=oap.addr, enable_tls=True, insecure_skip_verify=True))
    assert len(oap.calls_of("queryTasks", ok_only=True)) == 1


def test_skip_verify_with_mutual_tls(pki: Pki, servers: list[FakeOAP]) -> None:
    tls = ServerTLS(pki.other_host.cert, pki.other_host.key, client_ca=pki.ca.pem)
    oap = _serve(servers, tls)
    config = BackendConfig(
        addr=oap.addr,
        enable_tls=True,
        insecure_skip_verify=True,
        client_pem_path=pki.write("client.pem", pki.client.cert),
        client_key_path=pki.write("client.key", pki.client.key),
    )
    _query(config)
    assert len(oap.calls_of("queryTasks", ok_only=True)) == 1


def test_skip_verify_with_the_backend_down_fails_as_unavailable(pki: Pki) -> None:
    oap = FakeOAP().start()
    addr = oap.addr
    oap.stop()
    config = BackendConfig(addr=addr, enable_tls=True, insecure_skip_verify=True, call_timeout=2)
    with BackendClient(config) as client, pytest.raises(BackendUnavailable) as err:
        client.query_tasks(AGENT, 0)
    assert err.value.code == "UNAVAILABLE"
    assert "server certificate" in err.value.reason


def test_skip_verify_follows_a_server_that_changes_its_certificate(
    pki: Pki, servers: list[FakeOAP]
) -> None:
    oap = _serve(servers, ServerTLS(pki.other_host.cert, pki.other_host.key))
    config = BackendConfig(addr=oap.addr, enable_tls=True, insecure_skip_verify=True)
    with BackendClient(config) as client:
        client.query_tasks(AGENT, 0)
        oap.stop()
        oap.tls = ServerTLS(pki.server.cert, pki.server.key)
        oap.start()
        for _ in range(3):  # the first call after the change fails and re-pins
            try:
                client.query_tasks(AGENT, 0)
                break
            except BackendUnavailable:
                continue
        else:
            pytest.fail("never reconnected after the certificate changed")


@pytest.mark.parametrize("field", ["ca_pem_path", "client_pem_path", "client_key_path"])
def test_missing_or_empty_tls_files_fail_at_start(pki: Pki, tmp_path: Path, field: str) -> None:
    paths: dict[str, Any] = {
        "ca_pem_path": pki.write("ca.pem", pki.ca.pem),
        "client_pem_path": pki.write("client.pem", pki.client.cert),
        "client_key_path": pki.write("client.key", pki.client.key),
    }
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    for bad, words in ((str(tmp_path / "missing.pem"), "cannot be read"), (str(empty), "empty")):
        config = BackendConfig(enable_tls=True, **{**paths, field: bad})
        with pytest.raises(BackendConfigError, match=words) as err:
            BackendClient(config)
        assert field in str(err.value)


def test_tls_files_are_not_read_without_tls(tmp_path: Path) -> None:
    config = BackendConfig(ca_pem_path=str(tmp_path / "missing.pem"))
    BackendClient(config).close()
