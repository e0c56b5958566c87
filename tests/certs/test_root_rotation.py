from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshcp.certs import ca_persistence, pem
from meshcp.certs.authority import create_root
from meshcp.certs.cli_support import ca_show
from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import workload_request
from meshcp.certs.keys import KeySpec, key_spec_of
from meshcp.certs.provider import CertificateError, IssuedCertificate
from meshcp.certs.root_rotation import Phase, root_rotation_due
from meshcp.certs.storage import DirectoryStore, MemoryStore
from meshcp.identity import Identity

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
    assert state.phase is Phase.TRUSTING
    assert state.previous == old_root
    assert state.active.id != old_root.id
    bundle = await ca.trust_bundle()
    assert {pem.fingerprint_sha256(c) for c in pem.load_certificates(bundle)} == {
        pem.fingerprint_sha256(old_root.certificate),
        pem.fingerprint_sha256(state.active.certificate),
    }
    while_trusting = await ca.issue(workload_request(IDENTITY))
    assert while_trusting.certificate.issuer == old_root.certificate.subject

    state = await ca.sign_with_new_root()
    assert state.phase is Phase.ROTATING
    assert await ca.trust_bundle() == bundle
    after = await ca.issue(workload_request(IDENTITY))
    assert after.certificate.issuer == state.active.certificate.subject
    assert trusted(before, bundle, clock)
    assert trusted(while_trusting, bundle, clock)
    assert trusted(after, bundle, clock)

    await ca.finish_root_rotation()
    assert ca.state.phase is Phase.STABLE
    bundle = await ca.trust_bundle()
    assert trusted(after, bundle, clock)
    assert not trusted(before, bundle, clock)
    assert not trusted(while_trusting, bundle, clock)
    assert not (tmp_path / ca_persistence.key_entry(old_root.id)).exists()
    # The certificate is kept, retired: xDS client certificates in bootstraps still chain to it.
    assert (tmp_path / ca_persistence.certificate_entry(old_root.id)).exists()
    assert ca.state.retired == (old_root.certificate,)
    assert trusted(before, await ca.xds_trust_bundle(), clock)


async def test_rotation_state_survives_a_restart_mid_rotation(tmp_path: Path, clock: FakeClock) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    old_id = ca.state.active.id
    await ca.rotate_root()
    new_id = (await ca.sign_with_new_root()).active.id

    reloaded = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    assert reloaded.state.phase is Phase.ROTATING
    assert reloaded.state.active.id == new_id
    assert reloaded.state.signing_root.id == new_id
    assert reloaded.state.previous is not None
    assert reloaded.state.previous.id == old_id
    assert await reloaded.trust_bundle() == await ca.trust_bundle()
    issued = await reloaded.issue(workload_request(IDENTITY))
    assert issued.certificate.issuer == reloaded.state.active.certificate.subject

    await reloaded.finish_root_rotation()
    final = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    assert final.state.phase is Phase.STABLE
    assert final.state.active.id == new_id
    assert final.state.previous is None


def persisted_phase(directory: Path) -> str:
    index = json.loads((directory / ca_persistence.STATE_ENTRY).read_text())
    assert isinstance(index, dict)
    return str(index["phase"])


async def test_while_trusting_the_old_root_signs_until_sign_with_new_root(
    tmp_path: Path, clock: FakeClock
) -> None:
    """A proxy that holds only the old root's bundle must trust every certificate issued
    before `sign_with_new_root`; from then on the new root signs."""
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    old_root = ca.state.active
    state = await ca.rotate_root()
    new_root = state.active
    assert state.phase is Phase.TRUSTING
    assert state.signing_root == old_root
    assert persisted_phase(tmp_path) == "trusting"
    bundle = await ca.trust_bundle()
    assert pem.load_certificates(bundle) == [new_root.certificate, old_root.certificate]

    while_trusting = await ca.issue(workload_request(IDENTITY))
    assert while_trusting.certificate.issuer == old_root.certificate.subject
    assert trusted(while_trusting, old_root.pem, clock)  # a proxy not yet given the new bundle
    assert trusted(while_trusting, bundle, clock)

    state = await ca.sign_with_new_root()
    assert state.phase is Phase.ROTATING
    assert state.signing_root == new_root
    assert state.previous == old_root
    assert persisted_phase(tmp_path) == "rotating"
    assert await ca.trust_bundle() == bundle  # only the signer changes
    after = await ca.issue(workload_request(IDENTITY))
    assert after.certificate.issuer == new_root.certificate.subject
    assert not trusted(after, old_root.pem, clock)
    assert trusted(after, bundle, clock)


