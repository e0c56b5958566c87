"""Two real Envoys talking mutual TLS (`tests.support.envoy_pair`): requests cross with the
certificates SDS delivers, and each side accepts only the identities it should."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from meshcp.certs import pem as pem_util
from meshcp.certs.issuance import workload_request
from meshcp.compile import naming
from tests.support import eventually
from tests.support.envoy import REAL_ENVOY
from tests.support.envoy_pair import (
    BOOKBUYER,
    BOOKSTORE,
    BOOKSTORE_HOST,
    BOOKTHIEF,
    envoy_pair,
    get,
)
from tests.support.http import new_connection_per_request
from tests.support.mtls import (
    PemFiles,
    envoy_serials,
    foreign_ca,
    mtls_cluster,
    serial_hex,
    upstream_mtls,
    write_pem,
)
from tests.support.resources import load_assignment

pytestmark = REAL_ENVOY


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: nothing pins a request to an old upstream connection.
    async with new_connection_per_request() as client:
        yield client


# Python TLS clients of the bookstore's inbound listener ---------------------------


def mesh_client_context(files: PemFiles) -> ssl.SSLContext:
    """Trusts the mesh bundle; the server's name is its SPIFFE id, checked by the caller."""
    context = ssl.create_default_context(cafile=str(files.ca))
    context.check_hostname = False
    context.load_cert_chain(files.cert, files.key)
    return context


async def raw_get(port: int, context: ssl.SSLContext) -> tuple[bytes, list[str]]:
    """GET / over TLS with SNI of the bookstore: the reply bytes (b"" when the server refused
    the handshake, which with TLS 1.3 may surface only on the first read) and the URI SANs
    of the server's certificate."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=BOOKSTORE_HOST), 5
        )
    except (ssl.SSLError, ConnectionError):
        return b"", []
    server_uris: list[str] = []
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        server_uris = pem_util.uris(x509.load_der_x509_certificate(der))
        writer.write(b"GET / HTTP/1.1\r\nHost: bookstore\r\nConnection: close\r\n\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 5)
    except (ssl.SSLError, ConnectionError, ValueError):  # ValueError: the handshake never completed
        reply = b""
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    return reply, server_uris


# Tests ----------------------------------------------------------------------------


async def test_requests_cross_mutual_tls_with_certificates_from_sds(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with envoy_pair(tmp_path) as pair:
        client_envoy, server_envoy = pair.envoys
        served = pair.app.requests
        for _ in range(5):
            assert await get(session, pair.outbound_port) == (200, pair.app.name)
        assert pair.app.requests == served + 5
        # The application learns the caller's identity from the client certificate.
        fields = dict(part.split("=", 1) for part in pair.app.callers[-1].split(";"))
        assert fields["URI"] == BOOKBUYER.spiffe_id()
        assert fields["By"] == BOOKSTORE.spiffe_id()

        # Both Envoys hold the same two names, each its own identity's certificate under
        # `service-cert`, and present it.
        for envoy in (client_envoy, server_envoy):
            dump = await envoy.config_dump()
            active = {s["name"] for s in dump["secrets"].get("dynamic_active_secrets", [])}
            assert active == {naming.SERVICE_CERT, naming.ROOT_CERT}
        client_serials, server_serials = await envoy_serials(client_envoy), await envoy_serials(server_envoy)
        assert serial_hex(pair.current(BOOKBUYER)) in client_serials
        assert serial_hex(pair.current(BOOKBUYER)) not in server_serials
        assert serial_hex(pair.current(BOOKSTORE)) in server_serials
        assert serial_hex(pair.current(BOOKSTORE)) not in client_serials
        assert await client_envoy.stat("cluster.bookstore.ssl.handshake") >= 5
        assert await server_envoy.stat("listener.127.0.0.1_0.ssl.handshake") >= 5
        # Both ADS streams are mutual TLS, identified by their certificates.
        status = {entry["node_id"]: entry for entry in pair.runtime.proxies.status()}
        assert status[pair.client.name]["identity"] == "bookbuyer/bookbuyer"
        assert status[pair.server.name]["identity"] == "bookstore/bookstore"
        assert await client_envoy.stat("cluster.xds.ssl.handshake") >= 1


async def test_the_inbound_listener_accepts_only_mesh_client_certificates(tmp_path: Path) -> None:
    async with envoy_pair(tmp_path) as pair:
        _, server_envoy = pair.envoys
        bundle = pair.runtime.trust.bundle
        mesh = write_pem(
            tmp_path, "mesh", await pair.runtime.issuer.issue(workload_request(BOOKBUYER)), bundle
        )
        other = await foreign_ca()
        # The same identity, signed by a CA the mesh does not trust.
        foreign = write_pem(tmp_path, "foreign", await other.issue(workload_request(BOOKBUYER)), bundle)

        reply, server_uris = await raw_get(pair.inbound_port, mesh_client_context(mesh))
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert reply.endswith(pair.app.name.encode())
        assert server_uris == [BOOKSTORE.spiffe_id()]

        served = pair.app.requests
        failed_before = await server_envoy.stat("listener.127.0.0.1_0.ssl.fail_verify_error")
        reply, _ = await raw_get(pair.inbound_port, mesh_client_context(foreign))
        assert reply == b""
        await server_envoy.wait_stat("listener.127.0.0.1_0.ssl.fail_verify_error", failed_before + 1)

        anonymous = ssl.create_default_context(cafile=str(mesh.ca))
        anonymous.check_hostname = False
        reply, _ = await raw_get(pair.inbound_port, anonymous)
        assert reply == b""
        await server_envoy.wait_stat("listener.127.0.0.1_0.ssl.fail_verify_no_cert", 1)
        assert pair.app.requests == served


async def test_the_client_envoy_accepts_only_the_identities_of_the_service(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """The bookstore cluster's own validation context names who may answer for the
    bookstore (combined with the shared `root-cert`): when it names another identity,
    the bookstore's (mesh-signed) certificate is refused."""
    async with envoy_pair(tmp_path) as pair:
        client_envoy, _ = pair.envoys
        pair.bookstore_identities = (BOOKTHIEF,)
        pair.publish()

        async def refused() -> bool:
            status, _ = await get(session, pair.outbound_port)
            return status == 503

        await eventually(refused, 10, "the bookstore to be refused", details=pair.logs)
        assert await client_envoy.stat("cluster.bookstore.ssl.fail_verify_san") >= 1

        pair.bookstore_identities = (BOOKTHIEF, BOOKSTORE)
        pair.publish()

        async def accepted() -> bool:
            return await get(session, pair.outbound_port) == (200, pair.app.name)

        await eventually(accepted, 10, "the bookstore to be accepted again", details=pair.logs)


