"""`meshcp ca show|rotate|finish-rotation`, as functions returning plain data.

They work on the CA's store: a state directory or the CA's Kubernetes Secret (the
controller picks up a change at its next trust tick; `rotate` and `finish-rotation` are
writes, so they are not made while another writer is mid-update: the Secret store retries
on conflicts). They never return or print key material.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509

from meshcp.certs import ca_persistence, pem
from meshcp.certs.clock import Clock, utc_now
from meshcp.certs.internal import InternalCA
from meshcp.certs.keys import KeySpec, describe_public_key
from meshcp.certs.provider import CertificateError
from meshcp.certs.storage import DirectoryStore, StateStore

CaStore = StateStore | Path | str


def describe_root(certificate: x509.Certificate) -> dict[str, str]:
    """The public facts about a root an operator compares and schedules by."""
    return {
        "subject": certificate.subject.rfc4514_string(),
        "sha256_fingerprint": pem.fingerprint_sha256(certificate),
        "not_before": certificate.not_valid_before_utc.isoformat(),
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "key_type": describe_public_key(certificate.public_key()),
    }


def _store(where: CaStore) -> StateStore:
    return DirectoryStore(where) if isinstance(where, Path | str) else where


async def ca_show(state_dir: CaStore) -> dict[str, Any]:
    """The CA in `state_dir`: phase, newest root, mid-rotation the old root (which still
    signs while the phase is "trusting"), and the retired roots (key destroyed, still
    trusted for xDS client certificates until they expire)."""
    store = _store(state_dir)
    index = await ca_persistence.read_index(store)
    roots = await ca_persistence.load_root_certificates(store)
    if roots is None or index is None:
        raise CertificateError("internal", f"no CA found in {store.location}")
    active, previous = roots
    retired = await ca_persistence.load_retired_certificates(store)
    return {
        "phase": str(index[2]),
        "root": describe_root(active),
        "previous_root": None if previous is None else describe_root(previous),
        "retired_roots": [describe_root(certificate) for certificate in retired],
    }


async def ca_rotate(
    state_dir: CaStore, *, key_spec: KeySpec = KeySpec.ECDSA_P256, clock: Clock = utc_now
) -> dict[str, Any]:
    """Start a root rotation: a new root, trusted at once and signing once every proxy
    trusts it (TRUSTING, then ROTATING); the old one is trusted until
    `ca_finish_rotation` (or the controller, once every proxy has the new certificates)."""
    store = _store(state_dir)
    ca = await InternalCA.open(store, key_spec=key_spec, clock=clock, create=False)
    await ca.rotate_root()
    return await ca_show(store)


async def ca_finish_rotation(state_dir: CaStore) -> dict[str, Any]:
    """Stop trusting the old root now, whether or not every proxy has moved on (it stays
    trusted for xDS client certificates, retired, until it expires)."""
    store = _store(state_dir)
    ca = await InternalCA.open(store, create=False)
    await ca.finish_root_rotation()
    return await ca_show(store)
