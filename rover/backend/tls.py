"""TLS credentials for the backend channel (spec section 5).

``insecure_skip_verify`` with grpcio: grpcio cannot switch certificate
verification off, so the agent *pins* what the server presents instead. It
opens a plain TLS connection with Python's ``ssl`` (no verification, the client
certificate offered when configured), takes the server's leaf certificate and
gives it to gRPC as the only trusted root, with ``grpc.ssl_target_name_override``
set to a name that certificate holds (first DNS SAN, else IP SAN, else CN). The
chain and the host name are thereby not checked against anything the agent
knows, which is what skip-verify means; the connection is still encrypted and
stays bound to that one certificate. Limits: the certificate must still be
within its validity dates, and a server that changes its certificate is
re-pinned only after a call fails (see :class:`rover.backend.channel.BackendChannel`).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from rover.backend.errors import BackendConfigError
from rover.config import BackendConfig


@dataclass(frozen=True)
class PinnedServer:
    """The certificate a server presented and a name it is valid for."""

    pem: bytes
    name: str


def read_tls_file(path: str, key: str) -> bytes:
    """Contents of a PEM file named by config ``key``; it must exist and be non-empty."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise BackendConfigError(
            f"backend {key} {path!r} cannot be read: {e.strerror or e}; "
            "fix the path or disable TLS (enable_tls: false)"
        ) from e
    if not data.strip():
        raise BackendConfigError(f"backend {key} {path!r} is empty; it must hold a PEM file")
    return data


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:11800``) -> (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise BackendConfigError(f"backend addr {addr!r} must be host:port")
    return host.strip("[]"), int(port)


def client_identity(config: BackendConfig) -> tuple[bytes, bytes] | None:
    """(certificate chain, private key), only when both paths are set (as Rover does)."""
    if not (config.client_pem_path and config.client_key_path):
        return None
    cert = read_tls_file(config.client_pem_path, "client_pem_path")
    key = read_tls_file(config.client_key_path, "client_key_path")
    return cert, key


def channel_credentials(
    config: BackendConfig, pinned: PinnedServer | None = None
) -> tuple[grpc.ChannelCredentials, list[tuple[str, str]]]:
    """gRPC credentials and extra channel options for a TLS channel.

    ``pinned`` (skip-verify only) replaces the configured trust roots.
    """
    roots = read_tls_file(config.ca_pem_path, "ca_pem_path") if config.ca_pem_path else None
    identity = client_identity(config)
    options: list[tuple[str, str]] = []
    if pinned is not None:
        roots = pinned.pem
        options.append(("grpc.ssl_target_name_override", pinned.name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=roots,
        private_key=identity[1] if identity else None,
        certificate_chain=identity[0] if identity else None,
    )
    return credentials, options


def fetch_server_certificate(config: BackendConfig, timeout: float) -> PinnedServer:
    """Handshake with the server without verifying it; return what it presented.

    Raises ``OSError`` (``ssl.SSLError`` included) when the server cannot be
    reached or the handshake fails.
    """
    host, port = split_addr(config.addr)
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    _offer_client_certificate(unverified, config)
    der = _peer_certificate(unverified, host, port, timeout)
    if der is None:
        raise ssl.SSLError(f"{config.addr} presented no certificate")
    pem = ssl.DER_cert_to_PEM_cert(der).encode()

    # The stdlib only decodes a certificate it verified: verify it against itself.
    self_trusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    self_trusting.check_hostname = False
    self_trusting.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    self_trusting.load_verify_locations(cadata=pem.decode())
    _offer_client_certificate(self_trusting, config)
    decoded = _peer_certificate_fields(self_trusting, host, port, timeout)
    return PinnedServer(pem=pem, name=certificate_name(decoded, fallback=host))


def certificate_name(decoded: dict, fallback: str) -> str:
    """A host name the certificate is valid for, from ``SSLSocket.getpeercert()`` fields."""
    sans = decoded.get("subjectAltName", ())
    for kind, value in sans:
        if kind == "DNS":
            # a wildcard matches any one label in its place
            return value.replace("*", "skip-verify", 1) if value.startswith("*.") else value
    for kind, value in sans:
        if kind == "IP Address":
            return str(ipaddress.ip_address(value.strip()))
    for rdn in decoded.get("subject", ()):
        for attr, value in rdn:
            if attr == "commonName":
                return value
    return fallback


def _offer_client_certificate(context: ssl.SSLContext, config: BackendConfig) -> None:
    # a server requiring mutual TLS aborts a handshake without a client certificate
    if config.client_pem_path and config.client_key_path:
        context.load_cert_chain(config.client_pem_path, config.client_key_path)


def _peer_certificate(
    context: ssl.SSLContext, host: str, port: int, timeout: float
) -> bytes | None:
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        return tls.getpeercert(binary_form=True)


def _peer_certificate_fields(context: ssl.SSLContext, host: str, port: int, timeout: float) -> dict:
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        return tls.getpeercert() or {}
