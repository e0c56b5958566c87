"""The SMI TrafficMetrics API's JSON (metrics.smi-spec.io/v1alpha1), built from figures.

Pure functions: `meshcp.kpi.traffic_figures` reads the figures from Prometheus,
`meshcp.http.traffic_metrics` serves what these build. The shapes are the spec's
(servicemeshinterface/smi-spec, apis/traffic-metrics/v1alpha1/traffic-metrics.md):
`TrafficMetrics`, `TrafficMetricsList`, the discovery documents an aggregated API server
answers (`APIGroupList`, `APIGroup`, `APIResourceList`) and Kubernetes' `Status` for errors.

Values are Kubernetes quantity strings: latencies in seconds with the spec's unit
(`"2500u"` is 2.5 ms, `"10m"` 10 ms), counts as plain integers (`"42"`). A latency is
`null` when no request was answered in the window (there is no quantile of nothing, and 0
would claim instant answers). `docs/traffic-metrics.md` says what each route counts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from meshcp.kpi.traffic_queries import QUANTILES
from meshcp.model.smi import TrafficSplit

GROUP = "metrics.smi-spec.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
#: The window when the request names none: the spec's examples' (a Prometheus duration).
DEFAULT_WINDOW = "30s"

#: The URL's resource names → the kind of the object the metrics are about.
OBJECT_KINDS = {
    "namespaces": "Namespace",
    "deployments": "Deployment",
    "pods": "Pod",
    "trafficsplits": "TrafficSplit",
}
#: Resources with an `edges` sub-resource.
WITH_EDGES = ("namespaces", "deployments", "pods")
SERVICE = "Service"


@dataclass(frozen=True)
class Figures:
    """One TrafficMetrics' numbers: requests answered (not 5xx) and failed (5xx) in the
    window, and latency quantiles in milliseconds (None: no request in the window)."""

    success: float = 0.0
    failure: float = 0.0
    #: Quantile (0.99, 0.9, 0.5) → milliseconds.
    latency: Mapping[float, float | None] = field(default_factory=lambda: dict.fromkeys(QUANTILES))


@dataclass(frozen=True)
class Ref:
    """An object reference as the spec writes one: only the fields it has."""

    kind: str = ""
    namespace: str = ""
    name: str = ""

    def as_json(self) -> dict[str, str]:
        found = {"kind": self.kind, "namespace": self.namespace, "name": self.name}
        return {key: value for key, value in found.items() if value}


@dataclass(frozen=True)
class Request:
    """What every item of one answer shares: the window asked (a Prometheus duration) and
    when the figures were read."""

    window: str
    now: datetime


# --- values -------------------------------------------------------------------------------------

_DURATION = re.compile(r"([0-9]+)(ms|s|m|h|d|w|y)")
_MILLISECONDS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}


def seconds(milliseconds: float) -> str:
    """A latency in milliseconds as a Kubernetes quantity of seconds, to the microsecond:
    `1.5` → `"1500u"`, `10` → `"10m"`, `2000` → `"2"`."""
    micro = round(milliseconds * 1000)
    if micro <= 0:
        return "0"
    for scale, suffix in ((1_000_000, ""), (1000, "m")):
        if micro % scale == 0:
            return f"{micro // scale}{suffix}"
    return f"{micro}u"


def count(value: float) -> str:
    """A count of requests as a Kubernetes quantity (an integer)."""
    return str(max(round(value), 0))


def duration(window: str) -> str:
    """A Prometheus duration as Kubernetes (Go) writes one: `90s` → `1m30s`, `1h` →
    `1h0m0s`, `250ms` → `250ms`; what `metav1.Duration` parses."""
    total = sum(int(n) * _MILLISECONDS[unit] for n, unit in _DURATION.findall(window))
    if total < 1000:
        return f"{total}ms" if total else "0s"
    hours, rest = divmod(total, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    secs = f"{whole}.{fraction:03d}".rstrip("0") if fraction else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def timestamp(now: datetime) -> str:
    """RFC 3339 in UTC, to the second, as Kubernetes writes times."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- objects ------------------------------------------------------------------------------------


def metrics(figures: Figures) -> list[dict[str, Any]]:
    """The spec's five metrics, in its order."""
    found: list[dict[str, Any]] = []
    for quantile in QUANTILES:
        value = figures.latency.get(quantile)
        found.append(
            {
                "name": f"p{round(quantile * 100)}_response_latency",
                "unit": "seconds",
                "value": None if value is None else seconds(value),
            }
        )
    found.append({"name": "success_count", "value": count(figures.success)})
    found.append({"name": "failure_count", "value": count(figures.failure)})
    return found


def edge(direction: str, side: str, resource: Ref | None = None) -> dict[str, Any]:
    """An edge: `to` or `from`, observed at the `client` or `server` side, with the other
    end (`{}`: any)."""
    return {"direction": direction, "side": side, "resource": (resource or Ref()).as_json()}


#: All traffic a resource received, observed at its own sidecars.
RECEIVED = edge("from", "server")


