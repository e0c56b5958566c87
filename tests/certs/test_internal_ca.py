from __future__ import annotations

from datetime import timedelta
from ipaddress import ip_address

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from meshcp.certs import pem
from meshcp.certs.authority import CLOCK_SKEW
from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import workload_request, xds_client_request, xds_server_request
from meshcp.certs.keys import KeySpec, load_private_key, same_public_key
from meshcp.certs.storage import MemoryStore
from meshcp.identity import Identity, ProxyIdentity

from .support import FakeClock

IDENTITY = Identity("bookstore", "bookbuyer")


def san(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


async def test_workload_certificate_has_exactly_the_spiffe_and_dns_sans(internal_ca: InternalCA) -> None:
    issued = await internal_ca.issue(workload_request(IDENTITY, "mesh.example"))
    names = san(issued.certificate)
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mesh.example/ns/bookstore/sa/bookbuyer"
    ]
    assert names.get_values_for_type(x509.DNSName) == ["bookbuyer.bookstore.mesh.example"]
    assert len(list(names)) == 2


async def test_workload_certificate_serves_both_tls_roles_and_is_not_a_ca(internal_ca: InternalCA) -> None:
    cert = (await internal_ca.issue(workload_request(IDENTITY))).certificate
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


async def test_default_validity_is_24_hours_backdated_for_skew(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    issued = await internal_ca.issue(workload_request(IDENTITY))
    assert issued.not_after == clock.now + timedelta(hours=24)
    assert issued.not_before == clock.now - CLOCK_SKEW


async def test_validity_is_configurable(internal_ca: InternalCA, clock: FakeClock) -> None:
    issued = await internal_ca.issue(workload_request(IDENTITY, validity=timedelta(hours=2)))
    assert issued.not_after == clock.now + timedelta(hours=2)


async def test_leaf_never_outlives_its_root(clock: FakeClock) -> None:
    ca = await InternalCA.open(MemoryStore(), clock=clock, root_validity=timedelta(hours=1))
    issued = await ca.issue(workload_request(IDENTITY, validity=timedelta(hours=24)))
    assert issued.not_after == ca.state.active.certificate.not_valid_after_utc


async def test_root_defaults_to_ecdsa_p256_valid_ten_years(internal_ca: InternalCA, clock: FakeClock) -> None:
    root = internal_ca.state.active.certificate
    public_key = root.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    assert root.not_valid_after_utc == clock.now + timedelta(days=3650)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True


async def test_rsa_root_on_request(clock: FakeClock) -> None:
    ca = await InternalCA.open(MemoryStore(), clock=clock, key_spec=KeySpec.RSA_2048)
    public_key = ca.state.active.certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert public_key.key_size == 2048
    leaf = await ca.issue(workload_request(IDENTITY))
    leaf.certificate.verify_directly_issued_by(ca.state.active.certificate)


@pytest.mark.parametrize(
    ("spec", "bits"),
    [
        (KeySpec.ECDSA_P256, None),
        (KeySpec.RSA_2048, 2048),
        (KeySpec.RSA_3072, 3072),
        (KeySpec.RSA_4096, 4096),
    ],
)
async def test_leaf_key_types(internal_ca: InternalCA, spec: KeySpec, bits: int | None) -> None:
    issued = await internal_ca.issue(workload_request(IDENTITY, key_spec=spec))
    key = load_private_key(issued.private_key_pem)
    if bits is None:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(key.curve, ec.SECP256R1)
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        assert key.key_size == bits
    assert same_public_key(key.public_key(), issued.certificate.public_key())
    assert "BEGIN PRIVATE KEY" in issued.private_key_pem  # PKCS#8, which Envoy reads


async def test_leaf_chains_to_the_trust_bundle(internal_ca: InternalCA, clock: FakeClock) -> None:
    issued = await internal_ca.issue(workload_request(IDENTITY))
    roots = pem.load_certificates(await internal_ca.trust_bundle())
    verifier = PolicyBuilder().store(Store(roots)).time(clock.now).build_client_verifier()
    chain = verifier.verify(issued.certificate, []).chain
    assert chain[-1] == internal_ca.state.active.certificate


async def test_xds_server_certificate_carries_dns_names_and_ips(internal_ca: InternalCA) -> None:
    request = xds_server_request(["meshcp.meshcp-system.svc", "meshcp"], [ip_address("127.0.0.1")])
    names = san((await internal_ca.issue(request)).certificate)
    assert names.get_values_for_type(x509.DNSName) == ["meshcp.meshcp-system.svc", "meshcp"]
    assert names.get_values_for_type(x509.IPAddress) == [ip_address("127.0.0.1")]


async def test_xds_client_certificate_name_is_dns_san_and_cn_when_it_fits(internal_ca: InternalCA) -> None:
    proxy = ProxyIdentity("0f8fad5b-d9cb-469f-a165-70867728950e", Identity("ns", "sa"))
    cert = (await internal_ca.issue(xds_client_request(proxy))).certificate
    assert san(cert).get_values_for_type(x509.DNSName) == [proxy.name]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == proxy.name


async def test_name_longer_than_64_characters_leaves_cn_empty_and_san_critical(
    internal_ca: InternalCA,
) -> None:
    proxy = ProxyIdentity("0f8fad5b-d9cb-469f-a165-70867728950e", Identity("bookstore", "bookbuyer"))
    assert len(proxy.name) > 64
    cert = (await internal_ca.issue(xds_client_request(proxy))).certificate
    assert len(cert.subject) == 0
    extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert extension.critical
    assert extension.value.get_values_for_type(x509.DNSName) == [proxy.name]


async def test_each_issuance_has_a_fresh_key(internal_ca: InternalCA) -> None:
    first = await internal_ca.issue(workload_request(IDENTITY))
    second = await internal_ca.issue(workload_request(IDENTITY))
    assert first.private_key_pem != second.private_key_pem
    assert first.serial_number != second.serial_number


async def test_repr_never_shows_the_key(internal_ca: InternalCA) -> None:
    issued = await internal_ca.issue(workload_request(IDENTITY))
    assert "PRIVATE" not in repr(issued)
    assert "PRIVATE" not in repr(internal_ca.state)
    assert f"{issued.serial_number:x}" in repr(issued)
