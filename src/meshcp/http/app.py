"""The aiohttp application served next to the gRPC server, on the same event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from meshcp import __version__
from meshcp.cache.dump import dump
from meshcp.cache.snapshot_cache import SnapshotCache
from meshcp.http import dashboard, traffic_metrics
from meshcp.kpi.prometheus import Prometheus
from meshcp.model.state import MeshState, Problem
from meshcp.sidecar.grpc_bootstrap import PROXYLESS_GRPC, PROXYLESS_KEY
from meshcp.telemetry.metrics import Metrics
from meshcp.telemetry.readiness import Readiness
from meshcp.xds.registry import ConnectedProxies
from meshcp.xds.sync_status import summary

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Seconds a connection may sit without a complete request (idle between requests, or
#: trickling its headers, slow-loris) before it is closed. aiohttp's own default is an
#: hour, so a client could hold a descriptor that long per connection.
IDLE_TIMEOUT = 15.0


@dataclass(frozen=True)
class Controller:
    """What the HTTP endpoint reads; every field is owned by the running controller."""

    readiness: Readiness
    metrics: Metrics
    proxies: ConnectedProxies
    cache: SnapshotCache
    problems: Callable[[], Sequence[Problem]] = lambda: ()
    #: The settled mesh state (TrafficSplits' configured weights, who is in the mesh).
    state: Callable[[], MeshState] = MeshState
    #: Where golden metrics are read (None: the metrics API and dashboard answer 503).
    prometheus: Prometheus | None = None
    #: The CA's root rotation as the controller carries it out: phase and the proxies it
    #: waits for (`TrustCoordinator.status`).
    trust: Callable[[], Mapping[str, object]] = dict
    #: The (namespace, pod) a node id stands for, when the mesh knows it.
    pod_of: Callable[[str], tuple[str, str] | None] = lambda node_id: None
    #: Leader election among replicas (`LeaderElection.status`); without one, the only
    #: replica leads.
    leadership: Callable[[], Mapping[str, object]] = lambda: {"leader": True, "lease": None}


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


def _proxies(controller: Controller) -> list[dict[str, object]]:
    """Each open stream's status with its class's current versions and its pod."""
    found = controller.proxies.status(controller.cache.get)
    for item in found:
        pod = controller.pod_of(str(item["node_id"]))
        item["pod"] = None if pod is None else f"{pod[0]}/{pod[1]}"
        metadata = item.get("metadata")
        proxyless = isinstance(metadata, dict) and metadata.get(PROXYLESS_KEY) == PROXYLESS_GRPC
        item["flavour"] = "proxyless-grpc" if proxyless else "sidecar"
    return found


async def debug_proxies(request: web.Request) -> web.Response:
    """Each open stream, with per type what was sent, ACKed or NACKed, and whether the
    proxy holds its class's current content (`current`, `version_current`)."""
    return web.json_response(_proxies(request.app[CONTROLLER]))


async def sync(request: web.Request) -> web.Response:
    """How many proxies are connected and in sync, and the first `limit` (default 10) that
    are not: what `meshcp check` reads through the API server's pod proxy, which cannot
    reach the loopback-only debug listener."""
    text = request.query.get("limit", "10")
    if not text.isdigit():
        raise web.HTTPBadRequest(text=f"limit={text}: must be a whole number\n")
    return web.json_response(summary(_proxies(request.app[CONTROLLER]), int(text)))


async def debug_version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


async def debug_trust(request: web.Request) -> web.Response:
    """The root rotation: its phase and the proxies that have not ACKed their secrets."""
    return web.json_response(dict(request.app[CONTROLLER].trust()))


async def debug_leader(request: web.Request) -> web.Response:
    """Whether this replica leads (writes what must be written once), and who holds the Lease."""
    return web.json_response(dict(request.app[CONTROLLER].leadership()))


async def debug_cache(request: web.Request) -> web.Response:
    return web.json_response(request.app[CONTROLLER].cache.status())


async def debug_problems(request: web.Request) -> web.Response:
    """Objects that were reported invalid or conflicting, and skipped."""
    problems = request.app[CONTROLLER].problems()
    return web.json_response(
        [{"object": str(p.ref), "location": p.location, "reason": p.reason} for p in problems]
    )


async def debug_config(request: web.Request) -> web.Response:
    """What the server holds for one connected proxy (secrets without keys)."""
    controller = request.app[CONTROLLER]
    node_id = request.match_info["node_id"]
    connection = controller.proxies.find(node_id)
    if connection is None:
        raise web.HTTPNotFound(text=f"no proxy {node_id!r} is connected\n")
    snapshot = controller.cache.get(connection.key)
    resources = (
        [] if snapshot is None else [r for t in snapshot.type_urls() for r in snapshot.resources(t).values()]
    )
    # Decoding every resource of a large class takes long: off the event loop, so that the
    # xDS streams it also serves never wait on a debug request.
    decoded = await asyncio.to_thread(dump, resources)
    return web.json_response({"node_id": node_id, "class": connection.key, **decoded})


def create_app(controller: Controller) -> web.Application:
    app = web.Application()
    app[CONTROLLER] = controller
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/sync", sync)
    dashboard.add_routes(app, controller.state, controller.prometheus)
    traffic_metrics.add_routes(app, controller.state, controller.prometheus)
    return app


def create_debug_app(controller: Controller) -> web.Application:
    """The debug endpoints, served on their own listener (`--debug-address`, loopback by
    default): they name every proxy and show every proxy's configuration, which other pods
    have no business reading (`kubectl port-forward` reaches a pod's loopback)."""
    app = web.Application()
    app[CONTROLLER] = controller
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/debug/proxies", debug_proxies)
    app.router.add_get("/debug/cache", debug_cache)
    app.router.add_get("/debug/problems", debug_problems)
    app.router.add_get("/debug/config/{node_id}", debug_config)
    app.router.add_get("/debug/version", debug_version)
    app.router.add_get("/debug/trust", debug_trust)
    app.router.add_get("/debug/leader", debug_leader)
    return app


class HttpServer:
    """Runs the app on host:port with aiohttp's AppRunner (shares the caller's loop)."""

    def __init__(
        self,
        controller: Controller,
        app: Callable[[Controller], web.Application] = create_app,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._runner = web.AppRunner(app(controller), access_log=None, keepalive_timeout=idle_timeout)
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
