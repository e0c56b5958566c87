"""The mesh's trust bundle, kept current, and root rotation carried out live.

Root rotation is a small state machine polled on a timer, so it resumes wherever a
restart left it (the CA persists its phase):

1. trusting: bundle old+new published, the old root still signs; wait until every
   connected proxy has ACKed the bundle;
2. rotating: the new root signs; re-issue every workload certificate; wait for the ACKs;
3. drop the old root; publish the bundle with the new root only.

Nobody is ever handed a certificate its peers do not trust yet, and the old root is
trusted until every proxy holds a certificate from the new one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from meshcp import resource_types
from meshcp.cache.snapshot import Snapshot
from meshcp.certs.identity import Identity
from meshcp.certs.internal import InternalCA
from meshcp.certs.provider import CertificateError, CertificateProvider
from meshcp.certs.root_rotation import Phase
from meshcp.certs.rotation import CertificateManager
from meshcp.publisher import Publisher
from meshcp.xds.registry import ConnectedProxies

log = logging.getLogger("meshcp.trust")


class TrustCoordinator:
    """Keeps the publisher's (and the xDS listener's) trust bundle equal to the CA's."""

    def __init__(
        self,
        provider: CertificateProvider,
        publisher: Publisher,
        certificates: CertificateManager[Identity],
        proxies: ConnectedProxies,
        snapshot_of: Callable[[str], Snapshot | None],
        *,
        interval: float = 1.0,
        auto_rotate: bool = True,
    ) -> None:
        self._provider = provider
        self._publisher = publisher
        self._certificates = certificates
        self._proxies = proxies
        self._snapshot_of = snapshot_of
        #: The xDS listener's TLS context, which must trust every root proxies present.
        self.listener_tls: ssl.SSLContext | None = None
        self._interval = interval
        self._auto_rotate = auto_rotate
        self._reissued_for = ""
        self.bundle = ""

    async def refresh(self) -> None:
        """Read the CA's trust bundle; publish it where it changed."""
        bundle = await self._provider.trust_bundle()
        if bundle == self.bundle:
            return
        self.bundle = bundle
        if self.listener_tls is not None:
            # Adds the new roots; the authoriser checks client certificates against the
            # current bundle, so a dropped root stops being accepted for new streams.
            self.listener_tls.load_verify_locations(cadata=bundle)
        self._publisher.set_trust_bundle(bundle)
        log.info("trust bundle now holds %d root(s)", bundle.count("BEGIN CERTIFICATE"))

    async def rotate(self) -> None:
        """Start a root rotation now (internal CA only)."""
        ca = self._internal()
        await ca.rotate_root()
        await self.refresh()

    async def step(self) -> None:
        """One tick: pick up changes made by `meshcp ca rotate`, rotate ahead of expiry,
        and move a rotation forward when every proxy is ready for the next phase."""
        ca = self._provider if isinstance(self._provider, InternalCA) else None
        if ca is not None:
            await ca.reload()
            if self._auto_rotate and await ca.rotate_root_if_due():
                log.info("root certificate close to expiry: rotation started")
        await self.refresh()
        if ca is None or ca.state.phase == Phase.STABLE:
            return
        lagging = self._proxies.lagging(resource_types.SECRET, self._snapshot_of)
        if lagging:
            log.debug("root rotation waits for %d proxies: %s", len(lagging), ", ".join(lagging[:5]))
            return
        if ca.state.phase == Phase.TRUSTING:
            await ca.sign_with_new_root()  # every proxy trusts both roots now
            return
        new_root = ca.state.active.id
        if self._reissued_for != new_root:
            report = await self._certificates.renew_all()
            if report.failed:
                log.warning("root rotation: %d certificates not re-issued yet, retrying", len(report.failed))
                return
            self._reissued_for = new_root
            log.info(
                "root rotation: %d workload certificates re-issued from the new root", len(report.renewed)
            )
            return
        await ca.finish_root_rotation()
        self._reissued_for = ""
        await self.refresh()
        log.info("root rotation finished: only root %s is trusted", new_root)

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except CertificateError as error:
                log.error("trust bundle: %s", error)
            await asyncio.sleep(self._interval)

    def _internal(self) -> InternalCA:
        if not isinstance(self._provider, InternalCA):
            raise CertificateError(
                self._provider.name, "root rotation is only possible with the internal CA provider"
            )
        return self._provider
