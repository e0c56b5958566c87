from __future__ import annotations

import pytest

from meshcp.identity import Identity, ProxyIdentity, validate_trust_domain

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_workload_names() -> None:
    identity = Identity("bookstore", "bookbuyer")
    assert identity.spiffe_id() == "spiffe://cluster.local/ns/bookstore/sa/bookbuyer"
    assert identity.dns_name() == "bookbuyer.bookstore.cluster.local"
    assert identity.spiffe_id("mesh.example") == "spiffe://mesh.example/ns/bookstore/sa/bookbuyer"
    assert str(identity) == "bookstore/bookbuyer"
    assert Identity.parse("bookstore/bookbuyer") == identity


@pytest.mark.parametrize(
    ("namespace", "service_account"),
    [("Bad", "sa"), ("ns.dots", "sa"), ("ns", "UPPER"), ("ns", "-lead"), ("", "sa"), ("ns", "")],
)
def test_identity_rejects_invalid_names(namespace: str, service_account: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        Identity(namespace, service_account)


@pytest.mark.parametrize("trust_domain", ["Cluster.Local", "a..b", "under_score", "-x.local", ""])
def test_trust_domain_must_be_dns_name(trust_domain: str) -> None:
    with pytest.raises(ValueError, match="invalid trust domain"):
        validate_trust_domain(trust_domain)


def test_proxy_name_round_trips_with_dots_in_account_and_domain() -> None:
    proxy = ProxyIdentity(UUID, Identity("ns", "my.dotted.sa"), "mesh.example.com")
    assert proxy.name == f"{UUID}.sidecar.my.dotted.sa.ns.mesh.example.com"
    assert ProxyIdentity.parse(proxy.name, "mesh.example.com") == proxy


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (f"{UUID}.sidecar.sa.ns.other.domain", "not in trust domain"),
        (f"{UUID}.gateway.sa.ns.cluster.local", "not a sidecar name"),
        ("sa.ns.cluster.local", "not a sidecar name"),
        ("NOT-A-UUID.sidecar.sa.ns.cluster.local", "invalid proxy UUID"),
        (f"{UUID.upper()}.sidecar.sa.ns.cluster.local", "invalid proxy UUID"),
    ],
)
def test_proxy_name_parse_rejects(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProxyIdentity.parse(name)


@pytest.mark.parametrize("trust_domain", ["cluster.local", "mesh.example.com"])
def test_spiffe_id_round_trips_with_dots_in_the_account(trust_domain: str) -> None:
    identity = Identity("bookstore", "my.dotted.sa")
    assert Identity.from_spiffe_id(identity.spiffe_id(trust_domain), trust_domain) == identity


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("spiffe://other.domain/ns/ns/sa/sa", "is not a SPIFFE id"),
        ("spiffe://cluster.local.evil/ns/ns/sa/sa", "is not a SPIFFE id"),
        ("spiffe://cluster.local/ns/ns", "is not a SPIFFE id"),
        ("spiffe://cluster.local/sa/sa", "is not a SPIFFE id"),
        ("https://cluster.local/ns/ns/sa/sa", "is not a SPIFFE id"),
        ("spiffe://cluster.local/ns/a/b/sa/sa", "invalid namespace"),
        ("spiffe://cluster.local/ns/ns/sa/a/sa/b", "invalid service account"),
        ("spiffe://cluster.local/ns//sa/sa", "invalid namespace"),
    ],
)
def test_from_spiffe_id_rejects(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Identity.from_spiffe_id(uri, "cluster.local")


def test_from_spiffe_id_checks_the_trust_domain() -> None:
    with pytest.raises(ValueError, match="invalid trust domain"):
        Identity.from_spiffe_id("spiffe://Bad/ns/ns/sa/sa", "Bad")
