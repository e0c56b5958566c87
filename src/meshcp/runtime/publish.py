"""Publishing snapshots: each proxy class's compiled config plus its identity's secrets.

The compiler hands over proxy classes (identity, resources, upstream services); this
module adds the SDS secrets of that identity and installs the snapshot. Certificates are
issued in the background per identity, so a slow or failing CA delays only the proxies
of the identity it is issuing for; a rotation re-publishes only that identity's classes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping

from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import Secret
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
        trust_domain: str = "cluster.local",
        retry_interval: float = 5.0,
    ) -> None:
        self._cache = cache
        self._encoder = encoder
        self._certificates = certificates
        self._retry_interval = retry_interval
        self._trust_domain = trust_domain
        self._classes: dict[str, ProxyClass] = {}
        self._bundle = ""
        self._waiting: asyncio.Queue[Identity] = asyncio.Queue()
        self._certs: dict[Identity, tuple[IssuedCertificate, Resource]] = {}
        self._roots: dict[tuple[str, ...], Resource] = {}
        #: Per identity: its certificate and inbound trust as one set (with the certificate
        #: it was made from); per upstreams mapping (by id, kept alive): their trust.
        self._identity_sets: dict[Identity, tuple[IssuedCertificate, ResourceSet]] = {}
        self._upstream_sets: dict[
            int, tuple[Mapping[tuple[str, str], tuple[Identity, ...]], ResourceSet]
        ] = {}

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
        self._roots.clear()
        self._identity_sets.clear()
        self._upstream_sets.clear()
        for proxy_class in self._classes.values():
            self._publish(proxy_class)

    def update(self, classes: Iterable[ProxyClass]) -> None:
        """Replace the set of classes; publish every class whose identity has a certificate."""
        fresh = {proxy_class.key: proxy_class for proxy_class in classes}
        for key in self._classes.keys() - fresh.keys():
            self._cache.clear(key)
        self._classes = fresh
        wanted = {proxy_class.identity for proxy_class in fresh.values()}
        for identity in set(self._certificates.keys()) - wanted:
            self._certificates.forget(identity)
            self._certs.pop(identity, None)
            self._identity_sets.pop(identity, None)
        live = {id(proxy_class.upstreams) for proxy_class in fresh.values()}
        for stale in self._upstream_sets.keys() - live:
            del self._upstream_sets[stale]
        for proxy_class in fresh.values():
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
        parts.append(self._identity_secrets(identity, certificate))
        parts.append(self._upstream_secrets(proxy_class.upstreams))
        key = proxy_class.key
        self._cache.set_snapshot(key, Snapshot(parts, previous=self._cache.get(key)))

    def _identity_secrets(self, identity: Identity, certificate: IssuedCertificate) -> ResourceSet:
        held = self._identity_sets.get(identity)
        if held is not None and held[0] is certificate:
            return held[1]
        bundle = self._bundle
        found = ResourceSet(
            [
                self._service_cert(identity, certificate),
                self._root(("in", str(identity)), lambda: sds.root_inbound(identity, bundle)),
            ]
        )
        self._identity_sets[identity] = (certificate, found)
        return found

    def _upstream_secrets(self, upstreams: Mapping[tuple[str, str], tuple[Identity, ...]]) -> ResourceSet:
        """The outbound trust of every upstream: shared by the classes with the same
        upstreams (the reconciler hands them the same mapping object)."""
        held = self._upstream_sets.get(id(upstreams))
        if held is not None and held[0] is upstreams:
            return held[1]
        bundle, domain = self._bundle, self._trust_domain
        secrets = [
            self._root(
                ("out", namespace, service, *map(str, identities)),
                lambda n=namespace, s=service, i=identities: sds.root_outbound(n, s, bundle, i, domain),  # type: ignore[misc]
            )
            for (namespace, service), identities in sorted(upstreams.items())
        ]
        found = ResourceSet(secrets)
        self._upstream_sets[id(upstreams)] = (upstreams, found)
        return found

    def _service_cert(self, identity: Identity, certificate: IssuedCertificate) -> Resource:
        """One encoded secret per identity and certificate; replaced on rotation."""
        held = self._certs.get(identity)
        if held is not None and held[0] is certificate:
            return held[1]
        resource = self._encoder.encode(
            sds.service_cert(identity, certificate.chain_pem, certificate.private_key_pem)
        )
        self._certs[identity] = (certificate, resource)
        return resource

    def _root(self, key: tuple[str, ...], build: Callable[[], Secret]) -> Resource:
        """Trust secrets are encoded once per bundle and shared by every class that needs them."""
        found = self._roots.get(key)
        if found is None:
            found = self._roots[key] = self._encoder.encode(build())
        return found
