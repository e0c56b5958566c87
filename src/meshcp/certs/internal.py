"""The built-in certificate authority (the default provider).

It signs with a root kept in a `StateStore`, so a restart keeps the same root and
proxies keep trusting the certificates they hold. Key generation and signing run in a
worker thread: an RSA-4096 key takes long enough to stall every xDS stream otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from datetime import timedelta

from cryptography import x509

from meshcp.certs import ca_persistence
from meshcp.certs.authority import ROOT_VALIDITY, create_root, cross_sign, sign_leaf
from meshcp.certs.clock import Clock, utc_now
from meshcp.certs.keys import KeySpec, generate_private_key, private_key_pem
from meshcp.certs.pem import to_pem
from meshcp.certs.provider import CertificateError, CertificateRequest, IssuedCertificate
from meshcp.certs.root_rotation import (
    DEFAULT_ROOT_ROTATION_SHARE,
    CAState,
    CrossCertificate,
    Phase,
    RotationConflict,
    root_rotation_due,
)
from meshcp.certs.storage import AtomicCreateStore, MemoryStore, StateStore

log = logging.getLogger(__name__)

_NAME = "internal"


class InternalCA:
    """A CA whose roots live in a `StateStore`; create it with `InternalCA.open`.

    `key_spec` applies to roots this CA creates (the first one and those made by
    `rotate_root`); a persisted root keeps its own key type.
    """

    def __init__(
        self, store: StateStore, state: CAState, *, key_spec: KeySpec, clock: Clock, root_validity: timedelta
    ) -> None:
        self._store = store
        self._state = state
        self._key_spec = key_spec
        self._clock = clock
        self._root_validity = root_validity
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        store: StateStore,
        *,
        key_spec: KeySpec = KeySpec.ECDSA_P256,
        clock: Clock = utc_now,
        root_validity: timedelta = ROOT_VALIDITY,
        create: bool = True,
    ) -> InternalCA:
        """Load the CA from `store`, creating and persisting a root if there is none
        (unless `create` is false, for tools that must not invent a CA)."""
        state = await ca_persistence.load_state(store)
        if state is None:
            if not create:
                raise CertificateError(_NAME, f"no CA found in {store.location}")
            root = await asyncio.to_thread(create_root, key_spec, clock(), validity=root_validity)
            state = CAState(active=root)
            if await _create(store, state):
                log.info("created root CA %s in %s", root.id, store.location)
            else:
                adopted = await ca_persistence.load_state(store)
                if adopted is None:
                    raise CertificateError(_NAME, f"CA creation in {store.location} lost a race to nothing")
                state = adopted
                log.info("adopted root CA %s created concurrently in %s", state.active.id, store.location)
        ca = cls(store, state, key_spec=key_spec, clock=clock, root_validity=root_validity)
        await ca._add_missing_cross_certificate()
        return ca

    async def _add_missing_cross_certificate(self) -> None:
        """A rotation begun by a meshcp without cross certificates: make the one for it now,
        while the old root's key still exists, so proxies bootstrapped with the old root
        can verify the xDS server once the new root signs."""
        state = self._state
        old = state.previous
        if old is None or any(c.subject_id == state.active.id for c in state.crosses):
            return
        cross = await asyncio.to_thread(cross_sign, old, state.active.certificate)
        if cross is None:
            return
        crosses = (CrossCertificate(cross, state.active.id, old.id), *state.crosses)
        updated = replace(state, crosses=crosses)
        await ca_persistence.save_cross(self._store, crosses[0])
        await ca_persistence.save_state(self._store, updated)
        self._state = updated
        log.info("cross-certified root %s by root %s", state.active.id, old.id)

    @property
    def name(self) -> str:
        return _NAME

    @property
    def store(self) -> StateStore:
        return self._store

    @property
    def state(self) -> CAState:
        return self._state

    async def reload(self) -> bool:
        """Adopt the state another process committed to the store (`meshcp ca rotate` run
        against a live controller's state directory); returns whether anything changed."""
        async with self._lock:
            index = await ca_persistence.read_index(self._store)
            state = self._state
            current = (state.active.id, state.previous.id if state.previous else None, state.phase)
            if index is None or index == current:
                return False
            loaded = await ca_persistence.load_state(self._store)
            if loaded is None:
                return False
            self._state = loaded
            log.info(
                "CA state reloaded from %s: phase %s, signing root %s",
                self._store.location,
                loaded.phase,
                loaded.signing_root.id,
            )
            return True

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        root = self._state.signing_root
        key = await asyncio.to_thread(generate_private_key, request.key_spec)
        certificate = await asyncio.to_thread(sign_leaf, root, request, key.public_key(), self._clock())
        return IssuedCertificate(to_pem([certificate]), private_key_pem(key), certificate)

    async def trust_bundle(self) -> str:
        """Current roots: what workloads trust each other by (and new bootstraps get)."""
        return self._state.trust_bundle_pem()

    async def xds_trust_bundle(self) -> str:
        """Roots the xDS server accepts client certificates from: the current roots plus
        retired roots until they expire, because a proxy's xDS client certificate sits in
        its bootstrap and cannot be replaced over xDS."""
        return self._state.xds_trust_bundle_pem(self._clock())

    def cross_chain_pem(self, certificate: x509.Certificate) -> str:
        """Cross certificates to append to `certificate` (one this CA signed) so that a
        peer trusting only an older root still trusted for xDS can verify it; "" if none."""
        return to_pem(self._state.cross_chain(certificate, self._clock()))

    async def rotate_root(self) -> CAState:
        """Create a new root, trusted from now on; the old root keeps signing until
        `sign_with_new_root` (once every proxy trusts the new one).

        Certificates already issued stay valid; re-issue them (`CertificateManager.renew_all`)
        and call `finish_root_rotation` once every proxy holds the new ones.
        """
        async with self._lock:
            before = self._state
            old = before.active
            old_id = old.id
            try:
                new_root = await asyncio.to_thread(
                    create_root, self._key_spec, self._clock(), validity=self._root_validity
                )
                # Signed now, while the old key exists: finishing the rotation destroys it.
                cross = await asyncio.to_thread(cross_sign, old, new_root.certificate)
                state = before.pruned(self._clock()).begin_rotation(new_root, cross)
            except RotationConflict as exc:
                raise CertificateError(_NAME, str(exc)) from exc
            try:
                await ca_persistence.save_root(self._store, new_root)
                if state.crosses and state.crosses[0].subject_id == new_root.id:
                    await ca_persistence.save_cross(self._store, state.crosses[0])
                await ca_persistence.save_state(self._store, state)
            except CertificateError:
                # Unless committed after all (a failure after the index was renamed into
                # place), leave no key of a root nobody will use; best effort: the store
                # that just failed may fail this too.
                with contextlib.suppress(CertificateError, OSError):
                    committed = await ca_persistence.read_index(self._store)
                    if committed is None or committed[0] != new_root.id:
                        await ca_persistence.delete_root(self._store, new_root.id)
                        await self._store.delete(ca_persistence.cross_entry(new_root.id))
                raise
            await ca_persistence.delete_unused(self._store, before, state)
            self._state = state
            log.info("root rotation started: new root %s, old root %s still trusted", new_root.id, old_id)
            return state

    async def sign_with_new_root(self) -> CAState:
        """Every proxy trusts the new root: sign with it from now on (TRUSTING → ROTATING)."""
        async with self._lock:
            if self._state.phase != Phase.TRUSTING:
                return self._state
            state = self._state.sign_with_new_root()
            await ca_persistence.save_state(self._store, state)
            self._state = state
            log.info("root rotation: signing with the new root %s", state.active.id)
            return state

    async def finish_root_rotation(self) -> CAState:
        """Drop the old root from the trust bundle and destroy its key (no-op when not
        rotating). Its certificate is kept, retired, in the xDS trust bundle until it
        expires: proxies bootstrapped before the rotation still present xDS client
        certificates it signed."""
        async with self._lock:
            before = self._state
            old = before.previous
            if old is None:
                return before
            state = before.finish_rotation().pruned(self._clock())
            await ca_persistence.save_state(self._store, state)
            await ca_persistence.delete_unused(self._store, before, state)
            self._state = state
            log.info(
                "root rotation finished: root %s retired (key destroyed; trusted for xDS until %s)",
                old.id,
                old.certificate.not_valid_after_utc.isoformat(),
            )
            return state

    def root_rotation_due(self, share: float = DEFAULT_ROOT_ROTATION_SHARE) -> bool:
        """Whether the signing root is close enough to expiry to rotate (never while rotating)."""
        if self._state.previous is not None:
            return False
        return root_rotation_due(self._state.active.certificate, self._clock(), share)

    async def rotate_root_if_due(self, share: float = DEFAULT_ROOT_ROTATION_SHARE) -> bool:
        """Start a rotation ahead of root expiry; returns whether one was started."""
        if not self.root_rotation_due(share):
            return False
        await self.rotate_root()
        return True


async def _create(store: StateStore, state: CAState) -> bool:
    """Persist a new CA; False if a store shared with other writers got one first."""
    if not isinstance(store, AtomicCreateStore):
        await ca_persistence.save_root(store, state.active)
        await ca_persistence.save_state(store, state)
        return True
    staged = MemoryStore()
    await ca_persistence.save_root(staged, state.active)
    await ca_persistence.save_state(staged, state)
    return await store.create_all(staged.entries, secret=staged.secret_names)