def traffic_metrics(
    resource: Ref,
    edge_: Mapping[str, Any],
    figures: Figures,
    request: Request,
    backend: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One TrafficMetrics: `resource`'s traffic on `edge_` (a TrafficSplit's with its
    `backend`)."""
    metadata = {"name": resource.name}
    if resource.namespace:
        metadata["namespace"] = resource.namespace
    metadata["creationTimestamp"] = timestamp(request.now)
    found: dict[str, Any] = {
        "kind": "TrafficMetrics",
        "apiVersion": API_VERSION,
        "metadata": metadata,
        "timestamp": timestamp(request.now),
        "window": duration(request.window),
        "resource": resource.as_json(),
        "edge": dict(edge_),
    }
    if backend is not None:
        found["backend"] = dict(backend)
    found["metrics"] = metrics(figures)
    return found


def traffic_metrics_list(resource: Ref, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A TrafficMetricsList: of a kind (`resource` has the kind and namespace) or of one
    resource's edges (`resource` names it)."""
    return {
        "kind": "TrafficMetricsList",
        "apiVersion": API_VERSION,
        "metadata": {},
        "resource": resource.as_json(),
        "items": [dict(item) for item in items],
    }


def of_key(resource: str, key: Sequence[str]) -> Ref:
    """The object a row of the sidecars' series names: `(namespace, name)` for pods and
    deployments, `(name,)` for namespaces (cluster-scoped)."""
    kind = OBJECT_KINDS[resource]
    if resource == "namespaces":
        return Ref(kind, name=key[0])
    return Ref(kind, key[0], key[-1])


def resource_list(
    resource: str, namespace: str, received: Mapping[tuple[str, ...], Figures], request: Request
) -> dict[str, Any]:
    """Every resource of a kind (in `namespace`) with the traffic it received."""
    items = [
        traffic_metrics(of_key(resource, key), RECEIVED, f, request) for key, f in sorted(received.items())
    ]
    return traffic_metrics_list(Ref(OBJECT_KINDS[resource], namespace), items)


def edge_list(
    resource: str,
    of: Ref,
    to: Mapping[tuple[str, str], Figures],
    callers: Mapping[tuple[str, ...], Figures],
    request: Request,
) -> dict[str, Any]:
    """One resource's edges: the Services it called (`to`, keyed by namespace and Service)
    and its callers (`from`, keyed like `of_key`), both observed at the client."""
    items = [
        traffic_metrics(of, edge("to", "client", Ref(SERVICE, ns, name)), f, request)
        for (ns, name), f in sorted(to.items())
    ]
    items += [
        traffic_metrics(of, edge("from", "client", of_key(resource, key)), f, request)
        for key, f in sorted(callers.items())
    ]
    return traffic_metrics_list(of, items)


def weight(value: float) -> int | float:
    """A configured weight as written (an integer when it is one)."""
    return int(value) if float(value).is_integer() else value


def split_list(
    namespace: str, splits: Sequence[TrafficSplit], figures: Sequence[Figures], request: Request
) -> dict[str, Any]:
    """One item per backend of each split (`figures` in the same order): the requests sent
    to the backend's Service, observed at the clients."""
    backends = [(split, backend) for split in splits for backend in split.backends]
    items = [
        traffic_metrics(
            Ref(OBJECT_KINDS["trafficsplits"], split.meta.namespace, split.meta.name),
            edge("from", "client"),
            f,
            request,
            backend={"apex": split.service, "name": backend.service, "weight": weight(backend.weight)},
        )
        for (split, backend), f in zip(backends, figures, strict=True)
    ]
    return traffic_metrics_list(Ref(OBJECT_KINDS["trafficsplits"], namespace), items)


# --- discovery and errors -----------------------------------------------------------------------


def _version() -> dict[str, str]:
    return {"groupVersion": API_VERSION, "version": VERSION}


def api_group() -> dict[str, Any]:
    """`/apis/metrics.smi-spec.io`: the group and its one version."""
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [_version()],
        "preferredVersion": _version(),
    }


def api_group_list() -> dict[str, Any]:
    """`/apis`: the groups this server serves (one)."""
    group = {key: value for key, value in api_group().items() if key not in ("kind", "apiVersion")}
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}


def api_resource_list() -> dict[str, Any]:
    """`/apis/metrics.smi-spec.io/v1alpha1`: what can be read (namespaces are
    cluster-scoped), and the `edges` sub-resources (which the spec's RBAC example names)."""
    resources = []
    for name in OBJECT_KINDS:
        namespaced = name != "namespaces"
        resources.append(
            {
                "name": name,
                "singularName": "",
                "namespaced": namespaced,
                "kind": "TrafficMetrics",
                "verbs": ["get", "list"],
            }
        )
        if name in WITH_EDGES:
            resources.append(
                {
                    "name": f"{name}/edges",
                    "singularName": "",
                    "namespaced": namespaced,
                    "kind": "TrafficMetricsList",
                    "verbs": ["get"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": API_VERSION,
        "resources": resources,
    }


#: Kubernetes' reason of each status code the API answers.
REASONS = {
    400: "BadRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    500: "InternalError",
    502: "InternalError",
    503: "ServiceUnavailable",
}


def status(code: int, message: str, details: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A Kubernetes `Status` of failure: what the API answers for every error."""
    found: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": REASONS.get(code, ""),
        "code": code,
    }
    if details:
        found["details"] = {key: value for key, value in details.items() if value}
    return found
