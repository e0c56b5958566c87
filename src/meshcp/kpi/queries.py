"""Every PromQL expression meshcp uses, written once, as pure functions of what is asked.

All figures come from the client side: the upstream cluster series of the caller's
sidecar (`envoy_cluster_upstream_*`), labelled at the proxy with who calls
(`source_namespace`, `source_pod`, `source_service_account`) and what is called
(`destination_namespace`, `destination_service`). A client-side view is the only one
that knows both ends of an edge, and it counts requests refused by the server's policy.

- pod, deploy and ns select what the resource *sends*; svc selects what is sent *to* it.
  `--from` narrows the callers (pod, deploy, ns), `--to` the callees (svc, ns); the
  server pod of a request is not in the client's series, so `--to pod|deploy` is refused.
- A deploy is the set of its pods, recognised by name: `<deploy>-<index>` in the lab,
  `<deploy>-<pod-template-hash>-<suffix>` in Kubernetes (both from Kubernetes' safe
  alphabet, which has no vowels and no 0, 1 or 3, so `bookstore-v1-0` belongs to
  `bookstore-v1`, never to `bookstore`).
- Success means "not 5xx": a 403 of a policy is an answer the mesh meant to give.
- Latency quantiles come from `upstream_rq_time`, which Envoy keeps in milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshcp.sidecar.bootstrap import (
    DESTINATION_NAMESPACE,
    DESTINATION_SERVICE,
    LOCAL_SERVICE,
    SOURCE_NAMESPACE,
    SOURCE_POD,
    SOURCE_SERVICE_ACCOUNT,
)

STAT_KINDS = ("deploy", "pod", "svc", "ns", "trafficsplit")
EDGE_KINDS = ("deploy", "pod", "ns")
QUANTILES = (0.5, 0.95, 0.99)

RQ_TOTAL = "envoy_cluster_upstream_rq_total"
RQ_XX = "envoy_cluster_upstream_rq_xx"
RQ_TIME_BUCKET = "envoy_cluster_upstream_rq_time_bucket"
CX_ACTIVE = "envoy_cluster_upstream_cx_active"
CX_TOTAL = "envoy_cluster_upstream_cx_total"
SSL_HANDSHAKE = "envoy_cluster_ssl_handshake"

#: The label a deploy's pods are grouped under (made by `label_replace`).
DEPLOY = "deploy"

#: Kubernetes' safe alphabet for generated names (`k8s.io/apimachinery` rand.SafeEncodeString).
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
#: A pod name of a Deployment: the deploy, then a lab index or a ReplicaSet hash and suffix;
#: a name of neither form is its own deploy (a bare pod).
DEPLOY_POD = rf"(.+?)(?:-(?:[0-9]+|{_SAFE}{{6,10}}-{_SAFE}{{5}}))?"
_WINDOW = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+")
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")


class QueryError(ValueError):
    """A request that names no valid PromQL: a bad kind, window, name or filter."""


@dataclass(frozen=True)
class Resource:
    """A Kubernetes resource as the CLI names it: `kind/name` (name may be empty: all)."""

    kind: str
    name: str = ""
    namespace: str = ""


@dataclass(frozen=True)
class Selection:
    """What `stat` reports on: the resource, the optional callers and callees, the window."""

    resource: Resource
    source: Resource | None = None
    destination: Resource | None = None
    window: str = "1m"
    #: One row per resource and service it calls (`group_labels`).
    per_destination: bool = False


def valid_name(text: str) -> bool:
    """A Kubernetes object name's characters (DNS subdomain): safe to quote into PromQL."""
    return bool(_NAME.fullmatch(text))


def window(text: str) -> str:
    """A Prometheus range duration (`30s`, `1m`, `1h30m`); anything else is refused here,
    so a typo is a usage error rather than a Prometheus parse error."""
    if not _WINDOW.fullmatch(text):
        raise QueryError(f"bad window {text!r} (a Prometheus duration such as 30s, 1m, 1h)")
    return text


def resource(text: str, namespace: str = "") -> Resource:
    """`kind/name` or `kind` of `--from`/`--to`; the namespace of `-n` unless named."""
    kind, _, name = text.partition("/")
    kind = _kind(kind, ("deploy", "pod", "svc", "ns"))
    if name and not valid_name(name):
        raise QueryError(f"bad name {name!r} in {text!r}")
    return Resource(kind, name, name if kind == "ns" else namespace)


def _kind(kind: str, allowed: tuple[str, ...]) -> str:
    aliases = {
        "deployment": "deploy",
        "deployments": "deploy",
        "pods": "pod",
        "service": "svc",
        "services": "svc",
        "namespace": "ns",
        "namespaces": "ns",
        "ts": "trafficsplit",
    }
    kind = aliases.get(kind, kind)
    if kind not in allowed:
        raise QueryError(f"unknown kind {kind!r} (one of {', '.join(allowed)})")
    return kind


