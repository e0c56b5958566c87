from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.verification import PolicyBuilder, Store

from meshcp.certs import pem
from meshcp.certs.external.vault import VaultProvider
from meshcp.certs.issuance import workload_request, xds_client_request, xds_server_request
from meshcp.certs.issuer import Issuer, RetryPolicy
from meshcp.certs.keys import load_private_key
from meshcp.certs.provider import CertificateError
from meshcp.certs.rotation import workload_certificates
from meshcp.certs.xds_identity import verify_xds_client
from meshcp.identity import Identity, ProxyIdentity

from .fake_vault import FakeVault, Role
from .support import RecordingSleep

IDENTITY = Identity("bookstore", "bookbuyer")


@pytest.fixture
async def vault() -> AsyncIterator[FakeVault]:
    server = FakeVault()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def provider(vault: FakeVault) -> AsyncIterator[VaultProvider]:
    async with VaultProvider(vault.url, vault.token, role="mesh") as client:
        yield client


async def test_issues_a_workload_certificate(vault: FakeVault, provider: VaultProvider) -> None:
    issued = await provider.issue(workload_request(IDENTITY, validity=timedelta(hours=12)))
    assert pem.uris(issued.certificate) == ["spiffe://cluster.local/ns/bookstore/sa/bookbuyer"]
    assert pem.dns_names(issued.certificate) == ["bookbuyer.bookstore.cluster.local"]
    assert issued.lifetime == timedelta(hours=12, seconds=30)
    assert vault.requests == [
        {
            "common_name": "bookbuyer.bookstore.cluster.local",
            "alt_names": "bookbuyer.bookstore.cluster.local",
            "ip_sans": "",
            "uri_sans": "spiffe://cluster.local/ns/bookstore/sa/bookbuyer",
            "ttl": "43200s",
            "format": "pem",
            "private_key_format": "pkcs8",
            "exclude_cn_from_sans": True,
        }
    ]
    bundle = await provider.trust_bundle()
    assert pem.load_certificates(bundle) == [vault.root]
    verifier = PolicyBuilder().store(Store([vault.root])).time(datetime.now(UTC)).build_client_verifier()
    verifier.verify(issued.certificate, [])


async def test_role_decides_the_key_type(vault: FakeVault, provider: VaultProvider) -> None:
    vault.roles["mesh"] = Role(key_type="rsa", key_bits=3072)
    issued = await provider.issue(workload_request(IDENTITY))
    key = load_private_key(issued.private_key_pem)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 3072


async def test_role_max_ttl_caps_validity(vault: FakeVault, provider: VaultProvider) -> None:
    vault.roles["mesh"] = Role(max_ttl=timedelta(hours=1))
    issued = await provider.issue(workload_request(IDENTITY, validity=timedelta(hours=24)))
    assert issued.lifetime == timedelta(hours=1, seconds=30)


async def test_xds_certificates(vault: FakeVault, provider: VaultProvider) -> None:
    proxy = ProxyIdentity("0f8fad5b-d9cb-469f-a165-70867728950e", IDENTITY)
    client = await provider.issue(xds_client_request(proxy))
    bundle = await provider.trust_bundle()
    assert verify_xds_client(client.certificate_pem, bundle, datetime.now(UTC), proxy.name) == proxy
    server = await provider.issue(xds_server_request(["meshcp.meshcp-system.svc"], [ip_address("127.0.0.1")]))
    assert pem.ip_addresses(server.certificate) == [ip_address("127.0.0.1")]
    assert vault.requests[-1]["ip_sans"] == "127.0.0.1"


async def test_intermediate_mount_chains_leaf_and_intermediate_to_the_root() -> None:
    vault = FakeVault(intermediate=True)
    await vault.start()
    try:
        async with VaultProvider(vault.url, vault.token, role="mesh") as provider:
            issued = await provider.issue(workload_request(IDENTITY))
            bundle = await provider.trust_bundle()
    finally:
        await vault.stop()
    chain = pem.load_certificates(issued.chain_pem)
    assert chain == [issued.certificate, vault.issuing]
    assert pem.load_certificates(bundle) == [vault.root]
    verifier = PolicyBuilder().store(Store([vault.root])).time(datetime.now(UTC)).build_client_verifier()
    assert verifier.verify(chain[0], chain[1:]).chain[-1] == vault.root


