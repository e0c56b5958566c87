from __future__ import annotations

from meshcp.certs import pem
from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import workload_request
from meshcp.certs.sds import allowed_sans, identity_secrets
from meshcp.identity import Identity

IDENTITY = Identity("bookstore", "bookstore")


def test_allowed_sans_are_sorted_unique_spiffe_ids() -> None:
    peers = [Identity("ns", "b"), Identity("ns", "a"), Identity("ns", "b")]
    assert allowed_sans(peers, "mesh.example") == (
        "spiffe://mesh.example/ns/ns/sa/a",
        "spiffe://mesh.example/ns/ns/sa/b",
    )
    assert allowed_sans([]) == ()


async def test_identity_secrets_carry_chain_key_bundle_and_peers(internal_ca: InternalCA) -> None:
    issued = await internal_ca.issue(workload_request(IDENTITY))
    bundle = await internal_ca.trust_bundle()
    secrets = identity_secrets(IDENTITY, issued, bundle + "\n\n", [Identity("bookstore", "bookbuyer")])
    assert secrets.identity == IDENTITY
    assert secrets.certificate.certificate_chain_pem == issued.chain_pem
    assert secrets.certificate.private_key_pem == issued.private_key_pem
    assert secrets.validation.trust_bundle_pem == bundle  # normalised: stray blank lines dropped
    assert secrets.validation.match_uri_sans == ("spiffe://cluster.local/ns/bookstore/sa/bookbuyer",)
    assert "PRIVATE" not in repr(secrets)


async def test_bundle_lists_both_roots_during_rotation(internal_ca: InternalCA) -> None:
    issued = await internal_ca.issue(workload_request(IDENTITY))
    await internal_ca.rotate_root()
    secrets = identity_secrets(IDENTITY, issued, await internal_ca.trust_bundle(), [])
    assert len(pem.load_certificates(secrets.validation.trust_bundle_pem)) == 2
