"""The SMI TrafficMetrics API (metrics.smi-spec.io/v1alpha1) on the controller's HTTP app,
in the shape an aggregated API server answers (`deploy/metrics-apiservice.yaml` registers
it with Kubernetes). `docs/traffic-metrics.md` is the reference of every route.

Figures come from Prometheus (`meshcp.kpi.traffic_figures`), shaped by the pure
`meshcp.kpi.traffic_metrics`; TrafficSplits' backends and weights come from the mesh state.
Every error is a Kubernetes `Status`: 400 for a bad window, name or an unsupported
parameter, 404 for an unknown resource or one Prometheus holds no sidecar of, 503 when
Prometheus is not configured or unreachable, 502 when it answers nonsense. None of it
touches xDS: a slow or absent Prometheus delays these answers only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from meshcp.http.prometheus_errors import HANDLED, NOT_CONFIGURED, UNAVAILABLE, status_of
from meshcp.kpi import report, traffic_figures
from meshcp.kpi import traffic_metrics as tm
from meshcp.kpi import traffic_queries as tq
from meshcp.kpi.prometheus import NoData, Prometheus
from meshcp.kpi.queries import QueryError, window
from meshcp.model.state import MeshState

PREFIX = f"/apis/{tm.API_VERSION}"


class _Failure(Exception):
    """An answer of failure: the status code and Kubernetes `Status` message."""

    def __init__(self, code: int, message: str, **details: str) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class Source:
    """Where the API's data comes from (the controller's own, see `meshcp.http.app.Controller`)."""

    #: The settled mesh state: TrafficSplits and their configured weights.
    state: Callable[[], MeshState]
    #: Where the figures are read; None answers 503.
    prometheus: Prometheus | None


SOURCE = web.AppKey("traffic_metrics_source", Source)

Handler = Callable[[web.Request], Awaitable[web.Response]]


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


def _answer(make: Callable[[web.Request, Prometheus, tm.Request], Awaitable[dict[str, Any]]]) -> Handler:
    """A handler from a function of the request, a Prometheus and what items share; every
    known failure becomes a `Status`."""

    async def handler(request: web.Request) -> web.Response:
        try:
            if request.query.get("labelSelector"):
                raise _Failure(400, "labelSelector is not supported by this server")
            try:
                asked = tm.Request(window(request.query.get("window", tm.DEFAULT_WINDOW)), datetime.now(UTC))
            except QueryError as error:
                raise _Failure(400, str(error)) from None
            client = request.app[SOURCE].prometheus
            if client is None:
                raise _Failure(UNAVAILABLE, NOT_CONFIGURED)
            try:
                return _json(await make(request, client, asked))
            except HANDLED as error:
                raise _Failure(status_of(error), str(error)) from None
        except _Failure as failure:
            return _json(tm.status(failure.code, str(failure), failure.details), failure.code)

    return handler


def _kind(resource: str, *allowed: str) -> str:
    if resource not in allowed:
        raise _Failure(404, f"the server could not find the requested resource {resource!r}")
    return resource


def _name(text: str) -> str:
    try:
        return tq.name(text)
    except QueryError as error:
        raise _Failure(400, str(error)) from None


def _not_found(resource: str, namespace: str, name: str) -> _Failure:
    where = f" in namespace {namespace!r}" if namespace else ""
    return _Failure(
        404,
        f"{resource} {name!r}{where} has no traffic metrics: Prometheus holds no series of its sidecars",
        name=name,
        group=tm.GROUP,
        kind=resource,
    )


def _target(request: web.Request) -> tuple[str, str, str]:
    """The resource, namespace and name a route names (a namespace is its own namespace)."""
    info = request.match_info
    if "resource" not in info:
        name = _name(info["name"])
        return "namespaces", name, name
    resource = _kind(info["resource"], *tm.WITH_EDGES)
    return resource, _name(info["namespace"]), _name(info["name"])


async def _one(request: web.Request, client: Prometheus, asked: tm.Request) -> dict[str, Any]:
    resource, namespace, name = _target(request)
    try:
        received = await traffic_figures.resources(client, tq.kind(resource), namespace, name, asked.window)
    except NoData:
        raise _not_found(resource, "" if resource == "namespaces" else namespace, name) from None
    key, figures = next(iter(received.items()))
    return tm.traffic_metrics(tm.of_key(resource, key), tm.RECEIVED, figures, asked)


async def _edges(request: web.Request, client: Prometheus, asked: tm.Request) -> dict[str, Any]:
    resource, namespace, name = _target(request)
    try:
        found = await traffic_figures.edges(client, tq.kind(resource), namespace, name, asked.window)
    except NoData:
        raise _not_found(resource, "" if resource == "namespaces" else namespace, name) from None
    of = tm.of_key(resource, (name,) if resource == "namespaces" else (namespace, name))
    to = {(key[0], key[1]): figures for key, figures in found.to.items()}
    return tm.edge_list(resource, of, to, found.callers, asked)


async def _list(request: web.Request, client: Prometheus, asked: tm.Request) -> dict[str, Any]:
    """Every resource of a kind: of one namespace (`/namespaces/{namespace}/pods`), of all
    (`/pods`), or every namespace (`/namespaces`)."""
    resource = request.match_info.get("resource", "namespaces")
    namespace = request.match_info.get("namespace", "")
    if "resource" in request.match_info:
        _kind(resource, *(kind for kind in tm.OBJECT_KINDS if kind != "namespaces"))
    if namespace:
        _name(namespace)
    if resource == "trafficsplits":
        return await _splits(request, client, asked, namespace, "")
    try:
        received = await traffic_figures.resources(client, tq.kind(resource), namespace, "", asked.window)
    except NoData:
        received = {}
    return tm.resource_list(resource, namespace, received, asked)


async def _split(request: web.Request, client: Prometheus, asked: tm.Request) -> dict[str, Any]:
    name = _name(request.match_info["name"])
    return await _splits(request, client, asked, _name(request.match_info["namespace"]), name)


async def _splits(
    request: web.Request, client: Prometheus, asked: tm.Request, namespace: str, name: str
) -> dict[str, Any]:
    """One item per backend of the TrafficSplit `name` (of every split without a name)."""
    splits = report.splits_of(request.app[SOURCE].state(), namespace, name)
    if name and not splits:
        raise _Failure(
            404,
            f"trafficsplits {name!r} in namespace {namespace!r} is not in the mesh state",
            name=name,
            group=tm.GROUP,
            kind="trafficsplits",
        )
    figures = await traffic_figures.backends(client, splits, asked.window)
    return tm.split_list(namespace, splits, figures, asked)


_ONE = _answer(_one)
_EDGES = _answer(_edges)
_LIST = _answer(_list)
_SPLIT = _answer(_split)


async def _namespaced_one(request: web.Request) -> web.Response:
    """`/namespaces/{namespace}/{resource}/{name}`: a TrafficSplit's backends, or a pod's
    or deployment's traffic received."""
    if request.match_info["resource"] == "trafficsplits":
        return await _SPLIT(request)
    return await _ONE(request)


