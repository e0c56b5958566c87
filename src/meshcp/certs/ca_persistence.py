"""Saving and loading the built-in CA's state through a `StateStore`.

Layout (flat names, so the same entries fit a Kubernetes Secret):

    ca-state.json          {"format": 1, "phase": ..., "active": "<id>", "previous": "<id>" | null,
                            "retired": ["<id>", ...], "crosses": {"<new-id>": "<old-id>", ...}}
    root-<id>.crt          root certificate (PEM)
    root-<id>.key          root private key (PKCS#8 PEM, secret: mode 0600 on disk);
                           a retired root has none
    cross-<new-id>.crt     the new root's key certified by the old root (PEM)

Entries are written once and never changed; `ca-state.json` is the single commit point.
Writing a new entry before the index names it, and removing one only after the index no
longer needs it, means a crash at any moment leaves a state that loads (at worst with an
unused file lying around). `retired` and `crosses` are optional, so state written before
they existed still loads (as "nothing retired, no cross certificates").
"""

from __future__ import annotations

import json
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshcp.certs import pem
from meshcp.certs.authority import Root
from meshcp.certs.authority import root_id as root_id_of
from meshcp.certs.keys import load_private_key, private_key_pem, same_public_key
from meshcp.certs.provider import CertificateError
from meshcp.certs.root_rotation import CAState, CrossCertificate, Phase
from meshcp.certs.storage import StateStore

STATE_ENTRY = "ca-state.json"
_FORMAT = 1
_PROVIDER = "internal"


def certificate_entry(root_id: str) -> str:
    return f"root-{root_id}.crt"


def key_entry(root_id: str) -> str:
    return f"root-{root_id}.key"


def cross_entry(new_root_id: str) -> str:
    return f"cross-{new_root_id}.crt"


def _corrupt(store: StateStore, detail: str) -> CertificateError:
    return CertificateError(_PROVIDER, f"CA state in {store.location} is unusable: {detail}")


async def save_root(store: StateStore, root: Root) -> None:
    """Write a root's files; they are not used until `save_state` names the root."""
    await store.write(key_entry(root.id), private_key_pem(root.private_key).encode("ascii"), secret=True)
    await store.write(certificate_entry(root.id), root.pem.encode("ascii"))


async def save_cross(store: StateStore, cross: CrossCertificate) -> None:
    """Write a cross certificate; it is not used until `save_state` names it."""
    await store.write(cross_entry(cross.subject_id), pem.to_pem([cross.certificate]).encode("ascii"))


async def delete_root(store: StateStore, root_id: str) -> None:
    await store.delete(key_entry(root_id))
    await store.delete(certificate_entry(root_id))


async def delete_root_key(store: StateStore, root_id: str) -> None:
    """Destroy a root's key, keeping its certificate (a retired root)."""
    await store.delete(key_entry(root_id))


async def delete_unused(store: StateStore, before: CAState, after: CAState) -> None:
    """Remove what `before` needed and the committed `after` does not: keys of roots that
    retired, files of roots and cross certificates that were pruned."""
    kept = {root.id for root in after.roots} | {root_id_of(cert) for cert in after.retired}
    retired = {root_id_of(cert) for cert in after.retired}
    for root in before.roots:
        if root.id in retired:
            await delete_root_key(store, root.id)
    for rid in {root.id for root in before.roots} | {root_id_of(cert) for cert in before.retired}:
        if rid not in kept:
            await delete_root(store, rid)
    crosses = {cross.subject_id for cross in after.crosses}
    for cross in before.crosses:
        if cross.subject_id not in crosses:
            await store.delete(cross_entry(cross.subject_id))


async def save_state(store: StateStore, state: CAState) -> None:
    """Commit `state`; its roots and cross certificates must already have been saved."""
    index = {
        "format": _FORMAT,
        "phase": str(state.phase),
        "active": state.active.id,
        "previous": None if state.previous is None else state.previous.id,
        "retired": [root_id_of(cert) for cert in state.retired],
        "crosses": {cross.subject_id: cross.issuer_id for cross in state.crosses},
    }
    await store.write(STATE_ENTRY, (json.dumps(index, indent=2) + "\n").encode("ascii"))


