"""Root rotation and the xDS channel: cross certificates, retired roots and the chain the
xDS server presents in each phase (`InternalCA` with a fake clock; chains checked with
`cryptography`'s RFC 5280 verifier, playing proxies that trust one fixed set of roots, as
a bootstrap does)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshcp.certs import ca_persistence, pem
from meshcp.certs.authority import Root, create_root, cross_sign
from meshcp.certs.cli_support import ca_show
from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import xds_client_request
from meshcp.certs.issuer import Issuer
from meshcp.certs.keys import KeySpec, same_public_key
from meshcp.certs.provider import CertificateError
from meshcp.certs.root_rotation import Phase
from meshcp.certs.storage import DirectoryStore, MemoryStore
from meshcp.certs.xds_identity import RejectReason, XdsClientRejected, verify_xds_client
from meshcp.certs.xds_server import XdsServerCredentials
from meshcp.identity import Identity, ProxyIdentity

from .support import FakeClock

ROOT_VALIDITY = timedelta(days=100)
PROXY = ProxyIdentity("6f1c3a52-0d6a-4b55-9a59-1d8a5f0e2b11", Identity("bookstore", "bookstore"))


async def server_chain(ca: InternalCA) -> list[x509.Certificate]:
    """What the controller's xDS listener presents: a leaf, then the cross certificates."""
    issued = await XdsServerCredentials(Issuer(ca), ca, ["localhost"]).issue()
    return pem.load_certificates(issued.chain_pem)


def verifies(chain: list[x509.Certificate], roots: list[Root], clock: FakeClock) -> bool:
    """Whether a proxy trusting exactly `roots` accepts `chain` from the server "localhost"."""
    store = Store([root.certificate for root in roots])
    verifier = PolicyBuilder().store(store).time(clock.now).build_server_verifier(x509.DNSName("localhost"))
    try:
        verifier.verify(chain[0], chain[1:])
    except VerificationError:
        return False
    return True


def index_of(directory: Path) -> dict[str, object]:
    loaded = json.loads((directory / ca_persistence.STATE_ENTRY).read_text())
    assert isinstance(loaded, dict)
    return loaded


def ski(certificate: x509.Certificate) -> bytes:
    return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


@pytest.mark.parametrize(
    ("old_spec", "new_spec"),
    [
        (KeySpec.ECDSA_P256, KeySpec.ECDSA_P256),
        (KeySpec.ECDSA_P256, KeySpec.RSA_2048),
        (KeySpec.RSA_2048, KeySpec.ECDSA_P256),
    ],
    ids=["ecdsa-ecdsa", "ecdsa-rsa", "rsa-ecdsa"],
)
async def test_the_cross_certificate_certifies_the_new_root_by_the_old_one(
    clock: FakeClock, old_spec: KeySpec, new_spec: KeySpec
) -> None:
    store = MemoryStore()
    await InternalCA.open(store, clock=clock, key_spec=old_spec, root_validity=ROOT_VALIDITY)
    clock.advance(timedelta(days=81))
    ca = await InternalCA.open(store, clock=clock, key_spec=new_spec, root_validity=ROOT_VALIDITY)
    old = ca.state.active
    state = await ca.rotate_root()
    new = state.active
    (cross,) = state.crosses
    assert (cross.subject_id, cross.issuer_id) == (new.id, old.id)
    certificate = cross.certificate

    assert certificate.subject == new.certificate.subject
    assert certificate.issuer == old.certificate.subject
    assert same_public_key(new.private_key.public_key(), certificate.public_key())
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign
    # Same key identifier as the new root: leaves point at either; signed by the old key.
    assert ski(certificate) == ski(new.certificate)
    aki = certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski(old.certificate)
    certificate.verify_directly_issued_by(old.certificate)
    with pytest.raises((InvalidSignature, ValueError)):
        certificate.verify_directly_issued_by(new.certificate)
    # Valid only while both roots are: here it ends with the old root.
    assert certificate.not_valid_before_utc == max(
        old.certificate.not_valid_before_utc, new.certificate.not_valid_before_utc
    )
    assert certificate.not_valid_after_utc == old.certificate.not_valid_after_utc
    assert certificate.not_valid_after_utc < new.certificate.not_valid_after_utc
    assert not pem.is_self_signed(certificate)


