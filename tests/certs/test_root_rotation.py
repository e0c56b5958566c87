from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshcp.certs import ca_persistence, pem
from meshcp.certs.authority import create_root
from meshcp.certs.identity import Identity
from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import workload_request
from meshcp.certs.keys import KeySpec, key_spec_of
from meshcp.certs.provider import CertificateError, IssuedCertificate
from meshcp.certs.root_rotation import Phase, root_rotation_due
from meshcp.certs.storage import DirectoryStore, MemoryStore

from .support import FakeClock

IDENTITY = Identity("ns", "sa")


def trusted(issued: IssuedCertificate, bundle: str, clock: FakeClock) -> bool:
    verifier = (
        PolicyBuilder().store(Store(pem.load_certificates(bundle))).time(clock.now).build_client_verifier()
    )
    try:
        verifier.verify(issued.certificate, [])
    except VerificationError:
        return False
    return True


async def test_rotation_trusts_both_roots_and_signs_with_the_new_one(
    tmp_path: Path, clock: FakeClock
) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    old_root = ca.state.active
    before = await ca.issue(workload_request(IDENTITY))

    state = await ca.rotate_root()
    assert state.phase is Phase.ROTATING
    assert state.previous == old_root
    assert state.active.id != old_root.id
    bundle = await ca.trust_bundle()
    assert {pem.fingerprint_sha256(c) for c in pem.load_certificates(bundle)} == {
        pem.fingerprint_sha256(old_root.certificate),
        pem.fingerprint_sha256(state.active.certificate),
    }
    after = await ca.issue(workload_request(IDENTITY))
    assert after.certificate.issuer == state.active.certificate.subject
    assert trusted(before, bundle, clock)
    assert trusted(after, bundle, clock)

    await ca.finish_root_rotation()
    assert ca.state.phase is Phase.STABLE
    bundle = await ca.trust_bundle()
    assert trusted(after, bundle, clock)
    assert not trusted(before, bundle, clock)
    assert not (tmp_path / ca_persistence.key_entry(old_root.id)).exists()
    assert not (tmp_path / ca_persistence.certificate_entry(old_root.id)).exists()


async def test_rotation_state_survives_a_restart_mid_rotation(tmp_path: Path, clock: FakeClock) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    old_id = ca.state.active.id
    new_id = (await ca.rotate_root()).active.id

    reloaded = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    assert reloaded.state.phase is Phase.ROTATING
    assert reloaded.state.active.id == new_id
    assert reloaded.state.previous is not None
    assert reloaded.state.previous.id == old_id
    assert await reloaded.trust_bundle() == await ca.trust_bundle()

    await reloaded.finish_root_rotation()
    final = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    assert final.state.phase is Phase.STABLE
    assert final.state.active.id == new_id
    assert final.state.previous is None


async def test_second_rotation_while_rotating_is_refused(internal_ca: InternalCA) -> None:
    await internal_ca.rotate_root()
    with pytest.raises(CertificateError, match="already in progress"):
        await internal_ca.rotate_root()


async def test_finish_is_idempotent(internal_ca: InternalCA) -> None:
    active = internal_ca.state.active
    state = await internal_ca.finish_root_rotation()
    assert state.phase is Phase.STABLE
    assert state.active == active


async def test_new_root_uses_the_configured_key_type_and_a_distinct_subject(
    internal_ca: InternalCA, clock: FakeClock
) -> None:
    store = MemoryStore()
    await InternalCA.open(store, clock=clock)  # an ECDSA root from an earlier configuration
    ca = await InternalCA.open(store, clock=clock, key_spec=KeySpec.RSA_2048)
    old = ca.state.active
    assert key_spec_of(old.private_key) is KeySpec.ECDSA_P256  # a persisted root keeps its type
    new = (await ca.rotate_root()).active
    assert key_spec_of(new.private_key) is KeySpec.RSA_2048
    assert new.certificate.subject != old.certificate.subject


def test_rotation_decision_follows_the_wall_clock(clock: FakeClock) -> None:
    root = create_root(KeySpec.ECDSA_P256, clock.now, validity=timedelta(days=1000)).certificate
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    boundary = root.not_valid_after_utc - lifetime * 0.2
    assert not root_rotation_due(root, boundary - timedelta(seconds=1))
    assert root_rotation_due(root, boundary + timedelta(seconds=1))
    assert root_rotation_due(root, boundary + timedelta(seconds=1), share=0.2)
    assert not root_rotation_due(root, boundary + timedelta(seconds=1), share=0.1)
    with pytest.raises(ValueError, match="share"):
        root_rotation_due(root, clock.now, share=1.5)


async def test_automatic_rotation_ahead_of_root_expiry(clock: FakeClock) -> None:
    ca = await InternalCA.open(MemoryStore(), clock=clock, root_validity=timedelta(days=100))
    assert not await ca.rotate_root_if_due()
    clock.advance(timedelta(days=81))
    assert ca.root_rotation_due()
    assert await ca.rotate_root_if_due()
    assert ca.state.phase is Phase.ROTATING
    assert not ca.root_rotation_due()  # never starts a second rotation on top of one
