"""The aiohttp application served next to the gRPC server, on the same event loop."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from meshcp.cache.snapshot_cache import SnapshotCache
from meshcp.metrics import Metrics
from meshcp.readiness import Readiness
from meshcp.xds.registry import ConnectedProxies

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Controller:
    """What the HTTP endpoint reads; every field is owned by the running controller."""

    readiness: Readiness
    metrics: Metrics
    proxies: ConnectedProxies
    cache: SnapshotCache


CONTROLLER = web.AppKey("controller", Controller)


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    readiness = request.app[CONTROLLER].readiness
    if readiness.ready:
        return web.Response(text="ready\n")
    return web.json_response({"ready": False, "waiting_for": readiness.pending}, status=503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[CONTROLLER].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


async def debug_proxies(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].proxies.status())


async def debug_cache(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].cache.status())


def create_app(controller: Controller) -> web.Application:
    app = web.Application()
    app[CONTROLLER] = controller
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/debug/proxies", debug_proxies)
    app.router.add_get("/debug/cache", debug_cache)
    return app


class HttpServer:
    """Runs the app on host:port with aiohttp's AppRunner (shares the caller's loop)."""

    def __init__(self, controller: Controller) -> None:
        self._runner = web.AppRunner(create_app(controller), access_log=None)
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()