async def test_wrong_token_is_a_clear_refusal(vault: FakeVault) -> None:
    async with VaultProvider(vault.url, "wrong", role="mesh") as provider:
        with pytest.raises(CertificateError) as caught:
            await provider.issue(workload_request(IDENTITY))
    assert str(caught.value) == "certificate provider 'vault': HTTP 403: permission denied"
    assert not caught.value.retryable


async def test_role_policy_refusal_is_reported_with_vaults_reason(
    vault: FakeVault, provider: VaultProvider
) -> None:
    vault.roles["mesh"] = Role(allowed_uri_sans="spiffe://other.domain/*")
    with pytest.raises(CertificateError, match="HTTP 400: URI Subject Alternative Names are not allowed"):
        await provider.issue(workload_request(IDENTITY))


async def test_unknown_role(vault: FakeVault) -> None:
    async with VaultProvider(vault.url, vault.token, role="nope") as provider:
        with pytest.raises(CertificateError, match="unknown role: nope"):
            await provider.issue(workload_request(IDENTITY))


async def test_server_errors_are_retryable_and_retried(vault: FakeVault, provider: VaultProvider) -> None:
    vault.scripted = [(503, json.dumps({"errors": ["Vault is sealed"]}).encode())]
    sleep = RecordingSleep()
    issued = await Issuer(provider, RetryPolicy(jitter=0.0), sleep=sleep).issue(workload_request(IDENTITY))
    assert sleep.delays == [0.5]
    assert len(vault.requests) == 2
    assert pem.uris(issued.certificate) == ["spiffe://cluster.local/ns/bookstore/sa/bookbuyer"]


@pytest.mark.parametrize(
    ("status", "body", "message", "retryable"),
    [
        (
            500,
            b'{"errors": ["internal error", "storage unavailable"]}',
            "HTTP 500: internal error; storage",
            True,
        ),
        (502, b"<html>Bad Gateway</html>", "HTTP 502: <html>Bad Gateway</html>", True),
        (200, b"{not json", "malformed response (not JSON)", False),
        (200, b'{"data": null}', "malformed response: the response has no data object", False),
        (200, b'{"data": {"certificate": "x"}}', "data.certificate or data.private_key is missing", False),
        (
            200,
            b'{"data": {"certificate": "junk", "private_key": "junk"}}',
            "malformed response: unusable certificate",
            False,
        ),
        (400, b'{"errors": []}', "HTTP 400: request failed without an error message", False),
    ],
)
async def test_bad_answers_become_certificate_errors(
    vault: FakeVault, provider: VaultProvider, status: int, body: bytes, message: str, retryable: bool
) -> None:
    vault.scripted = [(status, body)]
    with pytest.raises(CertificateError) as caught:
        await provider.issue(workload_request(IDENTITY))
    assert message in str(caught.value)
    assert str(caught.value).startswith("certificate provider 'vault': ")
    assert caught.value.retryable is retryable


async def test_mismatched_key_is_refused(vault: FakeVault, provider: VaultProvider) -> None:
    good = await provider.issue(workload_request(IDENTITY))
    other = await provider.issue(workload_request(IDENTITY))
    answer = {"data": {"certificate": good.certificate_pem, "private_key": other.private_key_pem}}
    vault.scripted = [(200, json.dumps(answer).encode())]
    with pytest.raises(CertificateError, match="private key does not belong to the certificate"):
        await provider.issue(workload_request(IDENTITY))


async def test_dropped_san_is_refused(vault: FakeVault, provider: VaultProvider) -> None:
    good = await provider.issue(xds_server_request(["meshcp.meshcp-system.svc"]))
    answer = {"data": {"certificate": good.certificate_pem, "private_key": good.private_key_pem}}
    vault.scripted = [(200, json.dumps(answer).encode())]
    with pytest.raises(CertificateError, match="lacks the requested subject alternative names"):
        await provider.issue(workload_request(IDENTITY))


async def test_manager_over_vault_deduplicates(vault: FakeVault, provider: VaultProvider) -> None:
    manager = workload_certificates(Issuer(provider))
    first = await manager.get(IDENTITY)
    assert await manager.get(IDENTITY) is first
    assert len(vault.requests) == 1
