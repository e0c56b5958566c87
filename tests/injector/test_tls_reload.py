"""The serving certificate is replaced on disk; the next handshake presents the new one."""

from __future__ import annotations

import asyncio
import os
import ssl
from pathlib import Path

from cryptography import x509

from meshcp.certs import InternalCA
from meshcp.certs.issuance import xds_server_request
from tests.injector.conftest import SERVER_NAME, RunningInjector, write_pair


async def presented(port: int, tls: ssl.SSLContext, server_name: str | None = SERVER_NAME) -> int:
    """The serial number of the certificate the server presents in a fresh handshake."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls, server_hostname=server_name)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number
    finally:
        writer.close()
        await writer.wait_closed()


def no_verification() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def replace_atomically(directory: Path, ca: InternalCA, target: tuple[Path, Path]) -> int:
    """What kubelet does with a Secret volume: new files, then one rename each."""
    issued = await ca.issue(xds_server_request([SERVER_NAME, "localhost"]))
    staged = write_pair(directory, issued, name="staged")
    for new, old in zip(staged, target, strict=True):
        os.replace(new, old)
    return issued.serial_number


async def test_next_handshake_presents_the_new_certificate(
    injector: RunningInjector, client_tls: ssl.SSLContext, ca: InternalCA, serving_files: tuple[Path, Path]
) -> None:
    first = await presented(injector.port, client_tls)
    assert await presented(injector.port, client_tls) == first
    second = await replace_atomically(serving_files[0].parent, ca, serving_files)
    assert await presented(injector.port, client_tls) == second
    # Clients that send no SNI (a webhook configured by IP address) see it too.
    assert await presented(injector.port, no_verification(), server_name=None) == second
    third = await replace_atomically(serving_files[0].parent, ca, serving_files)
    assert await presented(injector.port, no_verification(), server_name=None) == third


async def test_a_half_written_pair_keeps_the_old_certificate(
    injector: RunningInjector, client_tls: ssl.SSLContext, ca: InternalCA, serving_files: tuple[Path, Path]
) -> None:
    cert, key = serving_files
    first = await presented(injector.port, client_tls)
    issued = await ca.issue(xds_server_request([SERVER_NAME]))
    staged = write_pair(cert.parent, issued, name="staged")
    os.replace(staged[0], cert)  # the certificate arrives before its key
    assert await presented(injector.port, client_tls) == first
    assert await presented(injector.port, client_tls) == first  # reported once, not per handshake
    os.replace(staged[1], key)
    assert await presented(injector.port, client_tls) == issued.serial_number
    exposition = injector.metrics.exposition().decode()
    assert 'meshcp_injector_tls_reloads_total{result="failed"} 1.0' in exposition
    assert 'meshcp_injector_tls_reloads_total{result="ok"} 1.0' in exposition
