"""TLS settings of the xDS listener."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path


def _listener_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    return context


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A TLS 1.2+ server context speaking HTTP/2; with `client_ca`, client certificates
    signed by it are required (mutual TLS), so each stream's peer certificate names the
    proxy."""
    context = _listener_context()
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def reload_server_certificate(context: ssl.SSLContext, chain_pem: str, key_pem: str) -> None:
    """Make `context` present `chain_pem` (leaf first, then any intermediates) with `key_pem`.

    Used on the listener's live context when the mesh CA re-issues the server
    certificate: OpenSSL copies the certificate into each connection as it is accepted,
    so new handshakes present the new chain and open connections are left alone. The
    chain replaces the previous one. Keep the key type (OpenSSL holds one certificate
    per key type, and a leftover of another type could still be chosen).

    `ssl` loads certificate chains only from files, so they pass through a private
    temporary directory that is removed before this returns.
    """
    with tempfile.TemporaryDirectory(prefix="meshcp-xds-") as scratch:
        cert, key = Path(scratch, "cert.pem"), Path(scratch, "key.pem")
        cert.write_text(chain_pem)
        key.touch(0o600)
        key.write_text(key_pem)
        context.load_cert_chain(cert, key)


def server_context_from_pem(chain_pem: str, key_pem: str, client_ca_pem: str) -> ssl.SSLContext:
    """`server_context` for material held in memory (issued by the mesh CA): mutual TLS,
    client certificates checked against `client_ca_pem`."""
    context = _listener_context()
    reload_server_certificate(context, chain_pem, key_pem)
    context.load_verify_locations(cadata=client_ca_pem)
    context.verify_mode = ssl.CERT_REQUIRED
    return context