async def _read_index_json(store: StateStore) -> dict[str, Any] | None:
    raw = await store.read(STATE_ENTRY)
    if raw is None:
        return None
    try:
        index = json.loads(raw)
    except ValueError as exc:
        raise _corrupt(store, f"{STATE_ENTRY} is not JSON ({exc})") from exc
    if not isinstance(index, dict) or index.get("format") != _FORMAT:
        raise _corrupt(store, f"{STATE_ENTRY} has an unknown format")
    return index


def _parse_index(store: StateStore, index: dict[str, Any]) -> tuple[str, str | None, Phase]:
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


def _parse_history(store: StateStore, index: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The retired root ids and the cross certificates (new id -> old id), both optional."""
    retired = index.get("retired", [])
    crosses = index.get("crosses", {})
    if not isinstance(retired, list) or not all(isinstance(rid, str) for rid in retired):
        raise _corrupt(store, f"{STATE_ENTRY} has a malformed list of retired roots")
    if not isinstance(crosses, dict) or not all(isinstance(old, str) for old in crosses.values()):
        raise _corrupt(store, f"{STATE_ENTRY} has a malformed table of cross certificates")
    return retired, crosses


async def read_index(store: StateStore) -> tuple[str, str | None, Phase] | None:
    """The committed (active, previous) root ids and phase, or None without a CA; reads no key."""
    index = await _read_index_json(store)
    return None if index is None else _parse_index(store, index)


async def _read_pem(store: StateStore, entry: str) -> x509.Certificate:
    """The (first) certificate in `entry`, which must exist."""
    raw = await store.read(entry)
    if raw is None:
        raise _corrupt(store, f"{entry} is missing")
    try:
        return pem.load_certificates(raw)[0]
    except ValueError as exc:
        raise _corrupt(store, f"{entry} is not a PEM certificate ({exc})") from exc


async def _read_certificate(store: StateStore, root_id: str) -> x509.Certificate:
    certificate = await _read_pem(store, certificate_entry(root_id))
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


async def _read_cross(
    store: StateStore, new_id: str, old_id: str, roots: dict[str, x509.Certificate]
) -> CrossCertificate:
    """A cross certificate, checked against the two roots it joins: a cross certificate
    that does not certify the new root's key with the old root's signature would make
    the xDS server present a chain nobody can verify."""
    entry = cross_entry(new_id)
    new, old = roots.get(new_id), roots.get(old_id)
    if new is None or old is None:
        raise _corrupt(store, f"{entry} joins roots the state does not name ({new_id}, {old_id})")
    certificate = await _read_pem(store, entry)
    public_key = new.public_key()
    if (
        certificate.subject != new.subject
        or certificate.issuer != old.subject
        or not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        or not same_public_key(public_key, certificate.public_key())
    ):
        raise _corrupt(store, f"{entry} does not certify root {new_id} by root {old_id}")
    try:
        certificate.verify_directly_issued_by(old)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise _corrupt(store, f"{entry} is not signed by root {old_id}") from exc
    return CrossCertificate(certificate, new_id, old_id)


async def load_state(store: StateStore) -> CAState | None:
    """The persisted state with keys (of current roots only), or None if the store holds no CA yet."""
    index = await _read_index_json(store)
    if index is None:
        return None
    active_id, previous_id, phase = _parse_index(store, index)
    retired_ids, cross_ids = _parse_history(store, index)
    active = await _read_root(store, active_id)
    previous = None if previous_id is None else await _read_root(store, previous_id)
    retired = tuple([await _read_certificate(store, rid) for rid in retired_ids])
    roots = dict(zip(retired_ids, retired, strict=True))
    roots[active.id] = active.certificate
    if previous is not None:
        roots[previous.id] = previous.certificate
    crosses = tuple([await _read_cross(store, new, old, roots) for new, old in cross_ids.items()])
    return CAState(
        active=active,
        previous=previous,
        signing_previous=phase == Phase.TRUSTING,
        retired=retired,
        crosses=crosses,
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


async def load_retired_certificates(store: StateStore) -> list[x509.Certificate]:
    """The retired roots' certificates, newest first (for `ca show`)."""
    index = await _read_index_json(store)
    if index is None:
        return []
    retired_ids, _ = _parse_history(store, index)
    return [await _read_certificate(store, rid) for rid in retired_ids]
