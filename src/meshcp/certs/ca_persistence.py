"""Saving and loading the built-in CA's state through a `StateStore`.

Layout (flat names, so the same entries fit a Kubernetes Secret):

    ca-state.json          {"format": 1, "active": "<id>", "previous": "<id>" | null}
    root-<id>.crt          root certificate (PEM)
    root-<id>.key          root private key (PKCS#8 PEM, secret: mode 0600 on disk)

Root entries are written once and never changed; `ca-state.json` is the single commit
point. Writing a new root's files before the index, and removing an old root's files
only after the index no longer names it, means a crash at any moment leaves a state that
loads (at worst with an unused root file lying around).
"""

from __future__ import annotations

import json

from cryptography import x509

from meshcp.certs import pem
from meshcp.certs.authority import Root
from meshcp.certs.authority import root_id as root_id_of
from meshcp.certs.keys import load_private_key, private_key_pem
from meshcp.certs.provider import CertificateError
from meshcp.certs.root_rotation import CAState, Phase
from meshcp.certs.storage import StateStore

STATE_ENTRY = "ca-state.json"
_FORMAT = 1
_PROVIDER = "internal"


def certificate_entry(root_id: str) -> str:
    return f"root-{root_id}.crt"


def key_entry(root_id: str) -> str:
    return f"root-{root_id}.key"


def _corrupt(store: StateStore, detail: str) -> CertificateError:
    return CertificateError(_PROVIDER, f"CA state in {store.location} is unusable: {detail}")


async def save_root(store: StateStore, root: Root) -> None:
    """Write a root's files; they are not used until `save_state` names the root."""
    await store.write(key_entry(root.id), private_key_pem(root.private_key).encode("ascii"), secret=True)
    await store.write(certificate_entry(root.id), root.pem.encode("ascii"))


async def delete_root(store: StateStore, root_id: str) -> None:
    await store.delete(key_entry(root_id))
    await store.delete(certificate_entry(root_id))


async def save_state(store: StateStore, state: CAState) -> None:
    """Commit `state`; its roots must already have been saved."""
    index = {
        "format": _FORMAT,
        "phase": str(state.phase),
        "active": state.active.id,
        "previous": None if state.previous is None else state.previous.id,
    }
    await store.write(STATE_ENTRY, (json.dumps(index, indent=2) + "\n").encode("ascii"))


async def read_index(store: StateStore) -> tuple[str, str | None, Phase] | None:
    """The committed (active, previous) root ids, or None without a CA; reads no key."""
    raw = await store.read(STATE_ENTRY)
    if raw is None:
        return None
    try:
        index = json.loads(raw)
    except ValueError as exc:
        raise _corrupt(store, f"{STATE_ENTRY} is not JSON ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != _FORMAT:
        raise _corrupt(store, f"{STATE_ENTRY} has an unknown format")
    active, previous = index.get("active"), index.get("previous")
    if not isinstance(active, str) or not (previous is None or isinstance(previous, str)):
        raise _corrupt(store, f"{STATE_ENTRY} does not name the roots")
    allowed = (Phase.STABLE,) if previous is None else (Phase.TRUSTING, Phase.ROTATING)
    phase = index.get("phase")
    if phase not in allowed:
        raise _corrupt(
            store, f"{STATE_ENTRY} has phase {phase!r}, expected one of {[str(p) for p in allowed]}"
        )
    return active, previous, Phase(str(phase))


async def _read_certificate(store: StateStore, root_id: str) -> x509.Certificate:
    raw = await store.read(certificate_entry(root_id))
    if raw is None:
        raise _corrupt(store, f"{certificate_entry(root_id)} is missing")
    try:
        certificate = pem.load_certificates(raw)[0]
    except ValueError as exc:
        raise _corrupt(store, f"{certificate_entry(root_id)} is not a PEM certificate ({exc})") from exc
    if root_id_of(certificate) != root_id:
        raise _corrupt(store, f"{certificate_entry(root_id)} holds a different certificate")
    return certificate


async def _read_root(store: StateStore, root_id: str) -> Root:
    certificate = await _read_certificate(store, root_id)
    raw_key = await store.read(key_entry(root_id))
    if raw_key is None:
        raise _corrupt(store, f"{key_entry(root_id)} is missing")
    try:
        return Root(certificate, load_private_key(raw_key))
    except ValueError as exc:
        raise _corrupt(store, f"root {root_id}: {exc}") from exc


async def load_state(store: StateStore) -> CAState | None:
    """The persisted state with keys, or None if the store holds no CA yet."""
    index = await read_index(store)
    if index is None:
        return None
    active, previous, phase = index
    return CAState(
        active=await _read_root(store, active),
        previous=None if previous is None else await _read_root(store, previous),
        signing_previous=phase == Phase.TRUSTING,
    )


async def load_root_certificates(
    store: StateStore,
) -> tuple[x509.Certificate, x509.Certificate | None] | None:
    """The active and previous root certificates without reading any key (for `ca show`)."""
    index = await read_index(store)
    if index is None:
        return None
    active, previous, _ = index
    return (
        await _read_certificate(store, active),
        None if previous is None else await _read_certificate(store, previous),
    )