def test_no_cross_certificate_between_roots_that_are_never_valid_together(clock: FakeClock) -> None:
    old = create_root(KeySpec.ECDSA_P256, clock.now, validity=timedelta(days=1))
    new = create_root(KeySpec.ECDSA_P256, clock.now + timedelta(days=2))
    assert cross_sign(old, new.certificate) is None


async def test_a_rotation_away_from_an_expired_root_has_no_cross_certificate(clock: FakeClock) -> None:
    ca = await InternalCA.open(MemoryStore(), clock=clock, root_validity=timedelta(days=1))
    clock.advance(timedelta(days=2))
    state = await ca.rotate_root()
    assert state.phase is Phase.TRUSTING and state.crosses == ()


async def test_cross_certificates_and_retired_roots_are_persisted_and_reloaded(
    tmp_path: Path, clock: FakeClock
) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    old = ca.state.active
    new = (await ca.rotate_root()).active
    cross_file = tmp_path / ca_persistence.cross_entry(new.id)
    assert cross_file.name == f"cross-{new.id}.crt"
    assert cross_file.stat().st_mode & 0o777 == 0o644
    assert index_of(tmp_path)["crosses"] == {new.id: old.id}

    reloaded = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    assert reloaded.state.crosses == ca.state.crosses

    await ca.sign_with_new_root()
    await ca.finish_root_rotation()
    # Retired: certificate kept (public), key destroyed.
    assert not (tmp_path / ca_persistence.key_entry(old.id)).exists()
    assert (tmp_path / ca_persistence.certificate_entry(old.id)).exists()
    assert cross_file.exists()
    index = index_of(tmp_path)
    assert (index["phase"], index["previous"], index["retired"]) == ("stable", None, [old.id])

    reloaded = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    assert reloaded.state.phase is Phase.STABLE
    assert reloaded.state.retired == (old.certificate,)
    assert reloaded.state.crosses == ca.state.crosses
    assert await reloaded.trust_bundle() == new.pem
    assert await reloaded.xds_trust_bundle() == new.pem + old.pem
    shown = await ca_show(tmp_path)
    assert [r["sha256_fingerprint"] for r in shown["retired_roots"]] == [
        pem.fingerprint_sha256(old.certificate)
    ]


@pytest.mark.parametrize("damage", ["missing", "foreign-signer", "other-root"])
async def test_a_damaged_cross_certificate_makes_the_state_unusable(
    tmp_path: Path, clock: FakeClock, damage: str
) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    new = (await ca.rotate_root()).active
    cross_file = tmp_path / ca_persistence.cross_entry(new.id)
    if damage == "missing":
        cross_file.unlink()
        expected = "is missing"
    elif damage == "foreign-signer":  # right names and key, wrong signature
        foreign = create_root(KeySpec.ECDSA_P256, clock.now)
        forged = cross_sign(Root(foreign.certificate, foreign.private_key), new.certificate)
        assert forged is not None
        cross_file.write_text(pem.to_pem([forged]))
        expected = "does not certify"
    else:  # a valid certificate, of the wrong thing
        cross_file.write_text(new.pem)
        expected = "does not certify"
    with pytest.raises(CertificateError, match=expected):
        await InternalCA.open(DirectoryStore(tmp_path), clock=clock)


async def test_a_rotation_begun_without_a_cross_certificate_gets_one_when_opened(
    tmp_path: Path, clock: FakeClock
) -> None:
    """State left mid-rotation by a meshcp that made no cross certificates."""
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    state = await ca.rotate_root()
    (tmp_path / ca_persistence.cross_entry(state.active.id)).unlink()
    index = index_of(tmp_path)
    del index["crosses"], index["retired"]
    (tmp_path / ca_persistence.STATE_ENTRY).write_text(json.dumps(index))

    upgraded = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    (cross,) = upgraded.state.crosses
    assert state.previous is not None
    assert (cross.subject_id, cross.issuer_id) == (state.active.id, state.previous.id)
    cross.certificate.verify_directly_issued_by(state.previous.certificate)
    assert (tmp_path / ca_persistence.cross_entry(state.active.id)).exists()
    assert (
        await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    ).state.crosses == upgraded.state.crosses