def _static(body: dict[str, Any]) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return _json(body)

    return handler


async def _unknown(request: web.Request) -> web.Response:
    message = f"the server could not find the requested resource ({request.path})"
    return _json(tm.status(404, message), 404)


def add_routes(app: web.Application, state: Callable[[], MeshState], prometheus: Prometheus | None) -> None:
    """Serve the API on `app` (the controller's HTTP app), from the mesh `state` and
    `prometheus` (None: every metrics route answers 503; discovery still answers)."""
    app[SOURCE] = Source(state, prometheus)
    group = f"/apis/{tm.GROUP}"
    add = app.router.add_get
    # In order: the first route that matches a path answers it.
    add("/apis", _static(tm.api_group_list()))
    for path in (group, group + "/"):
        add(path, _static(tm.api_group()))
    for path in (PREFIX, PREFIX + "/"):
        add(path, _static(tm.api_resource_list()))
    add(PREFIX + "/namespaces", _LIST)
    add(PREFIX + "/namespaces/{name}", _ONE)
    add(PREFIX + "/namespaces/{name}/edges", _EDGES)
    add(PREFIX + "/namespaces/{namespace}/{resource}", _LIST)
    add(PREFIX + "/namespaces/{namespace}/{resource}/{name}", _namespaced_one)
    add(PREFIX + "/namespaces/{namespace}/{resource}/{name}/edges", _EDGES)
    add(PREFIX + "/{resource}", _LIST)
    add(PREFIX + "/{tail:.*}", _unknown)
