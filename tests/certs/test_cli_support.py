from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from meshcp.certs import pem
from meshcp.certs.cli_support import ca_finish_rotation, ca_rotate, ca_show
from meshcp.certs.internal import InternalCA
from meshcp.certs.provider import CertificateError
from meshcp.certs.storage import DirectoryStore

from .support import FakeClock


async def test_show_describes_the_root_without_key_material(tmp_path: Path, clock: FakeClock) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    root = ca.state.active.certificate
    shown = await ca_show(tmp_path)
    assert shown["phase"] == "stable"
    assert shown["previous_root"] is None
    assert shown["retired_roots"] == []
    assert shown["root"] == {
        "subject": root.subject.rfc4514_string(),
        "sha256_fingerprint": pem.fingerprint_sha256(root),
        "not_before": root.not_valid_before_utc.isoformat(),
        "not_after": root.not_valid_after_utc.isoformat(),
        "key_type": "ecdsa-p256",
    }
    text = json.dumps(shown)
    assert "PRIVATE" not in text
    assert "BEGIN" not in text


async def test_show_does_not_read_the_key(tmp_path: Path, clock: FakeClock) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    (tmp_path / f"root-{ca.state.active.id}.key").unlink()
    assert (await ca_show(tmp_path))["root"]["subject"].startswith("CN=meshcp root CA")


async def test_show_on_an_empty_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="no CA found in"):
        await ca_show(tmp_path)


async def test_offline_rotation_then_finish(tmp_path: Path, clock: FakeClock) -> None:
    ca = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    old_fingerprint = pem.fingerprint_sha256(ca.state.active.certificate)

    shown = await ca_rotate(tmp_path, clock=clock)
    assert shown["phase"] == "trusting"  # the controller moves on once every proxy trusts both
    assert shown["previous_root"]["sha256_fingerprint"] == old_fingerprint
    assert shown["root"]["sha256_fingerprint"] != old_fingerprint
    assert await ca_show(tmp_path) == shown

    restarted = await InternalCA.open(DirectoryStore(tmp_path), clock=clock)
    assert len(pem.load_certificates(await restarted.trust_bundle())) == 2
    assert pem.fingerprint_sha256(restarted.state.signing_root.certificate) == old_fingerprint

    with pytest.raises(CertificateError, match="already in progress"):
        await ca_rotate(tmp_path, clock=clock)

    finished = await ca_finish_rotation(tmp_path)
    assert finished["phase"] == "stable"
    assert finished["root"] == shown["root"]
    assert finished["previous_root"] is None
    # Kept for xDS client certificates in existing bootstraps, without its key.
    assert finished["retired_roots"] == [shown["previous_root"]]


async def test_rotate_refuses_to_invent_a_ca(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="no CA found"):
        await ca_rotate(tmp_path)
    assert os.listdir(tmp_path) == []