async def test_the_trusting_phase_survives_a_reload_from_the_directory_store(
    tmp_path: Path, clock: FakeClock
) -> None:
    live = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)  # e.g. the controller
    old_id = live.state.active.id
    tool = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)  # e.g. `meshcp ca rotate`
    new_id = (await tool.rotate_root()).active.id

    restarted = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    assert restarted.state.phase is Phase.TRUSTING
    assert restarted.state.active.id == new_id
    assert restarted.state.signing_root.id == old_id
    assert await restarted.trust_bundle() == await tool.trust_bundle()
    issued = await restarted.issue(workload_request(IDENTITY))
    assert issued.certificate.issuer == restarted.state.signing_root.certificate.subject

    assert await live.reload()
    trusting = live.state
    assert trusting.phase is Phase.TRUSTING
    assert trusting.signing_root.id == old_id
    assert not await live.reload()

    # TRUSTING -> ROTATING names the same two roots: reload must still notice the change.
    await tool.sign_with_new_root()
    assert await live.reload()
    rotating = live.state
    assert rotating.phase is Phase.ROTATING
    assert rotating.signing_root.id == new_id
    assert not await live.reload()


async def test_sign_with_new_root_outside_trusting_changes_nothing(tmp_path: Path, clock: FakeClock) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    index = tmp_path / ca_persistence.STATE_ENTRY
    stable = ca.state
    written = index.read_bytes()
    assert await ca.sign_with_new_root() is stable
    assert ca.state is stable and index.read_bytes() == written
    assert stable.sign_with_new_root().phase is Phase.STABLE

    await ca.rotate_root()
    rotating = await ca.sign_with_new_root()
    written = index.read_bytes()
    assert await ca.sign_with_new_root() is rotating
    assert ca.state is rotating and index.read_bytes() == written
    assert rotating.sign_with_new_root() == rotating

    finished = await ca.finish_root_rotation()
    assert await ca.sign_with_new_root() is finished
    assert ca.state.phase is Phase.STABLE and ca.state.previous is None
    issued = await ca.issue(workload_request(IDENTITY))
    assert issued.certificate.issuer == finished.active.certificate.subject


@pytest.mark.parametrize(
    ("phase", "with_previous"),
    [
        ("trusting", False),
        ("rotating", False),
        ("stable", True),
        ("paused", True),
        (None, True),
    ],
)
async def test_an_index_whose_phase_does_not_fit_its_roots_is_corrupt(
    tmp_path: Path, clock: FakeClock, phase: str | None, with_previous: bool
) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    await ca.rotate_root()  # both roots' files exist, so only the index is wrong
    index = tmp_path / ca_persistence.STATE_ENTRY
    content = json.loads(index.read_text())
    content["phase"] = phase
    if not with_previous:
        content["previous"] = None
    index.write_text(json.dumps(content))

    expected = rf"is unusable: ca-state\.json has phase {re.escape(repr(phase))}, expected one of"
    with pytest.raises(CertificateError, match=expected):
        await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    with pytest.raises(CertificateError, match=expected):
        await ca.reload()
    with pytest.raises(CertificateError, match=expected):
        await ca_show(tmp_path)


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
    old_root = ca.state.active
    assert not await ca.rotate_root_if_due()
    clock.advance(timedelta(days=81))
    assert ca.root_rotation_due()
    assert await ca.rotate_root_if_due()
    assert ca.state.phase is Phase.TRUSTING
    assert ca.state.signing_root == old_root  # until every proxy trusts the new root
    assert not ca.root_rotation_due()  # never starts a second rotation on top of one
    assert not await ca.rotate_root_if_due()
    assert (await ca.sign_with_new_root()).phase is Phase.ROTATING
    assert not ca.root_rotation_due()
    await ca.finish_root_rotation()
    assert not ca.root_rotation_due()  # the new root is fresh
