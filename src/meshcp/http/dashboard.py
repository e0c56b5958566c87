"""The KPI page (`/dashboard`) and the JSON it draws (`/dashboard/data`).

The page is three static files (`assets/`: HTML, JS, CSS; nothing loaded from elsewhere,
so it works offline); its script fetches `/dashboard/data` every few seconds and draws
the service graph, the per-edge table and the TrafficSplits from it.

Every number comes from Prometheus through `kpi.report`, the same rows `meshcp stat` and
`meshcp edges` print: golden metrics per workload and service it calls
(`report.stat_rows`, per destination), identities and mTLS per edge (`report.edge_rows`),
and per TrafficSplit leaf the configured weight beside the observed share
(`report.split_rows`). The mesh state adds what Prometheus cannot know: the workloads and
services of the meshed namespaces that sent nothing yet, and the configured splits.

Concurrent requests for the same window share one set of Prometheus queries, so many open
pages cost the controller (and Prometheus) little more than one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import web

from meshcp.http.prometheus_errors import HANDLED, NOT_CONFIGURED, UNAVAILABLE, status_of
from meshcp.kpi import queries, report
from meshcp.kpi.prometheus import NoData, Prometheus
from meshcp.kpi.queries import QueryError, Resource, Selection
from meshcp.model.state import MeshState

DEFAULT_WINDOW = "1m"
#: The page's files, by the name they are served under (`/dashboard/<name>`).
ASSETS = {
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
}
#: The page loads nothing but its own files and its own data.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

#: Node kinds: a workload (the pods of a deploy) and a service.
DEPLOY, SERVICE = "deploy", "svc"


def node_id(kind: str, namespace: str, name: str) -> str:
    """A node's stable id: `deploy/<ns>/<name>` or `svc/<ns>/<name>`."""
    return f"{kind}/{namespace}/{name}"


