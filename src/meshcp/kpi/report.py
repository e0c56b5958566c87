"""Rows of golden metrics read back from Prometheus: per resource, per TrafficSplit leaf,
and per edge. One home for what `meshcp stat`/`edges`, the controller's TrafficMetrics API,
its `/dashboard` and `meshcp demo` show, so that they can never disagree.

A row is a plain dict (JSON as it is): `namespace`, `name`, and the columns `success`,
`rps`, `latency_p50`, `latency_p95`, `latency_p99` (milliseconds), `tcp_conn`, `requests`,
each None when Prometheus has no value (no request in the window). Per-destination rows
add `destination_namespace` and `destination`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshcp.kpi import queries
from meshcp.kpi.prometheus import NoData, Prometheus, Sample, finite
from meshcp.kpi.queries import Resource, Selection
from meshcp.model.smi import TrafficSplit
from meshcp.model.state import MeshState
from meshcp.sidecar import bootstrap

COLUMNS = ("success", "rps", "latency_p50", "latency_p95", "latency_p99", "tcp_conn", "requests")


async def stat_rows(client: Prometheus, chosen: Selection) -> list[dict[str, Any]]:
    """One row per resource (per edge with `chosen.per_destination`) with requests or
    connections in the Prometheus data; NoData when there is none."""
    named = queries.stat_queries(chosen)
    answers = await asyncio.gather(*(client.query(q) for q in named.values()))
    labels = queries.group_labels(chosen.resource.kind, chosen.per_destination)
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for column, samples in zip(named, answers, strict=True):
        for sample in samples:
            key = tuple(sample.labels.get(label, "") for label in labels)
            row = rows.setdefault(key, _row_of(key, chosen))
            row[column] = finite(sample.value)
    if chosen.per_destination:
        # Every proxy has a cluster per service it may call: an edge is one that carried
        # traffic, not one that could.
        rows = {key: row for key, row in rows.items() if row.get("requests") or row.get("tcp_conn")}
    if not rows:
        raise NoData(f"Prometheus has no data for: {named['requests']}")
    return [complete(row) for _, row in sorted(rows.items())]


def _row_of(key: tuple[str, ...], chosen: Selection) -> dict[str, Any]:
    if chosen.per_destination and chosen.resource.kind != "svc":
        *source, dst_ns, dst = key
        row = _row_of(tuple(source), Selection(chosen.resource))
        return {**row, "destination_namespace": dst_ns, "destination": dst}
    return {"namespace": key[0], "name": key[-1]} if len(key) > 1 else {"name": key[0]}


def complete(row: dict[str, Any]) -> dict[str, Any]:
    """The row with every column present (None where Prometheus had nothing)."""
    for column in COLUMNS:
        row.setdefault(column, None)
    return row


def splits_of(state: MeshState, namespace: str = "", name: str = "") -> list[TrafficSplit]:
    """The TrafficSplits of the state in `namespace` (all when empty) named `name` (all)."""
    return [
        split
        for split in state.traffic_splits
        if (not namespace or split.meta.namespace == namespace) and (not name or split.meta.name == name)
    ]


async def split_rows(client: Prometheus, splits: Iterable[TrafficSplit], window: str) -> list[dict[str, Any]]:
    """One row per leaf of each split: `split` (its name), `apex`, `leaf`, the configured
    `weight` (normalised to 1) beside the observed `share` of requests, and the leaf's
    golden metrics; a leaf without series yet is a row of None.

    Every leaf's figures come from one set of queries (every service of the splits'
    namespace at once), so the shares are of one instant and a page with many splits
    costs Prometheus the same few queries."""
    chosen = list(splits)
    if not chosen:
        return []
    namespaces = {split.meta.namespace for split in chosen}
    namespace = next(iter(namespaces)) if len(namespaces) == 1 else ""
    try:
        found = await stat_rows(client, Selection(Resource("svc", "", namespace), window=window))
    except NoData:
        found = []
    services = {(row["namespace"], row["name"]): row for row in found}
    rows: list[dict[str, Any]] = []
    for split in chosen:
        rows += _leaf_rows(split, services)
    return rows


def _leaf_rows(
    split: TrafficSplit, services: Mapping[tuple[str, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    total_weight = sum(b.weight for b in split.backends) or 1.0
    leaves = []
    for backend in split.backends:
        key = (split.meta.namespace, backend.service)
        row = dict(services[key]) if key in services else complete({"namespace": key[0], "name": key[1]})
        row.update(
            split=split.meta.name,
            apex=split.service,
            leaf=backend.service,
            weight=backend.weight / total_weight,
        )
        leaves.append(row)
    observed = sum(r["rps"] or 0.0 for r in leaves)
    for row in leaves:
        row["share"] = (row["rps"] or 0.0) / observed if observed else None
    return leaves


@dataclass(frozen=True)
class Edge:
    """A caller and a callee at one resolution, with the identities at both ends."""

    src: str
    dst: str
    client_id: str
    server_id: str
    secured: str


#: SECURED: the edge's connections handshook TLS; none did; some of a deploy's pods' did.
SECURED, PARTLY, PLAINTEXT = "yes", "partly", "no"


async def edge_rows(
    client: Prometheus, kind: str, namespace: str, window: str, state: MeshState | None = None
) -> list[dict[str, Any]]:
    """Every edge seen in the window at the resolution of `kind` (pod, deploy or ns), with
    SECURED measured from the TLS handshakes of its connections and SERVER_ID from the
    servers' own series (the manifests in `state` fill in a server that exports none)."""
    promql = queries.edges(namespace, window)
    samples, handshakes, connections, serving = await asyncio.gather(
        client.query(promql),
        client.query(queries.edge_handshakes()),
        client.query(queries.edge_connections()),
        client.query(queries.servers()),
    )
    if not samples:
        raise NoData(f"Prometheus has no data for: {promql}")
    accounts = {**server_accounts(state), **measured_servers(serving)}
    secured = _secured(handshakes, connections)
    found: dict[tuple[str, str], Edge] = {}
    for sample in samples:
        edge = _edge(kind, sample.labels, accounts, secured.get(_edge_key(sample.labels), PLAINTEXT))
        seen = found.get((edge.src, edge.dst))
        found[(edge.src, edge.dst)] = edge if seen is None else _merge(seen, edge)
    return [
        {
            "src": e.src,
            "dst": e.dst,
            "secured": e.secured,
            "client_id": e.client_id,
            "server_id": e.server_id,
        }
        for _, e in sorted(found.items())
    ]


