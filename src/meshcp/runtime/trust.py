"""The mesh's trust bundle, kept current, and root rotation carried out live.

Root rotation is a small state machine polled on a timer, so it resumes wherever a
restart left it (the CA persists its phase):

1. trusting: bundle old+new published, the old root still signs; wait until every
   connected proxy has ACKed the bundle;
2. rotating: the new root signs; re-issue every workload certificate; wait for the ACKs;
3. drop the old root; publish the bundle with the new root only.

Nobody is ever handed a certificate its peers do not trust yet, and the old root is
trusted until every proxy holds a certificate from the new one.

The xDS channel follows its own, longer-lived trust (see docs/certificates.md): a
proxy's bootstrap fixes its xDS client certificate and the roots it trusts the server
by. So the listener accepts client certificates from the *xDS* bundle (current roots
plus retired ones until they expire), and its own certificate is re-issued whenever that
bundle or the signing root changes, with cross certificates back to the older roots.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from meshcp.certs import pem
from meshcp.certs.clock import Clock, utc_now
from meshcp.certs.internal import InternalCA
from meshcp.certs.provider import CertificateError, CertificateProvider, IssuedCertificate
from meshcp.certs.root_rotation import Phase
from meshcp.certs.rotation import CertificateManager
from meshcp.identity import Identity
from meshcp.xds.tls import reload_server_certificate, server_context_from_pem

log = logging.getLogger("meshcp.runtime.trust")

ServerCertificateSource = Callable[[], Awaitable[IssuedCertificate]]
"""Issues the xDS server's certificate (chain including any cross certificates, and key)."""

#: How long a rotation phase waits for proxies that do not ACK before it goes on without
#: them (they keep their old secrets, and lose mTLS with peers until they take the new
#: ones); and how often, meanwhile, a warning names them.
ROTATION_DEADLINE = 900.0
LAGGARD_WARNING_EVERY = 60.0
#: How long each rotation phase lasts at least while proxyless gRPC nodes are connected:
#: they take certificates and trust from files that `meshcp bootstrap --proxyless
#: --refresh` rewrites and gRPC re-reads (every 60 s by default), and never ACK anything
#: the controller could wait for (docs/proxyless-grpc.md, "Rotation").
PROXYLESS_DWELL = 300.0

SERVER_CERTIFICATE_RENEW_SHARE = 0.3
"""Re-issue the xDS server certificate once less than this share of its lifetime remains,
even if no root changed (as workload certificates are renewed)."""


