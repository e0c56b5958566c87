"""The webhook server (`meshcp inject`): HTTPS on `/mutate-pod-creation`, plus `/healthz` and
`/metrics`.

The API server is the only client, and it must always get an answer it can use: a body that
is not an AdmissionReview gets HTTP 400 with the reason; anything else gets a well-formed
AdmissionReview response carrying the request's uid, in the request's apiVersion, whatever
happens while handling it (an unexpected error refuses the pod with a message rather than
answering 500, and is logged with its traceback). The process never exits because of input.

The serving certificate is usually a Kubernetes Secret volume that cert-manager (or an
operator) replaces in place. It is re-read when its files change, checked on every TLS
handshake (two `stat` calls), so the very next connection presents the new certificate and
no restart is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from meshcp.certs.internal import InternalCA
from meshcp.certs.issuance import xds_client_request
from meshcp.certs.issuer import Issuer, RetryPolicy
from meshcp.certs.provider import CertificateError, CertificateProvider
from meshcp.certs.setup import CaSettings, close_provider, open_provider
from meshcp.certs.storage import DirectoryStore
from meshcp.identity import ProxyIdentity
from meshcp.injector.kube import ClusterError, KubeCluster
from meshcp.injector.mutation import (
    DEFAULT_INIT_IMAGE,
    BootstrapRenderer,
    Candidate,
    Deny,
    MalformedReview,
    NamespaceInfo,
    Review,
    SidecarTemplate,
    Skip,
    allowed_response,
    bootstrap_secret,
    decide,
    denied_response,
    parse_review,
    pod_creation,
    sidecar_patch,
)
from meshcp.kube.client import default_api_client
from meshcp.model.meshconfig import MeshConfig

log = logging.getLogger(__name__)

MUTATE_PATH = "/mutate-pod-creation"
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The API server caps requests at 3 MiB; a pod never comes near this.
MAX_BODY = 8 * 1024 * 1024
#: Seconds to answer in: the API server's webhook timeout is 10 s by default.
DEFAULT_DEADLINE = 8.0
#: Issuance retries must fit in the deadline: a CA that is down is reported, not waited for.
ISSUE_RETRY = RetryPolicy(attempts=3, initial_delay=0.2, max_delay=1.0, attempt_timeout=3.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RESULTS = ("injected", "skipped", "denied", "malformed", "error")


class InjectorError(Exception):
    """The injector cannot start (TLS files, CA, credentials, listener): exit status 1."""


class Cluster(Protocol):
    """The Kubernetes API as the injector needs it (`kube.KubeCluster`). Methods raise
    `kube.ClusterError` when the API cannot answer."""

    async def namespace(self, name: str) -> NamespaceInfo | None: ...

    async def mesh_config(self, name: str) -> MeshConfig: ...

    async def create_secret(self, secret: Mapping[str, Any]) -> None: ...


class InjectorMetrics:
    """The injector's Prometheus metrics, on their own registry (no process-global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.admissions = Counter(
            "meshcp_injector_admissions", "Admission requests answered, by result.", ["result"], registry=r
        )
        for result in RESULTS:
            self.admissions.labels(result)
        self.latency = Histogram(
            "meshcp_injector_admission_duration_seconds",
            "Time to answer an admission request, by result.",
            ["result"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tls_reloads = Counter(
            "meshcp_injector_tls_reloads",
            "Serving certificate reloads after its files changed, by result.",
            ["result"],
            registry=r,
        )

    def tls_reloaded(self, ok: bool) -> None:
        self.tls_reloads.labels("ok" if ok else "failed").inc()

    def count(self, result: str) -> float:
        """Admissions answered with `result` so far."""
        value = self.registry.get_sample_value("meshcp_injector_admissions_total", {"result": result})
        return value or 0.0

    def observe(self, result: str, seconds: float) -> None:
        self.admissions.labels(result).inc()
        self.latency.labels(result).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ReloadingTls:
    """A server TLS context whose certificate follows its files.

    `context` is what the listener uses. On each handshake its SNI callback (called with or
    without SNI) compares the files' stat signature with the loaded one and, when it
    changed, loads a new context and switches the connection to it. A pair that does not
    load (a certificate written before its key) is reported once and the previous
    certificate keeps serving until the files change again.
    """

    def __init__(self, cert: Path, key: Path, *, on_reload: Callable[[bool], None] | None = None) -> None:
        self._cert, self._key = cert, key
        self._on_reload = on_reload
        self._signature = self._stat()
        self._failed: tuple[int, ...] | None = None
        self.context = self._current = self._load()
        self.context.sni_callback = self._on_handshake

    def refresh(self) -> bool:
        """Load the files again if they changed; whether a new certificate is now served."""
        try:
            signature = self._stat()
        except OSError:
            return False  # mid-replacement; the next handshake looks again
        if signature in (self._signature, self._failed):
            return False
        try:
            context = self._load()
        except (OSError, ssl.SSLError, ValueError) as error:
            self._failed = signature
            log.warning(
                "serving certificate %s not reloaded, keeping the previous one: %s", self._cert, error
            )
            self._report(False)
            return False
        self._current, self._signature, self._failed = context, signature, None
        log.info("serving certificate reloaded from %s", self._cert)
        self._report(True)
        return True

    def _on_handshake(
        self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        self.refresh()
        if connection.context is not self._current:
            connection.context = self._current

    def _report(self, ok: bool) -> None:
        if self._on_reload is not None:
            self._on_reload(ok)

    def _stat(self) -> tuple[int, ...]:
        signature: list[int] = []
        for path in (self._cert, self._key):
            st = os.stat(path)
            signature += [st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev]
        return tuple(signature)

    def _load(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self._cert, self._key)
        return context


class Injector:
    """Answers one AdmissionReview: decides, issues the xDS certificate, creates the Secret.

    `trust_bundle` returns the PEM bundle sidecars trust for the controller's certificate.
    """

    def __init__(
        self,
        cluster: Cluster,
        issuer: Issuer,
        template: SidecarTemplate,
        trust_bundle: Callable[[], Awaitable[str]],
        *,
        trust_domain: str = "cluster.local",
        mesh_config_name: str = "meshcp",
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self._cluster = cluster
        self._issuer = issuer
        self._template = template
        self._bootstrap = BootstrapRenderer(template)
        self._trust_bundle = trust_bundle
        self._trust_domain = trust_domain
        self._mesh_config_name = mesh_config_name
        self._deadline = deadline

    async def admit(self, review: Review) -> tuple[str, dict[str, Any]]:
        """The result label and the AdmissionReview to answer with."""
        creation = pod_creation(review)
        if isinstance(creation, Skip):
            return "skipped", allowed_response(review, reason=creation.reason)
        try:
            async with asyncio.timeout(self._deadline):
                namespace = await self._cluster.namespace(creation.namespace)
                mesh = await self._cluster.mesh_config(self._mesh_config_name)
                decision = decide(creation, namespace, mesh)
                if isinstance(decision, Skip):
                    log.debug("not injecting %s: %s", creation.display_name, decision.reason)
                    return "skipped", allowed_response(review, reason=decision.reason)
                if isinstance(decision, Deny):
                    log.info("refusing %s: %s", creation.display_name, decision.message)
                    return "denied", denied_response(review, decision.message, code=decision.code)
                try:
                    proxy = ProxyIdentity(str(uuid.uuid4()), decision.identity, self._trust_domain)
                except ValueError as error:  # a service account name too long for a DNS name
                    message = f"cannot name the sidecar of pod {creation.display_name}: {error}"
                    return "denied", denied_response(review, message)
                return "injected", await self._inject(review, decision, proxy, mesh)
        except (ClusterError, CertificateError) as error:
            message = f"meshcp cannot inject pod {creation.display_name}: {error}"
        except TimeoutError:
            message = (
                f"meshcp cannot inject pod {creation.display_name}: no answer within {self._deadline:g}s"
            )
        log.warning("%s", message)
        return "denied", denied_response(review, message, code=500)

    async def _inject(
        self, review: Review, candidate: Candidate, proxy: ProxyIdentity, mesh: MeshConfig
    ) -> dict[str, Any]:
        patch = sidecar_patch(candidate, proxy, self._template, mesh)
        if not review.dry_run:
            certificate = await self._issuer.issue(xds_client_request(proxy))
            bundle = await self._trust_bundle()
            await self._cluster.create_secret(
                bootstrap_secret(candidate, proxy, self._bootstrap, certificate, bundle)
            )
        log.info(
            "injected sidecar %s into %s%s",
            proxy.proxy_uuid,
            candidate.creation.display_name,
            " (dry run)" if review.dry_run else "",
        )
        return allowed_response(review, patch=patch)


INJECTOR = web.AppKey("injector", Injector)
METRICS = web.AppKey("metrics", InjectorMetrics)


async def mutate(request: web.Request) -> web.Response:
    started = time.perf_counter()
    metrics = request.app[METRICS]
    body = await request.read()
    try:
        review = parse_review(body)
    except MalformedReview as error:
        metrics.observe("malformed", time.perf_counter() - started)
        return web.Response(status=400, text=f"{error}\n")
    try:
        result, answer = await request.app[INJECTOR].admit(review)
        text = json.dumps(answer)
    except Exception:
        log.exception("unexpected error answering admission request %s", review.uid)
        result = "error"
        text = json.dumps(denied_response(review, "meshcp injector: internal error (see its log)", code=500))
    metrics.observe(result, time.perf_counter() - started)
    return web.Response(text=text, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


def create_app(injector: Injector, metrics: InjectorMetrics) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[INJECTOR] = injector
    app[METRICS] = metrics
    app.router.add_post(MUTATE_PATH, mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


class InjectorServer:
    """Runs the app on host:port over TLS with aiohttp's AppRunner (shares the caller's loop)."""

    def __init__(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        self.port = 0

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=tls, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise InjectorError(f"cannot listen on {host}:{port}: {error.strerror}") from None
        sockets = getattr(site._server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()


@dataclass
class InjectorSettings:
    """How `meshcp inject` runs."""

    #: PEM certificate chain and key the webhook serves (re-read when they change).
    tls_cert: Path
    tls_key: Path
    host: str = "0.0.0.0"
    port: int = 9090
    #: None: in-cluster credentials in a pod, else the default kubeconfig.
    kubeconfig: Path | None = None
    #: Where sidecars reach the controller's ADS server.
    xds_host: str = "meshcp-controller.meshcp-system.svc"
    xds_port: int = 15128
    #: The name on the controller's certificate (SNI); default `xds_host`.
    xds_server_name: str = ""
    #: PEM bundle sidecars trust for the controller; default the mesh CA's (as `serve` uses).
    xds_trust_bundle: Path | None = None
    #: Incremental (delta) ADS in the sidecars' bootstrap.
    delta_xds: bool = False
    init_image: str = DEFAULT_INIT_IMAGE
    #: Kubernetes ResourceRequirements of the Envoy container.
    sidecar_resources: Mapping[str, Any] | None = None
    #: The cluster-scoped MeshConfig object to read (its defaults when absent).
    mesh_config_name: str = "meshcp"
    #: Seconds to answer one admission request in.
    deadline: float = DEFAULT_DEADLINE
    #: The CA that signs xDS client certificates: the controller's (same provider; for the
    #: internal CA, the same state directory).
    ca: CaSettings = field(default_factory=CaSettings)
    #: Seconds between checks for a root rotation committed by the controller (internal CA).
    ca_reload_interval: float = 10.0

    def template(self) -> SidecarTemplate:
        return SidecarTemplate(
            xds_host=self.xds_host,
            xds_port=self.xds_port,
            xds_server_name=self.xds_server_name,
            init_image=self.init_image,
            resources=self.sidecar_resources,
            delta_xds=self.delta_xds,
        )


async def run_injector(
    settings: InjectorSettings, stop: asyncio.Event, *, ready: Callable[[int], None] | None = None
) -> None:
    """Serve until `stop` is set; `ready` gets the bound port once listening.

    Raises `InjectorError` (or `CertificateError`) when it cannot start.
    """
    metrics = InjectorMetrics()
    try:
        tls = ReloadingTls(settings.tls_cert, settings.tls_key, on_reload=metrics.tls_reloaded)
    except (OSError, ssl.SSLError) as error:
        raise InjectorError(f"cannot load the webhook's TLS files: {error}") from None
    async with contextlib.AsyncExitStack() as stack:
        provider = await _open_ca(settings.ca, settings.kubeconfig)
        stack.push_async_callback(close_provider, provider)
        trust_bundle = _trust_bundle(provider, settings.xds_trust_bundle)
        await trust_bundle()  # fail now, not on the first pod
        try:
            cluster = await stack.enter_async_context(KubeCluster.connect(settings.kubeconfig))
        except ClusterError as error:
            raise InjectorError(str(error)) from None
        injector = Injector(
            cluster,
            Issuer(provider, ISSUE_RETRY),
            settings.template(),
            trust_bundle,
            trust_domain=settings.ca.trust_domain,
            mesh_config_name=settings.mesh_config_name,
            deadline=settings.deadline,
        )
        server = InjectorServer(create_app(injector, metrics))
        await server.start(settings.host, settings.port, tls.context)
        stack.push_async_callback(server.stop)
        log.info("sidecar injector serving https://%s:%d%s", settings.host, server.port, MUTATE_PATH)
        if ready is not None:
            ready(server.port)
        async with asyncio.TaskGroup() as tasks:
            if isinstance(provider, InternalCA):
                tasks.create_task(_follow_ca(provider, stop, settings.ca_reload_interval), name="ca-reload")
            await stop.wait()


async def _open_ca(settings: CaSettings, kubeconfig: Path | None = None) -> CertificateProvider:
    """The controller's CA. The internal one is opened from its state directory and never
    created here: a root only the injector knew would sign certificates nobody trusts."""
    if settings.provider != "internal" or settings.secret:
        factory = partial(default_api_client, None, str(kubeconfig) if kubeconfig else None)
        return await open_provider(settings, factory, create=False)
    if settings.state_dir is None:
        raise InjectorError("the internal CA needs --state-dir (the controller's CA state)")
    return await InternalCA.open(DirectoryStore(settings.state_dir), key_spec=settings.key_spec, create=False)


def _trust_bundle(provider: CertificateProvider, override: Path | None) -> Callable[[], Awaitable[str]]:
    if override is None:
        return provider.trust_bundle

    async def from_file() -> str:
        try:
            return await asyncio.to_thread(override.read_text)
        except OSError as error:
            raise CertificateError("file", f"cannot read xDS trust bundle {override}: {error}") from None

    return from_file


async def _follow_ca(ca: InternalCA, stop: asyncio.Event, interval: float) -> None:
    """Pick up root rotations the controller commits to the shared state directory."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            try:
                await ca.reload()
            except (CertificateError, OSError, ValueError) as error:
                log.warning("cannot reload the CA state: %s", error)