async def test_a_retired_root_is_trusted_for_xds_only_and_until_it_expires(
    tmp_path: Path, clock: FakeClock
) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock, root_validity=ROOT_VALIDITY)
    old = ca.state.active
    bootstrap = await ca.issue(xds_client_request(PROXY))  # in a proxy's bootstrap, for life
    clock.advance(timedelta(days=81))
    new = (await ca.rotate_root()).active
    await ca.sign_with_new_root()
    await ca.finish_root_rotation()

    assert await ca.trust_bundle() == new.pem  # workloads (SDS): current roots only
    assert await ca.xds_trust_bundle() == new.pem + old.pem
    assert verify_xds_client(bootstrap.chain_pem, await ca.xds_trust_bundle(), clock.now, PROXY.name) == PROXY
    with pytest.raises(XdsClientRejected) as refused:
        verify_xds_client(bootstrap.chain_pem, await ca.trust_bundle(), clock.now, PROXY.name)
    assert refused.value.reason is RejectReason.UNTRUSTED
    foreign = await (await InternalCA.open(MemoryStore(), clock=clock)).issue(xds_client_request(PROXY))
    with pytest.raises(XdsClientRejected) as refused:
        verify_xds_client(foreign.chain_pem, await ca.xds_trust_bundle(), clock.now, PROXY.name)
    assert refused.value.reason is RejectReason.UNTRUSTED

    # The old root expires (and with it the bootstrap certificate and the cross certificate).
    clock.now = old.certificate.not_valid_after_utc
    assert await ca.xds_trust_bundle() == new.pem + old.pem
    clock.advance(timedelta(seconds=1))
    assert await ca.xds_trust_bundle() == new.pem
    assert len(await server_chain(ca)) == 1

    # Files are pruned at the next change of state.
    newest = (await ca.rotate_root()).active
    assert ca.state.retired == ()
    assert [(c.subject_id, c.issuer_id) for c in ca.state.crosses] == [(newest.id, new.id)]
    assert not (tmp_path / ca_persistence.certificate_entry(old.id)).exists()
    assert not (tmp_path / ca_persistence.cross_entry(new.id)).exists()
    assert index_of(tmp_path)["retired"] == []


async def test_the_xds_server_chain_in_each_phase_verifies_for_every_proxy(clock: FakeClock) -> None:
    """Proxies trust the roots their bootstrap was written with: before a rotation the old
    root, during it both, after it the new one. Each must accept the server at all times."""
    ca = await InternalCA.open(MemoryStore(), clock=clock, root_validity=ROOT_VALIDITY)
    a = ca.state.active
    chain = await server_chain(ca)
    assert len(chain) == 1 and verifies(chain, [a], clock)

    clock.advance(timedelta(days=1))
    b = (await ca.rotate_root()).active
    (cross_ba,) = (c.certificate for c in ca.state.crosses)
    chain = await server_chain(ca)  # TRUSTING: the old root signs, nothing to add
    assert chain[0].issuer == a.certificate.subject and len(chain) == 1
    assert verifies(chain, [a], clock) and verifies(chain, [b, a], clock)

    await ca.sign_with_new_root()
    chain = await server_chain(ca)  # ROTATING: the new root signs, the cross certificate follows
    assert chain[0].issuer == b.certificate.subject and chain[1:] == [cross_ba]
    assert not verifies(chain[:1], [a], clock)  # without it, old proxies would be locked out
    for roots in ([a], [b], [b, a]):
        assert verifies(chain, roots, clock)

    await ca.finish_root_rotation()
    chain = await server_chain(ca)  # STABLE(B), A retired
    assert chain[1:] == [cross_ba]
    assert verifies(chain, [a], clock) and verifies(chain, [b], clock)

    clock.advance(timedelta(days=1))
    c = (await ca.rotate_root()).active
    await ca.sign_with_new_root()
    await ca.finish_root_rotation()
    cross_cb = ca.state.crosses[0].certificate
    chain = await server_chain(ca)  # two rotations: leaf -> C, or -> B, or -> A
    assert chain[1:] == [cross_cb, cross_ba]
    for roots in ([a], [b], [c]):
        assert verifies(chain, roots, clock)

    clock.now = a.certificate.not_valid_after_utc + timedelta(seconds=1)
    chain = await server_chain(ca)  # A expired: the chain stops at B
    assert chain[1:] == [cross_cb]
    assert verifies(chain, [b], clock) and verifies(chain, [c], clock)
    assert not verifies(chain, [a], clock)