class _Shared:
    """One computation per key at a time: callers that ask while it runs await the same
    result. A caller that goes away (a closed page) does not cancel it for the others."""

    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[dict[str, Any]]] = {}

    async def get(self, key: str, make: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have left


@dataclass(frozen=True)
class Source:
    """Where the page's data comes from (the controller's own, see `http.app.Controller`)."""

    #: The settled mesh state: meshed workloads and services, TrafficSplits' weights.
    state: Callable[[], MeshState]
    #: Where golden metrics are read; None answers 503.
    prometheus: Prometheus | None


SOURCE = web.AppKey("dashboard_source", Source)
SHARED = web.AppKey("dashboard_shared", _Shared)
PAGE = web.AppKey("dashboard_page", bytes)


def _asset(name: str) -> bytes:
    return (resources.files("meshcp.http") / "assets" / name).read_bytes()


def _headers(content_type: str) -> dict[str, str]:
    return {"Content-Type": f"{content_type}; charset=utf-8", **SECURITY_HEADERS}


async def page(request: web.Request) -> web.Response:
    """The page itself; it reads `?window=` and `?refresh=` (seconds) in the browser."""
    return web.Response(body=request.app[PAGE], headers=_headers("text/html"))


def _asset_handler(name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    body = _asset(name)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=_headers(content_type))

    return handler


def _error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": reason, **extra}, status=status, headers={"Cache-Control": "no-store"})


async def data(request: web.Request) -> web.Response:
    """The page's data for `?window=` (a Prometheus duration, default 1m): 200 with nodes,
    edges and splits; 400 for a bad window; 503 when Prometheus is not configured or
    unreachable and 502 when it answers nonsense, each with the reason in `error`."""
    source = request.app[SOURCE]
    try:
        window = queries.window(request.query.get("window", DEFAULT_WINDOW))
    except QueryError as error:
        return _error(400, str(error))
    client = source.prometheus
    if client is None:
        return _error(UNAVAILABLE, NOT_CONFIGURED, window=window)
    state = source.state()
    try:
        found = await request.app[SHARED].get(window, lambda: snapshot(client, state, window))
    except HANDLED as error:
        return _error(status_of(error), str(error), window=window, prometheus=client.url)
    return web.json_response(found, headers={"Cache-Control": "no-store"})


async def snapshot(client: Prometheus, state: MeshState, window: str) -> dict[str, Any]:
    """Everything the page draws for one window (the JSON of `/dashboard/data`)."""
    golden, identities = await asyncio.gather(
        _or_nothing(
            report.stat_rows(client, Selection(Resource(DEPLOY), window=window, per_destination=True))
        ),
        _or_nothing(report.edge_rows(client, DEPLOY, "", window, state)),
    )
    splits = report.splits_of(state)
    leaves = await report.split_rows(client, splits, window) if splits else []
    edges = _edges(golden, identities)
    return {
        "window": window,
        "prometheus": client.url,
        "nodes": _nodes(state, edges, splits),
        "edges": edges,
        "splits": _splits(leaves),
    }


async def _or_nothing(rows: Awaitable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows; none while Prometheus holds no series for them (a quiet mesh)."""
    try:
        return await rows
    except NoData:
        return []


EDGE_METRICS = ("rps", "success", "latency_p50", "latency_p99", "requests", "tcp_conn")


def _edges(golden: Iterable[dict[str, Any]], identities: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One edge per workload and service it calls: the golden metrics of `stat_rows` joined
    with SECURED and the identities of `edge_rows` (either may be missing: an edge with a
    connection but no request, or requests counted before the connection series)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}

    def edge(src: str, dst: str) -> dict[str, Any]:
        if (src, dst) not in found:
            src_ns, _, src_name = src.partition("/")
            dst_ns, _, dst_name = dst.partition("/")
            found[(src, dst)] = {
                "id": f"{src}->{dst}",
                "src": src,
                "dst": dst,
                "source": node_id(DEPLOY, src_ns, src_name),
                "target": node_id(SERVICE, dst_ns, dst_name),
                **dict.fromkeys(EDGE_METRICS),
                "secured": None,
                "client_id": None,
                "server_id": None,
            }
        return found[(src, dst)]

    for row in golden:
        src = f"{row['namespace']}/{row['name']}"
        dst = f"{row['destination_namespace']}/{row['destination']}"
        edge(src, dst).update({metric: row[metric] for metric in EDGE_METRICS})
    for row in identities:
        edge(row["src"], row["dst"]).update(
            secured=row["secured"], client_id=row["client_id"], server_id=row["server_id"]
        )
    return [found[key] for key in sorted(found)]


def _nodes(state: MeshState, edges: Iterable[dict[str, Any]], splits: Iterable[Any]) -> list[dict[str, Any]]:
    """Workloads and services: those of the meshed namespaces (traffic or not), every end
    of an observed edge, and every service a TrafficSplit names."""
    found: set[tuple[str, str, str]] = set()
    meshed = state.meshed_namespaces
    for pod in state.pods:
        if pod.meta.namespace in meshed:
            found.add((DEPLOY, pod.meta.namespace, queries.deploy_of(pod.meta.name)))
    for service in state.services:
        if service.meta.namespace in meshed:
            found.add((SERVICE, service.meta.namespace, service.meta.name))
    for edge in edges:
        for end in (edge["source"], edge["target"]):
            kind, namespace, name = end.split("/", 2)
            found.add((kind, namespace, name))
    for split in splits:
        for name in (split.service, *(backend.service for backend in split.backends)):
            found.add((SERVICE, split.meta.namespace, name))
    return [
        {"id": node_id(kind, namespace, name), "kind": kind, "namespace": namespace, "name": name}
        for kind, namespace, name in sorted(found)
    ]


def _splits(leaves: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of `split_rows` grouped by split: apex, then each leaf's configured weight
    and observed share (both fractions of 1) and its golden metrics."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in leaves:
        key = (row["namespace"], row["split"])
        split = found.setdefault(
            key, {"namespace": key[0], "name": key[1], "apex": row["apex"], "leaves": []}
        )
        split["leaves"].append(
            {
                "service": row["leaf"],
                "weight": row["weight"],
                "share": row["share"],
                **{metric: row[metric] for metric in EDGE_METRICS},
            }
        )
    return [found[key] for key in sorted(found)]


def add_routes(app: web.Application, state: Callable[[], MeshState], prometheus: Prometheus | None) -> None:
    """Serve the page, its files and its data on `app` (the controller's HTTP app), from
    the mesh `state` and `prometheus` (None: the data route answers 503)."""
    app[SOURCE] = Source(state, prometheus)
    app[SHARED] = _Shared()
    app[PAGE] = _asset("dashboard.html")
    app.router.add_get("/dashboard", page)
    app.router.add_get("/dashboard/data", data)
    for name, content_type in ASSETS.items():
        app.router.add_get(f"/dashboard/{name}", _asset_handler(name, content_type))
