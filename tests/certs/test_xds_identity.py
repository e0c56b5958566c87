from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization

from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.certs.provider import IssuedCertificate
from meshcp.certs.storage import MemoryStore
from meshcp.certs.xds_identity import RejectReason, XdsClientRejected, verify_xds_client
from meshcp.identity import Identity, ProxyIdentity

from .support import FakeClock

PROXY = ProxyIdentity("0f8fad5b-d9cb-469f-a165-70867728950e", Identity("bookstore", "bookbuyer"))


async def client_cert(ca: InternalCA, proxy: ProxyIdentity = PROXY) -> IssuedCertificate:
    return await ca.issue(xds_client_request(proxy, validity=timedelta(days=30)))


def der(issued: IssuedCertificate) -> bytes:
    return issued.certificate.public_bytes(serialization.Encoding.DER)


async def test_accepts_der_and_pem_and_returns_the_identity(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    issued = await client_cert(internal_ca)
    bundle = await internal_ca.trust_bundle()
    for form in (der(issued), issued.certificate_pem, issued.certificate_pem.encode()):
        proxy = verify_xds_client(form, bundle, clock.now, PROXY.name)
        assert proxy == PROXY
        assert (proxy.proxy_uuid, proxy.identity.service_account, proxy.identity.namespace) == (
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "bookbuyer",
            "bookstore",
        )


async def reason_for(
    certificate: bytes | str | None, bundle: str, clock: FakeClock, node_id: str = PROXY.name
) -> XdsClientRejected:
    with pytest.raises(XdsClientRejected) as caught:
        verify_xds_client(certificate, bundle, clock.now, node_id)
    return caught.value


@pytest.mark.parametrize("missing", [None, b"", ""])
async def test_missing(internal_ca: InternalCA, clock: FakeClock, missing: bytes | str | None) -> None:
    error = await reason_for(missing, await internal_ca.trust_bundle(), clock)
    assert error.reason is RejectReason.MISSING
    assert "no certificate" in str(error)


async def test_malformed(internal_ca: InternalCA, clock: FakeClock) -> None:
    error = await reason_for(b"\x30\x03garbage", await internal_ca.trust_bundle(), clock)
    assert error.reason is RejectReason.MALFORMED


async def test_expired(internal_ca: InternalCA, clock: FakeClock) -> None:
    issued = await client_cert(internal_ca)
    clock.now = issued.not_after + timedelta(seconds=1)
    error = await reason_for(der(issued), await internal_ca.trust_bundle(), clock)
    assert error.reason is RejectReason.EXPIRED
    assert issued.not_after.isoformat() in str(error)


async def test_not_yet_valid(internal_ca: InternalCA, clock: FakeClock) -> None:
    issued = await client_cert(internal_ca)
    clock.now = issued.not_before - timedelta(seconds=1)
    error = await reason_for(der(issued), await internal_ca.trust_bundle(), clock)
    assert error.reason is RejectReason.NOT_YET_VALID


async def test_other_ca(internal_ca: InternalCA, clock: FakeClock) -> None:
    stranger = await InternalCA.open(MemoryStore(), clock=clock)
    issued = await client_cert(stranger)
    error = await reason_for(der(issued), await internal_ca.trust_bundle(), clock)
    assert error.reason is RejectReason.UNTRUSTED
    assert "not issued by the mesh CA" in str(error)
    assert stranger.state.active.certificate.subject.rfc4514_string() in str(error)


async def test_node_id_mismatch(internal_ca: InternalCA, clock: FakeClock) -> None:
    issued = await client_cert(internal_ca)
    impostor = ProxyIdentity(PROXY.proxy_uuid, Identity("bookstore", "bookthief")).name
    error = await reason_for(der(issued), await internal_ca.trust_bundle(), clock, impostor)
    assert error.reason is RejectReason.NODE_MISMATCH
    assert PROXY.name in str(error)
    assert impostor in str(error)


async def test_workload_certificate_is_not_an_xds_client_certificate(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    issued = await internal_ca.issue(workload_request(PROXY.identity))
    error = await reason_for(der(issued), await internal_ca.trust_bundle(), clock)
    assert error.reason is RejectReason.NOT_A_SIDECAR


async def test_other_trust_domain(internal_ca: InternalCA, clock: FakeClock) -> None:
    foreign = ProxyIdentity(PROXY.proxy_uuid, PROXY.identity, "other.mesh")
    issued = await client_cert(internal_ca, foreign)
    error = await reason_for(der(issued), await internal_ca.trust_bundle(), clock, foreign.name)
    assert error.reason is RejectReason.NOT_A_SIDECAR
    assert "not in trust domain 'cluster.local'" in str(error)


async def test_both_roots_are_accepted_during_root_rotation(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    old = await client_cert(internal_ca)
    await internal_ca.rotate_root()
    new = await client_cert(internal_ca)
    bundle = await internal_ca.trust_bundle()
    assert verify_xds_client(der(old), bundle, clock.now, PROXY.name) == PROXY
    assert verify_xds_client(der(new), bundle, clock.now, PROXY.name) == PROXY
    await internal_ca.finish_root_rotation()
    error = await reason_for(der(old), await internal_ca.trust_bundle(), clock)
    assert error.reason is RejectReason.UNTRUSTED
