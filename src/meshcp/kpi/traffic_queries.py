"""The PromQL of the SMI TrafficMetrics API (`meshcp.kpi.traffic_metrics`), beside the
expressions of `meshcp stat` (`meshcp.kpi.queries`, whose naming rules it shares).

The API counts requests over a window and needs exact counts, so a count is the growth of
Envoy's counters between the window's start and now (a series born inside the window
counts from zero, as `queries.success_rate` does), never `increase`'s extrapolation.

Three views of the same requests, each a `View` (which counters, which of their series,
one row per which labels):

- `inbound`: what a pod, deploy or namespace *received*, from its own sidecars' inbound
  HTTP connection managers (`envoy_http_downstream_rq_*`, prefix `inbound`); the
  identity labels there are the server's. The server side.
- `outbound`: what it *sent*, per Service called, from its sidecars' upstream clusters
  (`envoy_cluster_upstream_rq_*`). The client side.
- `callers`: what others sent to the Services it serves, per caller, from the callers'
  upstream clusters. The client side: a client's series name the Service, not the
  server pod, so this is the traffic to every endpoint of those Services.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from meshcp.kpi import queries
from meshcp.kpi.queries import QueryError
from meshcp.sidecar.bootstrap import (
    DESTINATION_NAMESPACE,
    DESTINATION_SERVICE,
    LOCAL_SERVICE,
    SOURCE_NAMESPACE,
)

#: The URL's resource names → the kinds of `meshcp.kpi.queries`.
KINDS = {"pods": "pod", "deployments": "deploy", "namespaces": "ns"}

DOWNSTREAM_TOTAL = "envoy_http_downstream_rq_total"
DOWNSTREAM_XX = "envoy_http_downstream_rq_xx"
DOWNSTREAM_TIME_BUCKET = "envoy_http_downstream_rq_time_bucket"
#: The inbound listeners' HTTP connection managers (`http.inbound.<port>.`, `compile.lds`).
INBOUND = 'envoy_http_conn_manager_prefix="inbound"'
#: Every sidecar exports it, with its identity: who is in the mesh, with or without traffic.
SERVER_LIVE = "envoy_server_live"
FIVE_XX = 'envoy_response_code_class="5"'
#: The quantiles the spec names (p99, p90, p50), in its order.
QUANTILES = (0.99, 0.9, 0.5)


@dataclass(frozen=True)
class View:
    """Requests to count: the counters, the label matchers of their series, and the labels
    one row is summed by (`deploy` made from `source_pod` when `deploy` is set)."""

    total: str
    five_xx: str
    time_bucket: str
    matchers: tuple[str, ...]
    by: tuple[str, ...]
    deploy: bool = False


def kind(resource: str) -> str:
    """The kind of `meshcp.kpi.queries` a URL's resource name stands for."""
    try:
        return KINDS[resource]
    except KeyError:
        raise QueryError(f"unknown resource {resource!r} (one of {', '.join(KINDS)})") from None


def name(text: str) -> str:
    """A Kubernetes object name, refused here rather than quoted into PromQL."""
    if not queries.valid_name(text) or len(text) > 253:
        raise QueryError(f"bad name {text!r}")
    return text


def selects(kind_: str, namespace: str, name_: str = "") -> tuple[str, ...]:
    """Matchers of the series a pod, deploy or namespace's own sidecars export (all of the
    namespace's pods or deploys without `name_`, of every namespace without `namespace`). A
    namespace's name is its own."""
    return tuple(
        queries.source_matchers(queries.Resource(kind_, name_, name_ if kind_ == "ns" else namespace))
    )


def rows_of(kind_: str) -> tuple[str, ...]:
    """The labels of one resource of `kind_` in the sidecars' series."""
    return queries.group_labels(kind_)


def inbound(kind_: str, namespace: str, name_: str = "") -> View:
    """Requests the resource received, one row per resource, at its sidecars (server side)."""
    return View(
        DOWNSTREAM_TOTAL,
        DOWNSTREAM_XX,
        DOWNSTREAM_TIME_BUCKET,
        (INBOUND, *selects(kind_, namespace, name_)),
        rows_of(kind_),
        kind_ == "deploy",
    )