async def test_envoy_never_receives_another_identitys_secret(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    """The bookbuyer's config asks for the bookstore's certificate (and key) by its
    per-identity name (OSM's): its Envoy subscribes, the server refuses and counts it
    (no such name is served), and the rest keeps working."""
    async with envoy_pair(tmp_path) as pair:
        client_envoy, _ = pair.envoys
        stolen = f"service-cert:{BOOKSTORE}"
        encode = pair.runtime.encoder.encode
        pair.extra_client_resources = (
            encode(mtls_cluster("stolen", upstream_mtls(stolen, naming.ROOT_CERT, BOOKSTORE_HOST))),
            encode(load_assignment("stolen", pair.inbound_port)),
        )
        pair.publish()

        def refused() -> float:
            value = pair.runtime.metrics.registry.get_sample_value("meshcp_xds_refused_secrets_total")
            return value or 0.0

        async def warming() -> set[str]:
            dump = await client_envoy.config_dump()
            return {c["cluster"]["name"] for c in dump["clusters"].get("dynamic_warming_clusters", [])}

        async def subscribed_and_refused() -> bool:
            return refused() >= 1 and "stolen" in await warming()

        await eventually(subscribed_and_refused, 10, "Envoy to ask for the stolen secret", details=pair.logs)
        dump = await client_envoy.config_dump()
        active = {s["name"] for s in dump["secrets"].get("dynamic_active_secrets", [])}
        assert active == {naming.SERVICE_CERT, naming.ROOT_CERT}  # not the stolen one
        assert serial_hex(pair.current(BOOKSTORE)) not in await envoy_serials(client_envoy)
        assert "stolen" not in await client_envoy.clusters()  # it waits for a secret that never comes
        (status,) = [e for e in pair.runtime.proxies.status() if e["node_id"] == pair.client.name]
        assert stolen not in status["types"]["sds"]["names"]  # type: ignore[index]
        assert await get(session, pair.outbound_port) == (200, pair.app.name)
