"""Mutual TLS on the xDS listener: the peer certificate reaches the authoriser."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpclib.client
import grpclib.const
import pytest
from cryptography import x509

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshcp.certs import InternalCA, MemoryStore, ProxyIdentity
from meshcp.certs.issuance import xds_client_request, xds_server_request
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from meshcp.xds.auth import PeerCertificate
from meshcp.xds.service import SOTW_PATH
from meshcp.xds.tls import server_context
from tests.factories import CDS, World

PROXY = ProxyIdentity.parse("6f1c3a52-0d6a-4b55-9a59-1d8a5f0e2b11.sidecar.bookbuyer.bookstore.cluster.local")


def _write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


async def test_client_certificate_is_required_and_passed_to_the_authorizer(tmp_path: Path) -> None:
    ca = await InternalCA.open(MemoryStore())
    server = await ca.issue(xds_server_request(["localhost"]))
    client = await ca.issue(xds_client_request(PROXY))
    bundle = _write(tmp_path, "ca.pem", await ca.trust_bundle())
    seen: list[x509.Certificate] = []

    def authorize(node: Node, peer: PeerCertificate) -> str | None:
        assert peer is not None
        seen.append(x509.load_der_x509_certificate(peer))
        return node.id

    tls = server_context(
        _write(tmp_path, "server.pem", server.chain_pem),
        _write(tmp_path, "server.key", server.private_key_pem),
        bundle,
    )
    settings = Settings(
        xds_address=Address("127.0.0.1", 0), http_address=Address("127.0.0.1", 0), xds_tls=tls
    )
    runtime = await ControllerRuntime.open(settings, authorize=authorize)
    await runtime.start()
    try:
        runtime.cache.set_snapshot(PROXY.name, World().snapshot())
        context = ssl.create_default_context(cafile=str(bundle))
        context.set_alpn_protocols(["h2"])
        context.load_cert_chain(
            _write(tmp_path, "client.pem", client.chain_pem),
            _write(tmp_path, "client.key", client.private_key_pem),
        )
        channel = grpclib.client.Channel("localhost", runtime.xds.port, ssl=context)
        try:
            async with channel.request(
                SOTW_PATH, grpclib.const.Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse
            ) as stream:
                await stream.send_message(DiscoveryRequest(node=Node(id=PROXY.name), type_url=CDS))
                response = await stream.recv_message()
                assert response is not None and len(response.resources) == 2
                await stream.end()
        finally:
            channel.close()

        sans = seen[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == [PROXY.name]

        # Without a client certificate the handshake itself fails.
        anonymous = ssl.create_default_context(cafile=str(bundle))
        anonymous.set_alpn_protocols(["h2"])
        channel = grpclib.client.Channel("localhost", runtime.xds.port, ssl=anonymous)
        try:
            with pytest.raises((ssl.SSLError, ConnectionError, grpclib.exceptions.StreamTerminatedError)):
                async with channel.request(
                    SOTW_PATH, grpclib.const.Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse
                ) as stream:
                    await stream.send_message(DiscoveryRequest(node=Node(id="anonymous"), type_url=CDS))
                    await stream.recv_message()
        finally:
            channel.close()
        assert len(seen) == 1
    finally:
        await runtime.stop()