def outbound(kind_: str, namespace: str, name_: str) -> View:
    """Requests the resource sent, one row per Service called, at its sidecars (client side)."""
    return View(
        queries.RQ_TOTAL,
        queries.RQ_XX,
        queries.RQ_TIME_BUCKET,
        (f'{DESTINATION_SERVICE}!=""', *selects(kind_, namespace, name_)),
        queries.PER_DESTINATION,
    )


def callers(kind_: str, namespace: str, services: Iterable[str]) -> View:
    """Requests to `services` of `namespace` (every Service of it for a namespace, when
    `services` is empty), one row per caller at the resolution of `kind_` (client side)."""
    found = [f"{DESTINATION_NAMESPACE}={queries.quote(namespace)}", f'{DESTINATION_SERVICE}!=""']
    names = sorted(services)
    if names:
        found.append(f"{DESTINATION_SERVICE}=~{queries.quote('|'.join(re.escape(n) for n in names))}")
    return View(
        queries.RQ_TOTAL,
        queries.RQ_XX,
        queries.RQ_TIME_BUCKET,
        tuple(found),
        rows_of(kind_),
        kind_ == "deploy",
    )


def services(namespace: str) -> View:
    """Requests to every Service of `namespace` (TrafficSplit backends among them) from
    every caller, one row per Service (client side)."""
    return View(
        queries.RQ_TOTAL,
        queries.RQ_XX,
        queries.RQ_TIME_BUCKET,
        (f"{DESTINATION_NAMESPACE}={queries.quote(namespace)}", f'{DESTINATION_SERVICE}!=""'),
        queries.PER_DESTINATION,
    )


def _selector(metric: str, view: View, extra: str = "") -> str:
    return f"{metric}{{{','.join((*view.matchers, extra) if extra else view.matchers)}}}"


def _growth(metric: str, view: View, window: str, extra: str = "") -> str:
    """The per-row growth of a counter over the window (`queries.growth`)."""
    return queries.growth(_selector(metric, view, extra), view.by, window, deploy=view.deploy)


def failure_count(view: View, window: str) -> str:
    """Requests answered 5xx in the window; 0 for a row with requests and no 5xx series."""
    total = _growth(view.total, view, queries.window(window))
    return f"({_growth(view.five_xx, view, window, FIVE_XX)}) or ({total}) * 0"


def success_count(view: View, window: str) -> str:
    """Requests answered with anything but 5xx in the window (a policy's 403 included)."""
    total = _growth(view.total, view, queries.window(window))
    return f"({total}) - ({failure_count(view, window)})"


def latency(view: View, quantile: float, window: str) -> str:
    """The quantile of request time, in milliseconds (Envoy's unit), over the window."""
    rate = f"rate({_selector(view.time_bucket, view)}[{queries.window(window)}])"
    buckets = f"sum by ({', '.join((*view.by, 'le'))}) ({queries.by_deploy(rate, view.deploy)})"
    return f"histogram_quantile({quantile:g}, {buckets})"


def members(kind_: str, namespace: str, name_: str = "") -> str:
    """The resources of `kind_` with a sidecar in Prometheus (one, or all of a namespace)."""
    selector = f"{SERVER_LIVE}{{{','.join(selects(kind_, namespace, name_))}}}"
    return f"group by ({', '.join(rows_of(kind_))}) ({queries.by_deploy(selector, kind_ == 'deploy')})"


def served(kind_: str, namespace: str, name_: str) -> str:
    """The Services (`local_service`) the resource's sidecars serve, by namespace."""
    found = (f'{LOCAL_SERVICE}!=""', *selects(kind_, namespace, name_))
    return f"group by ({SOURCE_NAMESPACE}, {LOCAL_SERVICE}) ({queries.CX_TOTAL}{{{','.join(found)}}})"
