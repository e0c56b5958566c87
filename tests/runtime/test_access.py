"""Who a proxy is (`verified_identity`, `claimed_identity`) and which secret names it may
ask for (`may_receive`), with certificates from a real InternalCA. That the names reach
only the proxy's own identity's certificate: tests/runtime/test_classify.py and
tests/test_xds_mtls.py."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp.certs import Identity, InternalCA, IssuedCertificate, MemoryStore, ProxyIdentity
from meshcp.certs.clock import utc_now
from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.runtime.access import claimed_identity, may_receive, verified_identity
from meshcp.xds.auth import Authorizer, StreamRejected

BUYER = Identity("bookbuyer", "bookbuyer")
PROXY = ProxyIdentity("6f1c3a52-0d6a-4b55-9a59-1d8a5f0e2b11", BUYER)
TWIN = ProxyIdentity("0b7c9e31-5d2f-4a8e-9c61-3e4f5a6b7c8d", BUYER)


def der(issued: IssuedCertificate) -> bytes:
    """What the TLS layer hands the authoriser: the peer's DER certificate."""
    return issued.certificate.public_bytes(Encoding.DER)


def node(name: str) -> Node:
    return Node(id=name, cluster="bookbuyer")


@pytest.fixture
async def ca() -> InternalCA:
    return await InternalCA.open(MemoryStore())


@pytest.fixture
async def client_cert(ca: InternalCA) -> IssuedCertificate:
    return await ca.issue(xds_client_request(PROXY))


def authorizer(ca: InternalCA, at: datetime | None = None, trust_domain: str = "cluster.local") -> Authorizer:
    bundle = ca.state.trust_bundle_pem()
    return verified_identity(lambda: bundle, trust_domain, clock=(lambda: at) if at else utc_now)


def rejection(authorize: Authorizer, node_id: str, peer: bytes | None) -> StreamRejected:
    with pytest.raises(StreamRejected) as raised:
        authorize(node(node_id), peer)
    return raised.value


async def test_verified_identity_accepts_the_sidecar_named_in_the_certificate(
    ca: InternalCA, client_cert: IssuedCertificate
) -> None:
    assert authorizer(ca)(node(PROXY.name), der(client_cert)) == "bookbuyer/bookbuyer"


async def test_verified_identity_rejects_a_missing_certificate(ca: InternalCA) -> None:
    rejected = rejection(authorizer(ca), PROXY.name, None)
    assert rejected.reason == "missing"
    assert "no certificate" in str(rejected)


async def test_verified_identity_rejects_an_expired_certificate(
    ca: InternalCA, client_cert: IssuedCertificate
) -> None:
    later = client_cert.not_after + timedelta(seconds=1)
    rejected = rejection(authorizer(ca, later), PROXY.name, der(client_cert))
    assert rejected.reason == "expired"
    assert client_cert.not_after.isoformat() in str(rejected)
    # One second earlier it was fine.
    assert authorizer(ca, client_cert.not_after)(node(PROXY.name), der(client_cert)) == str(BUYER)


async def test_verified_identity_rejects_a_certificate_not_valid_yet(
    ca: InternalCA, client_cert: IssuedCertificate
) -> None:
    earlier = client_cert.not_before - timedelta(seconds=1)
    assert rejection(authorizer(ca, earlier), PROXY.name, der(client_cert)).reason == "not-yet-valid"


async def test_verified_identity_rejects_a_certificate_from_another_ca(ca: InternalCA) -> None:
    other = await InternalCA.open(MemoryStore())
    foreign = await other.issue(xds_client_request(PROXY))
    rejected = rejection(authorizer(ca), PROXY.name, der(foreign))
    assert rejected.reason == "untrusted"
    assert other.state.active.certificate.subject.rfc4514_string() in str(rejected)


async def test_verified_identity_rejects_a_node_id_naming_another_proxy(
    ca: InternalCA, client_cert: IssuedCertificate
) -> None:
    # Same service account, another proxy: still refused, the node id is the certificate name.
    rejected = rejection(authorizer(ca), TWIN.name, der(client_cert))
    assert rejected.reason == "node-mismatch"
    assert PROXY.name in str(rejected) and TWIN.name in str(rejected)


async def test_verified_identity_rejects_a_workload_certificate(ca: InternalCA) -> None:
    workload = await ca.issue(workload_request(BUYER))
    rejected = rejection(authorizer(ca), BUYER.dns_name(), der(workload))
    assert rejected.reason == "not-a-sidecar"


async def test_verified_identity_rejects_garbage(ca: InternalCA) -> None:
    assert rejection(authorizer(ca), PROXY.name, b"\x30\x03\x02\x01\x00").reason == "malformed"


async def test_verified_identity_checks_the_trust_domain(
    ca: InternalCA, client_cert: IssuedCertificate
) -> None:
    rejected = rejection(authorizer(ca, trust_domain="example.org"), PROXY.name, der(client_cert))
    assert rejected.reason == "not-a-sidecar"


async def test_verified_identity_reads_the_current_bundle_on_every_stream(
    ca: InternalCA, client_cert: IssuedCertificate
) -> None:
    """A root rotation: both roots are trusted while it runs; once it finishes, certificates
    of the old root no longer open streams, and those of the new root do."""

    def bundle() -> str:  # the CA's state object is replaced on every transition
        return ca.state.trust_bundle_pem()

    authorize = verified_identity(bundle)
    await ca.rotate_root()
    assert authorize(node(PROXY.name), der(client_cert)) == str(BUYER)
    await ca.sign_with_new_root()
    from_new_root = await ca.issue(xds_client_request(PROXY))
    assert from_new_root.certificate.issuer != client_cert.certificate.issuer
    assert authorize(node(PROXY.name), der(client_cert)) == str(BUYER)
    assert authorize(node(PROXY.name), der(from_new_root)) == str(BUYER)
    await ca.finish_root_rotation()
    assert rejection(authorize, PROXY.name, der(client_cert)).reason == "untrusted"
    assert authorize(node(PROXY.name), der(from_new_root)) == str(BUYER)


def test_claimed_identity_believes_a_sidecar_node_id_and_nothing_else() -> None:
    claimed = claimed_identity()
    assert claimed(node(PROXY.name), None) == "bookbuyer/bookbuyer"
    assert claimed(node("router-1"), None) is None
    assert claimed(node(PROXY.name.replace("cluster.local", "example.org")), None) is None
    assert claimed_identity("example.org")(node(PROXY.name), None) is None
    other_domain = ProxyIdentity(PROXY.proxy_uuid, BUYER, "example.org")
    assert claimed_identity("example.org")(node(other_domain.name), None) == "bookbuyer/bookbuyer"


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("service-cert", True),
        ("root-cert", True),
        # Names no proxy is served: OSM's (and older meshcp's) per-identity and
        # per-service names, and anything else.
        ("service-cert:bookbuyer/bookbuyer", False),
        ("service-cert:bookstore/bookstore", False),
        ("root-cert-for-mtls-inbound:bookbuyer/bookbuyer", False),
        ("root-cert-for-mtls-outbound:bookstore/bookstore", False),
        ("service-cert ", False),
        ("", False),
    ],
)
def test_may_receive_only_the_names_the_mesh_serves(name: str, allowed: bool) -> None:
    assert may_receive(name) is allowed
