"""The running controller: CA, publisher, cache, xDS server and HTTP endpoint, one lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from functools import partial
from types import TracebackType
from typing import Any

from cryptography import x509

from meshcp.cache import resource_types
from meshcp.cache.encoding import Encoder
from meshcp.cache.snapshot_cache import SnapshotCache
from meshcp.certs.internal import InternalCA
from meshcp.certs.issuer import Issuer, ReportingIssuer
from meshcp.certs.provider import CertificateProvider, IssuedCertificate
from meshcp.certs.rotation import CertificateManager, RenewalPolicy, workload_certificates
from meshcp.certs.setup import close_provider, open_provider
from meshcp.certs.xds_server import XdsServerCredentials
from meshcp.http.api_tls import HttpsServer
from meshcp.http.app import Controller, HttpServer, create_debug_app
from meshcp.identity import Identity
from meshcp.kpi.prometheus import Prometheus, aiohttp_fetch
from meshcp.kube.client import ApiClientFactory, default_api_client
from meshcp.model.meshconfig import MeshConfig
from meshcp.runtime.access import claimed_identity, may_receive, verified_identity
from meshcp.runtime.classify import ProxyClassifier, is_proxyless
from meshcp.runtime.mesh_checks import mesh_config_problem
from meshcp.runtime.publish import Publisher
from meshcp.runtime.reconcile import Reconciler
from meshcp.runtime.rounds import MESH, Rounds
from meshcp.runtime.settings import Address, Settings
from meshcp.runtime.store import Store
from meshcp.runtime.trust import TrustCoordinator
from meshcp.sources.bootstrap_secrets import SecretCollector
from meshcp.sources.files import FileSource
from meshcp.sources.kubernetes import KubernetesSource
from meshcp.sources.kubernetes_events import EventRecorder
from meshcp.sources.kubernetes_lease import LeaderElection, LeaseSettings
from meshcp.sources.proxyless_renewal import ProxylessRenewer
from meshcp.telemetry.failures import one_line
from meshcp.telemetry.metrics import Metrics
from meshcp.telemetry.readiness import Readiness
from meshcp.xds.auth import Authorizer, Classifier, by_node_id
from meshcp.xds.registry import ConnectedProxies
from meshcp.xds.server import XdsServer
from meshcp.xds.service import AggregatedDiscoveryService

log = logging.getLogger("meshcp")


class ControllerRuntime:
    """Builds the parts of a controller; `async with` runs them (see `open`)."""

    def __init__(
        self,
        settings: Settings,
        provider: CertificateProvider,
        *,
        classify: Classifier = by_node_id,
        authorize: Authorizer | None = None,
        readiness: Readiness | None = None,
        after_round: Callable[[], None] | None = None,
    ) -> None:
        """`after_round`: the process's hook after each reconcile round (`meshcp serve`
        passes its `GcFreeze`; an embedding controller has none)."""
        self.settings = settings
        self.provider = provider
        self.cache = SnapshotCache()
        self.encoder = Encoder()
        self.metrics = Metrics()
        self.metrics.count_encodes(lambda: self.encoder.encodes)
        self.metrics.read_expiries(lambda: self.trust.root_expiry, self._soonest_workload_expiry)
        self.metrics.read_rotation_laggards(lambda: float(len(self.trust.laggards)))
        self.readiness = readiness or Readiness()
        self.store = Store(
            window=settings.debounce_window,
            max_wait=settings.debounce_max,
            check=partial(
                mesh_config_problem, ca_provider=settings.ca.provider, mesh_name=settings.mesh_name
            ),
            mesh_name=settings.mesh_name,
        )
        self.proxies = ConnectedProxies()
        ca = settings.ca
        self.issuer = Issuer(provider, ca.issue_retry, report=self.metrics)

        def installed(identity: Identity) -> None:
            live = map(str, self.certificates.keys())
            self.metrics.certificate_installed_at(str(identity), time.time(), live)

        async def on_rotated(identity: Identity, certificate: IssuedCertificate) -> None:
            installed(identity)
            await self.publisher.on_rotated(identity, certificate)

        self.certificates: CertificateManager[Identity] = workload_certificates(
            ReportingIssuer(provider, ca.trust_domain, installed, ca.issue_retry, report=self.metrics),
            ca.trust_domain,
            validity=ca.validity,
            key_spec=ca.key_spec,
            policy=RenewalPolicy(renew_share=ca.renew_share),
            retry_interval=ca.renew_retry,
            on_rotated=on_rotated,
            validity_of=lambda: self.rounds.cert_validity,
        )
        self.publisher = Publisher(self.cache, self.encoder, self.certificates)
        self._api_client: ApiClientFactory = partial(
            default_api_client, settings.kube_context, settings.kubeconfig
        )
        #: Leader election among replicas (`--leader-lease`); None: this one always leads.
        self.election = _election(settings, self._api_client, self.metrics)
        self.leading = leading = self.election.is_leading if self.election is not None else _always
        self.events: EventRecorder | None = None
        if settings.kubernetes:
            self.events = EventRecorder(self._api_client, leading=leading)
        self.reconciler = Reconciler(
            self.encoder,
            self.metrics,
            self.events.report if self.events is not None else None,
            trust_domain=ca.trust_domain,
        )
        self.classifier = ProxyClassifier(ca.trust_domain)
        if settings.source is not None or settings.kubernetes:
            self.store.expect("kubernetes" if settings.kubernetes else "files")
            self.readiness.expect(MESH)
            if classify is by_node_id:
                classify = self.classifier
        self.xds_tls = settings.xds_tls
        self.xds_credentials = XdsServerCredentials(self.issuer, provider, settings.xds_names)
        self.trust = TrustCoordinator(
            provider,
            self.certificates,
            publish_bundle=self.publisher.set_trust_bundle,
            lagging=lambda: self.proxies.lagging(resource_types.SECRET, self.cache.get),
            interval=settings.trust_interval,
            leading=leading,
            proxyless=lambda: sum(1 for node in self.proxies.nodes() if is_proxyless(node)),
            proxyless_dwell=settings.proxyless_dwell,
        )
        if authorize is None:
            authorize = (
                claimed_identity(ca.trust_domain)
                if settings.insecure_xds
                else verified_identity(lambda: self.trust.xds_bundle, ca.trust_domain)
            )
        self.service = AggregatedDiscoveryService(
            self.cache,
            self.readiness,
            self.metrics,
            self.proxies,
            classify=classify,
            authorize=authorize,
            guard=may_receive,
            admission=settings.admission,
            send_budget=settings.send_budget,
        )
        self.xds = XdsServer(
            self.service,
            handshake_timeout=settings.xds_handshake_timeout,
            refused=lambda reason: self.metrics.refused_connections.labels(reason).inc(),
            max_connection_age=settings.xds_max_connection_age,
            aged_out=self.metrics.aged_out.inc,
        )
        self.rounds = Rounds(
            self.store,
            self.reconciler,
            self.publisher,
            self.classifier,
            self.readiness,
            reclassify=self.service.reclassify,
            cert_validity=ca.validity,
            on_round=self.metrics.round_done,
            after_round=after_round,
        )
        endpoint = Controller(
            self.readiness,
            self.metrics,
            self.proxies,
            self.cache,
            problems=lambda: self.store.state.problems,
            state=lambda: self.store.state,
            trust=self.trust.status,
            pod_of=self.classifier.pod_of,
            leadership=(
                self.election.status if self.election is not None else lambda: {"leader": True, "lease": None}
            ),
            prometheus=(
                None
                if settings.prometheus_url is None
                else Prometheus(settings.prometheus_url, aiohttp_fetch(settings.prometheus_url))
            ),
        )
        idle = settings.http_idle_timeout
        self.http = HttpServer(endpoint, idle_timeout=idle)
        self.debug_http = HttpServer(endpoint, create_debug_app, idle_timeout=idle)
        #: The same endpoint over TLS, for the Kubernetes API aggregator (`--api-tls-cert`).
        self.https = (
            None
            if settings.api_tls_cert is None or settings.api_tls_key is None
            else HttpsServer(endpoint, settings.api_tls_cert, settings.api_tls_key, idle_timeout=idle)
        )
        self._background: asyncio.Task[None] | None = None

    def _soonest_workload_expiry(self) -> float | None:
        """Unix time the first of the workload certificates held expires (None: none held)."""
        identities = self.certificates.keys()
        held = (self.certificates.current(identity) for identity in identities)
        expiries = [certificate.not_after.timestamp() for certificate in held if certificate is not None]
        return min(expiries, default=None)

    def _signing_root(self) -> x509.Name | None:
        """The subject of the root that signs now (the internal CA; None for providers
        whose roots meshcp does not rotate)."""
        provider = self.provider
        if not isinstance(provider, InternalCA):
            return None
        return provider.state.signing_root.certificate.subject

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        classify: Classifier = by_node_id,
        authorize: Authorizer | None = None,
        readiness: Readiness | None = None,
        after_round: Callable[[], None] | None = None,
    ) -> ControllerRuntime:
        """Open the CA (creating the internal root on first use), then build the controller."""
        provider = await open_provider(
            settings.ca, partial(default_api_client, settings.kube_context, settings.kubeconfig)
        )
        return cls(
            settings,
            provider,
            classify=classify,
            authorize=authorize,
            readiness=readiness,
            after_round=after_round,
        )

    async def start(self) -> None:
        """Read the trust bundle, open both listeners; on failure nothing is left listening."""
        s = self.settings
        await self.trust.refresh()
        if self.xds_tls is None and not s.insecure_xds:
            self.xds_tls = await self.trust.serve_mesh_certificate(self.xds_credentials.issue)
        else:
            self.trust.listener_tls = self.xds_tls
        try:
            await self.xds.start(s.xds_address.host, s.xds_address.port, self.xds_tls)
        except OSError as error:
            raise ListenError(f"cannot listen for xDS on {s.xds_address}: {error.strerror}") from None
        try:
            await self.http.start(s.http_address.host, s.http_address.port)
        except OSError as error:
            await self.xds.stop()
            raise ListenError(f"cannot listen for HTTP on {s.http_address}: {error.strerror}") from None
        try:
            await self.debug_http.start(s.debug_address.host, s.debug_address.port)
        except OSError as error:
            await self.xds.stop()
            await self.http.stop()
            raise ListenError(f"cannot listen for /debug on {s.debug_address}: {error.strerror}") from None
        if self.https is not None:
            try:
                await self.https.start(s.api_address.host, s.api_address.port)
            except (OSError, ValueError) as error:
                await self.xds.stop()
                await self.http.stop()
                await self.debug_http.stop()
                raise ListenError(f"cannot listen for HTTPS on {s.api_address}: {error}") from None
            log.info("serving HTTPS on %s", Address(s.api_address.host, self.https.port))
        log.info(
            "serving xDS on %s (%s), HTTP on %s",
            Address(s.xds_address.host, self.xds.port),
            "plaintext" if self.xds_tls is None else "mTLS",
            Address(s.http_address.host, self.http.port),
        )
        log.info("serving /debug on %s", Address(s.debug_address.host, self.debug_http.port))

    async def stop(self) -> None:
        """Close streams and listeners (proxies keep their last configuration); idempotent."""
        await self.xds.stop()
        await self.http.stop()
        await self.debug_http.stop()
        if self.https is not None:
            await self.https.stop()

    async def close(self) -> None:
        await self.stop()
        await close_provider(self.provider)

    async def __aenter__(self) -> ControllerRuntime:
        """Listen, and run certificate issuance, renewal and trust upkeep in the background."""
        await self.start()
        self._background = asyncio.create_task(self._run_background(), name="meshcp-background")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        await self.close()

    async def _run_background(self) -> None:
        """The controller's long-lived parts. Each retries what is transient itself (a
        watch that drops, an unreachable CA backend); one that still raises has failed
        for good, and ends the others (`PartFailed`, see `run`)."""
        async with asyncio.TaskGroup() as tasks:

            def part(name: str, work: Coroutine[Any, Any, None]) -> None:
                tasks.create_task(self._part(name, work), name=name)

            part("publisher", self.publisher.run())
            part("renewal", self.certificates.run())
            part("trust", self.trust.run())
            settings = self.settings
            if self.election is not None:
                part("leader election", self.election.run())
            if settings.kubernetes:
                source = KubernetesSource(
                    self.store.apply,
                    api_client_factory=partial(
                        default_api_client, settings.kube_context, settings.kubeconfig
                    ),
                    mesh_name=settings.mesh_name or MeshConfig().mesh_name,
                    settings=settings.watch,
                    observer=ApiHealth(self.metrics, self.readiness),
                )
                part("kubernetes", source.run())
                part("reconcile", self.rounds.run())
                collector = SecretCollector(
                    partial(default_api_client, settings.kube_context, settings.kubeconfig),
                    settings.secret_collection,
                    leading=self.leading,
                )
                part("bootstrap Secret collector", collector.run())
                renewer = ProxylessRenewer(
                    partial(default_api_client, settings.kube_context, settings.kubeconfig),
                    self.issuer.issue,
                    settings.ca.trust_domain,
                    bundle=lambda: self.trust.bundle,
                    signing_root=self._signing_root,
                    validity=lambda: self.rounds.cert_validity,
                    key_spec=settings.ca.key_spec,
                    policy=RenewalPolicy(renew_share=settings.ca.renew_share),
                    settings=settings.proxyless_renewal,
                    leading=self.leading,
                    on_renewed=self.metrics.proxyless_renewed.inc,
                    on_failed=self.metrics.proxyless_renewal_failures.inc,
                )
                part("proxyless Secret renewal", renewer.run())
            elif settings.source is not None:
                part("files", FileSource(settings.source, self.store.apply).run())
                part("reconcile", self.rounds.run())

    async def _part(self, name: str, work: Coroutine[Any, Any, None]) -> None:
        """Runs one part; its failure is one log line, readiness turned false, and
        `PartFailed` naming it."""
        try:
            await work
        except Exception as error:
            failure = PartFailed(name, error)
            self.readiness.fail(name)
            log.error("%s", failure)
            raise failure from error

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; raises `PartFailed` as soon as a part fails, so that
        the process ends non-zero (the orchestrator restarts it) instead of serving xDS
        from a controller that no longer follows the mesh."""
        async with self:
            assert self._background is not None
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({stopping, self._background}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if self._background.done() and not self._background.cancelled():
                error = self._background.exception()
                if error is not None:
                    self._background = None  # reported here, not again on the way out
                    raise first_failure(error) from None
            log.info("shutting down")


def _always() -> bool:
    return True


def _election(settings: Settings, api_client: ApiClientFactory, metrics: Metrics) -> LeaderElection | None:
    if not (settings.kubernetes and settings.leader_lease):
        return None
    metrics.leader.set(0)  # a follower until it holds the Lease
    return LeaderElection(api_client, lease_settings(settings), on_change=metrics.leader.set)


def lease_settings(settings: Settings) -> LeaseSettings:
    """The Lease of `--leader-lease NAMESPACE/NAME`, held as this process (host name and a
    random suffix: a restarted replica is a new holder, and waits like any other)."""
    namespace, _, name = settings.leader_lease.partition("/")
    duration = settings.lease_duration
    return LeaseSettings(
        namespace,
        name,
        identity=f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}",
        duration=duration,
        renew_deadline=duration * 2 / 3,
        renew_every=min(2.0, duration / 5),
    )