def _merge(one: Edge, other: Edge) -> Edge:
    """Two series of one edge (pods of a deploy, accounts of a namespace): the identities
    of both, and SECURED only if both were."""
    ids = sorted(set(one.client_id.split(",")) | set(other.client_id.split(",")))
    secured = one.secured if one.secured == other.secured else PARTLY
    return Edge(one.src, one.dst, ",".join(ids), one.server_id, secured)


def _edge_key(labels: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(label, "") for label in queries.EDGE_LABELS)


def _secured(handshakes: Sequence[Sample], connections: Sequence[Sample]) -> dict[tuple[str, ...], str]:
    """Per edge series: TLS handshakes seen means mTLS. Connections can outnumber
    handshakes without any plaintext (an attempt refused, or reset before its handshake,
    while a server starts), so the two are not compared one for one; an edge whose
    connections never completed a handshake was not secured."""
    shaken = {_edge_key(s.labels): s.value for s in handshakes}
    return {
        _edge_key(sample.labels): SECURED if shaken.get(_edge_key(sample.labels), 0.0) > 0 else PLAINTEXT
        for sample in connections
    }


def _edge(
    kind: str, labels: Mapping[str, str], accounts: Mapping[tuple[str, str], str], secured: str
) -> Edge:
    """An edge at the resolution of `kind`: the caller's pod, deploy or namespace, and the
    called service (or its namespace). Identities are `namespace/service-account`."""
    src_ns, pod = labels.get(bootstrap.SOURCE_NAMESPACE, ""), labels.get(bootstrap.SOURCE_POD, "")
    dst_ns = labels.get(bootstrap.DESTINATION_NAMESPACE, "")
    service = labels.get(bootstrap.DESTINATION_SERVICE, "")
    if kind == "ns":
        src, dst = src_ns, dst_ns
    else:
        src = f"{src_ns}/{pod if kind == 'pod' else queries.deploy_of(pod)}"
        dst = f"{dst_ns}/{service}"
    client_id = f"{src_ns}/{labels.get(bootstrap.SOURCE_SERVICE_ACCOUNT, '-')}"
    return Edge(src, dst, client_id, accounts.get((dst_ns, service), "-"), secured)


def measured_servers(samples: Iterable[Sample]) -> dict[tuple[str, str], str]:
    """(namespace, service) → the identities (`ns/sa`, comma-joined) of the proxies that
    serve it, from `queries.servers`."""
    found: dict[tuple[str, str], set[str]] = {}
    for sample in samples:
        namespace = sample.labels.get(bootstrap.SOURCE_NAMESPACE, "")
        account = sample.labels.get(bootstrap.SOURCE_SERVICE_ACCOUNT, "")
        service = sample.labels.get(bootstrap.LOCAL_SERVICE, "")
        found.setdefault((namespace, service), set()).add(f"{namespace}/{account}")
    return {key: ",".join(sorted(ids)) for key, ids in found.items()}


def server_accounts(state: MeshState | None) -> dict[tuple[str, str], str]:
    """Each service's identity (`namespace/service-account`) when the manifests give its
    pods exactly one service account: the fallback for a server that exports no series."""
    if state is None:
        return {}
    found: dict[tuple[str, str], str] = {}
    for service in state.services:
        if not service.selector:
            continue
        accounts = {
            pod.service_account
            for pod in state.pods
            if pod.meta.namespace == service.meta.namespace
            and all(pod.meta.labels.get(k) == v for k, v in service.selector.items())
        }
        if len(accounts) == 1:
            found[(service.meta.namespace, service.meta.name)] = f"{service.meta.namespace}/{accounts.pop()}"
    return found