def stat_kind(kind: str) -> str:
    return _kind(kind, STAT_KINDS)


def edge_kind(kind: str) -> str:
    return _kind(kind, EDGE_KINDS)


def quote(value: str) -> str:
    """A PromQL string literal of `value`."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def source_matchers(res: Resource) -> list[str]:
    """Label matchers for requests sent by `res` (a pod, deploy or namespace)."""
    if res.kind not in ("pod", "deploy", "ns"):
        raise QueryError(f"--from takes pod, deploy or ns, not {res.kind}")
    found = [f"{SOURCE_NAMESPACE}={quote(res.namespace)}"] if res.namespace else []
    if res.kind == "pod" and res.name:
        found.append(f"{SOURCE_POD}={quote(res.name)}")
    elif res.kind == "deploy" and res.name:
        found.append(f"{SOURCE_POD}=~{quote(DEPLOY_POD.replace('(.+?)', re.escape(res.name), 1))}")
    return found


def _destination_matchers(res: Resource) -> list[str]:
    """Label matchers for requests sent to `res` (a service or namespace)."""
    if res.kind not in ("svc", "ns"):
        raise QueryError(
            f"--to takes svc or ns, not {res.kind} (the server pod is not in client-side series)"
        )
    found = [f"{DESTINATION_NAMESPACE}={quote(res.namespace)}"] if res.namespace else []
    if res.kind == "svc" and res.name:
        found.append(f"{DESTINATION_SERVICE}={quote(res.name)}")
    return found


def matchers(selection: Selection) -> str:
    """The label matchers of a selection's series; meshed upstreams only (the ones with a
    destination service: not the local, passthrough or metrics clusters)."""
    res = selection.resource
    found = [f'{DESTINATION_SERVICE}!=""']
    found += _destination_matchers(res) if res.kind == "svc" else source_matchers(res)
    if selection.source is not None:
        found += source_matchers(selection.source)
    if selection.destination is not None:
        found += _destination_matchers(selection.destination)
    return ",".join(dict.fromkeys(found))


#: The labels that split a row of a source kind into its edges (one per service called).
PER_DESTINATION = (DESTINATION_NAMESPACE, DESTINATION_SERVICE)


def group_labels(kind: str, per_destination: bool = False) -> tuple[str, ...]:
    """The labels one row of `stat <kind>` is summed by; with `per_destination`, one row
    per resource and service it calls (an edge with its golden metrics)."""
    found = {
        "pod": (SOURCE_NAMESPACE, SOURCE_POD),
        "deploy": (SOURCE_NAMESPACE, DEPLOY),
        "ns": (SOURCE_NAMESPACE,),
        "svc": (DESTINATION_NAMESPACE, DESTINATION_SERVICE),
    }[kind]
    if per_destination and kind != "svc":
        found += PER_DESTINATION
    return found


def by_deploy(vector: str, deploy: bool) -> str:
    """The vector with a `deploy` label made from `source_pod` when rows are deploys."""
    if not deploy:
        return vector
    return f'label_replace({vector}, "{DEPLOY}", "$1", "{SOURCE_POD}", {quote(DEPLOY_POD)})'


def _by_deploy(vector: str, kind: str) -> str:
    return by_deploy(vector, kind == "deploy")


def _selector(metric: str, selection: Selection, extra: str = "") -> str:
    return f"{metric}{{{matchers(selection)}{',' + extra if extra else ''}}}"


def _sum_rate(metric: str, selection: Selection, extra: str = "", by: tuple[str, ...] = ()) -> str:
    """The per-row sum of a counter's rate; label_replace takes an instant vector, so the
    rate comes first."""
    kind = selection.resource.kind
    labels = ", ".join(group_labels(kind, selection.per_destination) + by)
    rate = f"rate({_selector(metric, selection, extra)}[{selection.window}])"
    return f"sum by ({labels}) ({_by_deploy(rate, kind)})"


def _sum(metric: str, selection: Selection) -> str:
    kind = selection.resource.kind
    labels = ", ".join(group_labels(kind, selection.per_destination))
    return f"sum by ({labels}) ({_by_deploy(_selector(metric, selection), kind)})"


def requests_per_second(selection: Selection) -> str:
    return _sum_rate(RQ_TOTAL, selection)


def _sum_increase(metric: str, selection: Selection, extra: str = "") -> str:
    """The per-row growth of a counter over the window, counting a series born inside the
    window from zero. Envoy creates `upstream_rq_5xx` at the first 5xx, so its first
    sample already holds those failures, which `rate`/`increase` ignore (they need two
    samples): a burst of 5xx would never show. A restart (the value falling) counts 0."""
    kind = selection.resource.kind
    labels = group_labels(kind, selection.per_destination)
    return growth(_selector(metric, selection, extra), labels, selection.window, deploy=kind == "deploy")


def growth(selector: str, labels: tuple[str, ...], window_: str, *, deploy: bool = False) -> str:
    """The per-row growth of the counters `selector` selects over the window, summed by
    `labels`: `now - (now offset w or now * 0)`, so a series born inside the window counts
    from zero, and a restart (the value falling) counts 0."""
    grown = f"clamp_min({selector} - ({selector} offset {window_} or {selector} * 0), 0)"
    return f"sum by ({', '.join(labels)}) ({by_deploy(grown, deploy)})"


def success_rate(selection: Selection) -> str:
    """1 - 5xx/total over the window. A row without any 5xx series still gets its ratio
    (0 5xx, `or` the total times zero), else Prometheus would drop it from the division."""
    total = _sum_increase(RQ_TOTAL, selection)
    failed = _sum_increase(RQ_XX, selection, 'envoy_response_code_class="5"')
    return f"1 - (({failed}) or ({total}) * 0) / ({total})"


def latency(selection: Selection, quantile: float) -> str:
    """The quantile of request time in milliseconds, over the window."""
    buckets = _sum_rate(RQ_TIME_BUCKET, selection, by=("le",))
    return f"histogram_quantile({quantile:g}, {buckets})"


def tcp_connections(selection: Selection) -> str:
    return _sum(CX_ACTIVE, selection)


def requests(selection: Selection) -> str:
    """Requests counted since each sidecar started: an exact count (no extrapolation), for
    the JSON output and tests."""
    return _sum(RQ_TOTAL, selection)


def stat_queries(selection: Selection) -> dict[str, str]:
    """Every column of `meshcp stat`, by column key."""
    if selection.resource.kind == "trafficsplit":
        raise QueryError("trafficsplit rows come from leaf_queries")
    found = {
        "success": success_rate(selection),
        "rps": requests_per_second(selection),
        "tcp_conn": tcp_connections(selection),
        "requests": requests(selection),
    }
    for quantile in QUANTILES:
        found[f"latency_p{round(quantile * 100)}"] = latency(selection, quantile)
    return found


EDGE_LABELS = (
    SOURCE_NAMESPACE,
    SOURCE_POD,
    SOURCE_SERVICE_ACCOUNT,
    DESTINATION_NAMESPACE,
    DESTINATION_SERVICE,
)


def edges(namespace: str, window_: str) -> str:
    """Every caller/callee pair with a connection opened in the window or still open, per
    source pod and service account; the CLI folds pods into deploys or namespaces. With a
    namespace, edges that start or end in it."""

    def one(extra: str) -> str:
        selector = f'{{{DESTINATION_SERVICE}!=""{extra}}}'
        labels = ", ".join(EDGE_LABELS)
        opened = f"sum by ({labels}) (increase({CX_TOTAL}{selector}[{window_}]))"
        active = f"sum by ({labels}) ({CX_ACTIVE}{selector})"
        # Either side alone: `increase` needs two samples, so a new edge with an open
        # connection has no `opened` yet, and a closed one no `active`.
        return f"(({opened}) > 0) or (({active}) > 0)"

    if not namespace:
        return one("")
    ns = quote(namespace)
    return f"({one(f',{SOURCE_NAMESPACE}={ns}')}) or ({one(f',{DESTINATION_NAMESPACE}={ns}')})"


def _edge_sum(metric: str) -> str:
    labels = ", ".join(EDGE_LABELS)
    return f'sum by ({labels}) ({metric}{{{DESTINATION_SERVICE}!=""}})'


def edge_handshakes() -> str:
    """TLS handshakes per edge since each client sidecar started. Every connection of a
    meshed upstream cluster is expected to handshake; comparing with `edge_connections`
    measures whether it did (SECURED), rather than trusting the configuration."""
    return _edge_sum(SSL_HANDSHAKE)


def edge_connections() -> str:
    """Connections opened per edge since each client sidecar started."""
    return _edge_sum(CX_TOTAL)


def namespace_known(namespace: str) -> str:
    """Any sidecar series naming the namespace at either end: empty when the namespace is
    not meshed, not scraped, or does not exist."""
    ns = quote(namespace)
    return f"group({{{SOURCE_NAMESPACE}={ns}}}) or group({{{DESTINATION_NAMESPACE}={ns}}})"


def servers() -> str:
    """Who serves what: the identity (`source_namespace`, `source_service_account`) of each
    proxy with a local cluster of a service (`local_service`), from the servers' own series.
    The client side of an edge names the service; this names the identity behind it."""
    labels = ", ".join((SOURCE_NAMESPACE, SOURCE_SERVICE_ACCOUNT, LOCAL_SERVICE))
    return f'group by ({labels}) ({CX_TOTAL}{{{LOCAL_SERVICE}!=""}})'


def deploy_of(pod: str) -> str:
    """The deploy a pod belongs to by the naming rule above; the pod itself otherwise."""
    match = re.fullmatch(DEPLOY_POD, pod)
    return match.group(1) if match else pod
