"""The xDS listener's certificate: the names proxies dial, and the cross certificates only
the internal CA can add (the chain in each rotation phase is in test_cross_certificates)."""

from __future__ import annotations

from ipaddress import ip_address

from meshcp.certs import pem
from meshcp.certs.internal import InternalCA
from meshcp.certs.issuer import Issuer
from meshcp.certs.xds_server import XdsServerCredentials

from .support import CountingProvider


async def test_names_that_are_addresses_become_ip_sans(internal_ca: InternalCA) -> None:
    names = ["meshcp.meshcp-system.svc", "127.0.0.1", "::1", "localhost", "127.0.0.1"]
    issued = await XdsServerCredentials(Issuer(internal_ca), internal_ca, names).issue()
    assert pem.dns_names(issued.certificate) == ["meshcp.meshcp-system.svc", "localhost"]
    assert pem.ip_addresses(issued.certificate) == [ip_address("127.0.0.1"), ip_address("::1")]
    assert pem.uris(issued.certificate) == []
    assert issued.chain_pem == issued.certificate_pem  # stable root: no cross certificate


async def test_each_issue_is_a_new_certificate(internal_ca: InternalCA) -> None:
    credentials = XdsServerCredentials(Issuer(internal_ca), internal_ca, ["localhost"])
    first, second = await credentials.issue(), await credentials.issue()
    assert first.serial_number != second.serial_number


async def test_the_internal_ca_appends_its_cross_certificates(internal_ca: InternalCA) -> None:
    await internal_ca.rotate_root()
    await internal_ca.sign_with_new_root()
    issued = await XdsServerCredentials(Issuer(internal_ca), internal_ca, ["localhost"]).issue()
    (cross,) = internal_ca.state.crosses
    assert pem.load_certificates(issued.chain_pem) == [issued.certificate, cross.certificate]
    assert issued.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----")


async def test_other_providers_chains_are_left_as_issued(internal_ca: InternalCA) -> None:
    await internal_ca.rotate_root()
    await internal_ca.sign_with_new_root()
    provider = CountingProvider(internal_ca)  # not an InternalCA: it has no cross certificates
    issued = await XdsServerCredentials(Issuer(provider), provider, ["localhost"]).issue()
    assert pem.load_certificates(issued.chain_pem) == [issued.certificate]
    assert provider.calls == 1
