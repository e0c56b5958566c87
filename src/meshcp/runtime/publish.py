"""Publishing snapshots: each proxy class's compiled config plus its two secrets.

The compiler hands over proxy classes (identity, resources); this module adds the SDS
secrets and installs the snapshot: `service-cert`, the class's own identity's certificate
and key, and `root-cert`, the mesh's trust bundle, one encoded secret shared by every
class. A class's snapshot never holds another identity's certificate, which is what makes
the one well-known name safe (see `naming.SERVICE_CERT`). Certificates are issued in the
background per identity, so a slow or failing CA delays only the proxies of the identity
it is issuing for; a rotation re-publishes only that identity's classes, a new trust
bundle every class (the same new `root-cert` for all).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping

from meshcp.cache.encoding import Encoder
from meshcp.cache.resource import Resource
from meshcp.cache.snapshot import ResourceSet, Snapshot
from meshcp.cache.snapshot_cache import SnapshotCache
from meshcp.certs.provider import CertificateError, IssuedCertificate
from meshcp.certs.rotation import CertificateManager
from meshcp.compile import sds
from meshcp.identity import Identity
from meshcp.runtime.proxy_class import ProxyClass

log = logging.getLogger("meshcp.runtime.publish")


class Publisher:
    """Keeps every class snapshot equal to its config plus current certificates and trust bundle."""

    def __init__(
        self,
        cache: SnapshotCache,
        encoder: Encoder,
        certificates: CertificateManager[Identity],
        *,
        retry_interval: float = 5.0,
    ) -> None:
        self._cache = cache
        self._encoder = encoder
        self._certificates = certificates
        self._retry_interval = retry_interval
        self._classes: dict[str, ProxyClass] = {}
        self._bundle = ""
        self._waiting: asyncio.Queue[Identity] = asyncio.Queue()
        #: The trust bundle's `root-cert`, encoded once per bundle for every class.
        self._root: Resource | None = None
        #: Per identity: its `service-cert`, encoded once per certificate (replaced on
        #: rotation), alone and with the `root-cert` as one set for its classes.
        self._certs: dict[Identity, tuple[IssuedCertificate, Resource]] = {}
        self._identity_sets: dict[Identity, tuple[IssuedCertificate, ResourceSet]] = {}

    @property
    def trust_bundle(self) -> str:
        return self._bundle

    def classes(self) -> Mapping[str, ProxyClass]:
        return self._classes

    def set_trust_bundle(self, bundle: str) -> None:
        """A new trust bundle (root rotation): every class is re-published."""
        if bundle == self._bundle:
            return
        self._bundle = bundle
        self._root = None
        self._identity_sets.clear()
        for proxy_class in self._classes.values():
            self._publish(proxy_class)

    def update(self, classes: Iterable[ProxyClass]) -> None:
        """Replace the set of classes; publish every class whose identity has a certificate.

        A class handed over as the very object already published is unchanged (the
        reconciler keeps untouched classes' objects): it is not published again, so a
        change costs the classes it touched. Certificates and trust bundles publish
        through their own paths (`on_rotated`, `set_trust_bundle`)."""
        fresh = {proxy_class.key: proxy_class for proxy_class in classes}
        previous = self._classes
        for key in previous.keys() - fresh.keys():
            self._cache.clear(key)
        self._classes = fresh
        if previous.keys() != fresh.keys():
            wanted = {proxy_class.identity for proxy_class in fresh.values()}
            for identity in set(self._certificates.keys()) - wanted:
                self._certificates.forget(identity)
                self._certs.pop(identity, None)
                self._identity_sets.pop(identity, None)
        for key, proxy_class in fresh.items():
            if previous.get(key) is proxy_class and self._cache.get(key) is not None:
                continue
            if self._certificates.current(proxy_class.identity) is None:
                self._waiting.put_nowait(proxy_class.identity)
            else:
                self._publish(proxy_class)

    async def on_rotated(self, identity: Identity, certificate: IssuedCertificate) -> None:
        """CertificateManager callback: push the new certificate to that identity only."""
        for proxy_class in self._classes.values():
            if proxy_class.identity == identity:
                self._publish(proxy_class)

    async def run(self) -> None:
        """Issue certificates for identities that have none yet, then publish their classes."""
        pending: set[Identity] = set()
        async with asyncio.TaskGroup() as tasks:
            while True:
                identity = await self._waiting.get()
                if identity not in pending:
                    pending.add(identity)
                    tasks.create_task(self._first_certificate(identity, pending))

    async def _first_certificate(self, identity: Identity, pending: set[Identity]) -> None:
        try:
            while True:
                try:
                    await self._certificates.get(identity)
                    break
                except CertificateError as error:
                    log.error("no certificate for %s yet, its proxies wait: %s", identity, error)
                    await asyncio.sleep(self._retry_interval)
        finally:
            pending.discard(identity)
        for proxy_class in self._classes.values():
            if proxy_class.identity == identity:
                self._publish(proxy_class)

    def _publish(self, proxy_class: ProxyClass) -> None:
        identity = proxy_class.identity
        certificate = self._certificates.current(identity)
        if certificate is None or not self._bundle:
            return
        parts: list[ResourceSet | Resource] = [*proxy_class.resources, *proxy_class.sets]
        parts.append(self._secrets(identity, certificate))
        key = proxy_class.key
        self._cache.set_snapshot(key, Snapshot(parts, previous=self._cache.get(key)))

    def _secrets(self, identity: Identity, certificate: IssuedCertificate) -> ResourceSet:
        """The identity's `service-cert` (encoded once per certificate) with the shared
        `root-cert` (encoded once per bundle), as one set for all of its classes."""
        held = self._identity_sets.get(identity)
        if held is not None and held[0] is certificate:
            return held[1]
        if self._root is None:
            self._root = self._encoder.encode(sds.root_cert(self._bundle))
        own = self._certs.get(identity)
        if own is None or own[0] is not certificate:
            encoded = self._encoder.encode(
                sds.service_cert(certificate.chain_pem, certificate.private_key_pem)
            )
            own = self._certs[identity] = (certificate, encoded)
        found = ResourceSet([own[1], self._root])
        self._identity_sets[identity] = (certificate, found)
        return found