class ApiHealth:
    """The Kubernetes source's watch observer: counts in the metrics, and `/readyz` false
    while a kind cannot be listed or watched (the source retries; xDS keeps serving the last
    state seen, see `Readiness`)."""

    def __init__(self, metrics: Metrics, readiness: Readiness) -> None:
        self._metrics = metrics
        self._readiness = readiness
        self._failing: set[str] = set()

    def watch_event(self, kind: str, event_type: str) -> None:
        self._metrics.watch_event(kind, event_type)

    def watch_restart(self, kind: str, reason: str) -> None:
        self._metrics.watch_restart(kind, reason)

    def watch_backoff(self, kind: str, seconds: float) -> None:
        self._metrics.watch_backoff(kind, seconds)

    def watch_failing(self, kind: str, failing: bool) -> None:
        self._metrics.watch_failing(kind, failing)
        if failing:
            self._failing.add(kind)
        else:
            self._failing.discard(kind)
        if self._failing:
            self._readiness.down("kubernetes", "cannot follow the API: " + ", ".join(sorted(self._failing)))
        else:
            self._readiness.up("kubernetes")


class PartFailed(Exception):
    """A long-lived part of the controller stopped with an error it could not recover from."""

    def __init__(self, part: str, error: BaseException) -> None:
        super().__init__(f"the controller's {part} stopped: {one_line(error)}")
        self.part = part


def first_failure(error: BaseException) -> BaseException:
    """The `PartFailed` inside a TaskGroup's exception group (the first part that failed;
    the others were cancelled because of it), or the error itself."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = first_failure(inner)
            if isinstance(found, PartFailed):
                return found
    return error


class ListenError(Exception):
    """A listener could not be opened (address in use, not permitted, ...)."""