class TrustCoordinator:
    """Keeps the served trust bundle equal to the CA's, and the xDS listener's trust and
    certificate in step with the CA's roots."""

    def __init__(
        self,
        provider: CertificateProvider,
        certificates: CertificateManager[Identity],
        *,
        publish_bundle: Callable[[str], None],
        lagging: Callable[[], Sequence[str]],
        interval: float = 1.0,
        auto_rotate: bool = True,
        clock: Clock = utc_now,
        deadline: float = ROTATION_DEADLINE,
        monotonic: Callable[[], float] = time.monotonic,
        leading: Callable[[], bool] = lambda: True,
        proxyless: Callable[[], int] = lambda: 0,
        proxyless_dwell: float = PROXYLESS_DWELL,
    ) -> None:
        """`publish_bundle` hands a new workload trust bundle to whoever serves it (the
        publisher); `lagging` names the connected proxies that have not ACKed their current
        secrets yet (a rotation waits for them, for `deadline` seconds per phase at most:
        one proxy that keeps NACKing must not hold back a root close to expiry).
        `leading`: whether this replica leads; only the leader starts and moves a rotation
        (writes to the CA's shared store), the others follow what it commits (`step`).
        `proxyless` counts the connected proxyless gRPC nodes: while there are some, each
        phase lasts `proxyless_dwell` seconds at least, the time their files take to be
        rewritten and re-read."""
        #: Asked before each write to the CA's shared store (see `leading` above).
        self.leading = leading
        self._provider = provider
        self._certificates = certificates
        self._publish_bundle = publish_bundle
        self._lagging = lagging
        #: The xDS listener's TLS context, which must trust every root proxies present.
        self.listener_tls: ssl.SSLContext | None = None
        self._interval = interval
        self._auto_rotate = auto_rotate
        self._clock = clock
        self._reissued_for = ""
        #: Roots workloads trust (SDS): the CA's current roots.
        self.bundle = ""
        #: Unix time the soonest-expiring root of `bundle` expires (None before the first
        #: refresh, or for a bundle that does not parse): a metric.
        self.root_expiry: float | None = None
        #: Roots xDS client certificates may chain to: for the internal CA the current
        #: roots plus retired ones until they expire; for other providers `bundle`.
        self.xds_bundle = ""
        self._issue_server_certificate: ServerCertificateSource | None = None
        #: The listener's certificate from the mesh CA, and the (xDS bundle, signing root)
        #: it was issued for.
        self.server_certificate: IssuedCertificate | None = None
        self._server_certificate_for: tuple[str, str] = ("", "")
        self._deadline = deadline
        self._monotonic = monotonic
        self._proxyless = proxyless
        self._proxyless_dwell = proxyless_dwell
        #: The rotation phase being waited in, since when, and when laggards were last named.
        self._waiting: tuple[str, float, float] | None = None
        #: Proxies the current rotation phase waits for (a metric and /debug).
        self.laggards: tuple[str, ...] = ()

    def status(self) -> dict[str, object]:
        """The rotation as carried out here (`/debug/trust`, `meshcp ca show`): the CA's
        phase (None for a provider without one), the proxies the phase waits for, how long
        it has waited and how long it will wait at most."""
        ca = self._internal_or_none()
        waiting = self._waiting
        return {
            "provider": self._provider.name,
            "phase": None if ca is None else ca.state.phase.value,
            "lagging_proxies": list(self.laggards),
            "waiting_seconds": None if waiting is None else round(self._monotonic() - waiting[1], 1),
            "deadline_seconds": self._deadline,
            #: Whether every workload certificate comes from the new root yet (the last step
            #: before the old root can go without breaking mTLS between proxies).
            "certificates_reissued": ca is not None and self._reissued_for == ca.state.active.id,
        }

    async def refresh(self) -> None:
        """Read the CA's trust bundles; publish them where they changed, and re-issue the
        xDS server certificate when the xDS roots or the signing root changed."""
        ca = self._internal_or_none()
        bundle = await self._provider.trust_bundle()
        xds_bundle = bundle if ca is None else await ca.xds_trust_bundle()
        if bundle != self.bundle:
            self.bundle = bundle
            self.root_expiry = _soonest_expiry(bundle)
            self._publish_bundle(bundle)
            log.info("trust bundle now holds %d root(s)", bundle.count("BEGIN CERTIFICATE"))
        if xds_bundle != self.xds_bundle:
            self.xds_bundle = xds_bundle
            if self.listener_tls is not None:
                # Adds the new roots (an SSLContext cannot forget one); the authoriser
                # checks client certificates against `xds_bundle`, so a root that left it
                # stops being accepted for new streams.
                self.listener_tls.load_verify_locations(cadata=xds_bundle)
            log.info("xDS trust bundle now holds %d root(s)", xds_bundle.count("BEGIN CERTIFICATE"))
        await self._renew_server_certificate()

    async def serve_mesh_certificate(self, issue: ServerCertificateSource) -> ssl.SSLContext:
        """The xDS listener's TLS context: presents a certificate from `issue`, requires
        client certificates from the xDS bundle. `refresh` keeps both current on this same
        context, so the listener never restarts. Call after `refresh`."""
        self._issue_server_certificate = issue
        wanted = self._server_certificate_key()
        issued = await issue()
        context = server_context_from_pem(issued.chain_pem, issued.private_key_pem, self.xds_bundle)
        self.listener_tls = context
        self.server_certificate, self._server_certificate_for = issued, wanted
        return context

    def _server_certificate_key(self) -> tuple[str, str]:
        ca = self._internal_or_none()
        return self.xds_bundle, "" if ca is None else ca.state.signing_root.id

    def _server_certificate_due(self, now: datetime) -> bool:
        current = self.server_certificate
        if current is None:
            return True
        return current.not_after - now < current.lifetime * SERVER_CERTIFICATE_RENEW_SHARE

    async def _renew_server_certificate(self) -> None:
        """Re-issue the listener's certificate when the roots behind it changed: a new
        signing root (proxies bootstrapped from now on may trust only it), or a root
        entering or leaving the xDS bundle (the cross certificates in the chain follow)."""
        if self._issue_server_certificate is None or self.listener_tls is None:
            return
        wanted = self._server_certificate_key()
        if wanted == self._server_certificate_for and not self._server_certificate_due(self._clock()):
            return
        # Keyed by what was read before issuing: a change meanwhile is caught next time.
        issued = await self._issue_server_certificate()
        try:
            reload_server_certificate(self.listener_tls, issued.chain_pem, issued.private_key_pem)
        except ssl.SSLError as error:
            # The listener keeps its current certificate; `run` logs this and tries again.
            raise CertificateError(
                self._provider.name, f"cannot load the re-issued xDS server certificate: {error}"
            ) from error
        self.server_certificate, self._server_certificate_for = issued, wanted
        log.info(
            "xDS server certificate re-issued (serial %x, issuer %s, %d cross certificate(s))",
            issued.serial_number,
            issued.certificate.issuer.rfc4514_string(),
            issued.chain_pem.count("BEGIN CERTIFICATE") - 1,
        )

    async def rotate(self) -> None:
        """Start a root rotation now (internal CA only)."""
        ca = self._internal()
        await ca.rotate_root()
        await self.refresh()

    async def step(self) -> None:
        """One tick: pick up changes made by `meshcp ca rotate`, rotate ahead of expiry,
        and move a rotation forward when every proxy is ready for the next phase."""
        ca = self._internal_or_none()
        leading = self.leading()
        if ca is not None:
            await ca.reload()
            if leading and self._auto_rotate and await ca.rotate_root_if_due():
                log.info("root certificate close to expiry: rotation started")
        await self.refresh()
        if ca is None or ca.state.phase == Phase.STABLE:
            self._waiting, self.laggards = None, ()
            return
        if not leading:
            await self._follow_rotation(ca)
            return
        if self._waits_for(ca.state.phase.value, self._lagging()) or self._dwells():
            return
        if ca.state.phase == Phase.TRUSTING:
            await ca.sign_with_new_root()  # every proxy trusts both roots now
            await self.refresh()  # the xDS server certificate now comes from the new root
            return
        new_root = ca.state.active.id
        if self._reissued_for != new_root:
            await self._reissue(new_root, "from the new root")
            return
        await ca.finish_root_rotation()
        self._reissued_for = ""
        await self.refresh()
        log.info("root rotation finished: only root %s is trusted", new_root)

    async def _follow_rotation(self, ca: InternalCA) -> None:
        """A follower's part of a rotation the leader carries out: the bundles follow
        through `refresh`; once the new root signs, re-issue the workload certificates of
        the proxies connected *here* (issuing writes nothing to the cluster)."""
        self._waiting, self.laggards = None, ()
        new_root = ca.state.active.id
        if ca.state.phase != Phase.ROTATING or self._reissued_for == new_root:
            return
        await self._reissue(new_root, "(led by another replica)")

    async def _reissue(self, new_root: str, how: str) -> None:
        """Re-issue every workload certificate of the proxies connected here from
        `new_root`; a step that could not re-issue them all tries again next time."""
        report = await self._certificates.renew_all()
        if report.failed:
            log.warning("root rotation: %d certificates not re-issued yet, retrying", len(report.failed))
            return
        self._reissued_for = new_root
        log.info("root rotation: %d workload certificates re-issued %s", len(report.renewed), how)

    def _dwells(self) -> bool:
        """Whether the phase must last longer for the proxyless nodes' files to follow."""
        if self._waiting is None or not self._proxyless():
            return False
        return self._monotonic() - self._waiting[1] < self._proxyless_dwell

    def _waits_for(self, phase: str, lagging: Sequence[str]) -> bool:
        """Whether the rotation still waits in `phase`: while proxies lag, up to the
        deadline, naming them in a warning every `LAGGARD_WARNING_EVERY` seconds."""
        now = self._monotonic()
        if self._waiting is None or self._waiting[0] != phase:
            self._waiting = (phase, now, now)
        self.laggards = tuple(lagging)
        if not lagging:
            return False
        _, since, warned = self._waiting
        named = ", ".join(lagging[:10]) + (f" and {len(lagging) - 10} more" if len(lagging) > 10 else "")
        if now - since >= self._deadline:
            log.warning(
                "root rotation (%s) goes on after %.0f s without %d proxies that have not ACKed "
                "their secrets: %s (they lose mTLS with their peers until they take the new ones)",
                phase,
                now - since,
                len(lagging),
                named,
            )
            self._waiting = None
            return False
        if now - warned >= LAGGARD_WARNING_EVERY:
            log.warning(
                "root rotation (%s) has waited %.0f s for %d proxies to ACK their secrets: %s",
                phase,
                now - since,
                len(lagging),
                named,
            )
            self._waiting = (phase, since, now)
        return True

    async def run(self) -> None:
        """`step` every `interval` until cancelled. A failure the CA reports (unreachable,
        its state directory full) is retried at the next tick, the served bundle and
        certificates unchanged meanwhile: logged once when it starts or changes, and once
        when it is over, not every tick."""
        failing = ""
        while True:
            try:
                await self.step()
            except CertificateError as error:
                if str(error) != failing:
                    log.error("trust upkeep: %s; retrying every %gs", error, self._interval)
                failing = str(error)
            else:
                if failing:
                    log.info("trust upkeep works again")
                failing = ""
            await asyncio.sleep(self._interval)

    def _internal_or_none(self) -> InternalCA | None:
        return self._provider if isinstance(self._provider, InternalCA) else None

    def _internal(self) -> InternalCA:
        if not isinstance(self._provider, InternalCA):
            raise CertificateError(
                self._provider.name, "root rotation is only possible with the internal CA provider"
            )
        return self._provider


def _soonest_expiry(bundle: str) -> float | None:
    """Unix time the first certificate of a PEM bundle expires; None if it holds none."""
    try:
        roots = pem.load_certificates(bundle)
    except ValueError:
        return None
    return min((root.not_valid_after_utc.timestamp() for root in roots), default=None)
