"""The webhook server's process (`meshcp inject`): open the CA, connect to Kubernetes, listen
over HTTPS, follow the controller's root rotations, and stop cleanly.

The parts it wires are modules of their own: `app` (the routes), `admission` (one answer),
`tls_reload` (the serving certificate), `metrics`, `settings`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from meshcp.certs.internal import InternalCA
from meshcp.certs.issuer import Issuer
from meshcp.certs.provider import CertificateError, CertificateProvider
from meshcp.certs.setup import CaSettings, close_provider, open_provider
from meshcp.certs.storage import DirectoryStore
from meshcp.injector.admission import ISSUE_RETRY, Injector
from meshcp.injector.app import MUTATE_PATH, create_app
from meshcp.injector.errors import InjectorError
from meshcp.injector.kube import ClusterError, KubeCluster
from meshcp.injector.metrics import InjectorMetrics
from meshcp.injector.settings import InjectorSettings
from meshcp.injector.tls_reload import ReloadingTls
from meshcp.injector.webhook_ca import WebhookCaBundle
from meshcp.kube.client import default_api_client
from meshcp.telemetry.failures import one_line

log = logging.getLogger(__name__)


class InjectorServer:
    """Runs the app on host:port over TLS with aiohttp's AppRunner (shares the caller's loop)."""

    def __init__(self, app: web.Application, *, idle_timeout: float) -> None:
        """`idle_timeout`: seconds a connection may go without a complete request."""
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout)
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


async def run_injector(
    settings: InjectorSettings, stop: asyncio.Event, *, ready: Callable[[int], None] | None = None
) -> None:
    """Serve until `stop` is set; `ready` gets the bound port once listening.

    Raises `InjectorError` (or `CertificateError`) when it cannot start.
    """
    metrics = InjectorMetrics()
    reloaded: list[Callable[[bool], None]] = [metrics.tls_reloaded]

    def on_reload(ok: bool) -> None:
        for hook in reloaded:
            hook(ok)

    try:
        tls = ReloadingTls(settings.tls_cert, settings.tls_key, on_reload=on_reload)
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
            mesh_name=settings.mesh_name,
            deadline=settings.deadline,
        )
        webhook_ca = None
        if settings.webhook_config:
            webhook_ca = WebhookCaBundle(
                cluster,
                settings.webhook_config,
                tls_cert=settings.tls_cert,
                webhook_ca=settings.webhook_ca,
                interval=settings.webhook_check_interval,
            )
            reloaded.append(webhook_ca.changed)
        server = InjectorServer(create_app(injector, metrics), idle_timeout=settings.idle_timeout)
        await server.start(settings.host, settings.port, tls.context)
        stack.push_async_callback(server.stop)
        log.info("sidecar injector serving https://%s:%d%s", settings.host, server.port, MUTATE_PATH)
        if ready is not None:
            ready(server.port)
        try:
            async with asyncio.TaskGroup() as tasks:
                if isinstance(provider, InternalCA):
                    follow = _follow_ca(provider, stop, settings.ca_reload_interval)
                    tasks.create_task(_part("CA reload", follow), name="ca-reload")
                if webhook_ca is not None:
                    tasks.create_task(_part("webhook caBundle", webhook_ca.run(stop)), name="webhook-ca")
                await stop.wait()
        except* InjectorError as failed:
            # one line, and exit 1: the orchestrator restarts an injector that stopped
            # following its CA rather than one that signs from a stale root
            raise failed.exceptions[0] from None


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


async def _part(name: str, work: Coroutine[Any, Any, None]) -> None:
    """A long-lived part of the injector: what it could not recover from (it retries and
    logs what is transient itself) ends the injector with one line naming it."""
    try:
        await work
    except Exception as error:
        reason = one_line(error)
        log.error("the injector's %s stopped: %s", name, reason)
        raise InjectorError(f"the injector's {name} stopped: {reason}") from error


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
