"""`meshcp stat` and `meshcp edges`: golden metrics and who talks to whom, read back from
Prometheus (linkerd viz's shape), from the client side (see `kpi.queries`).

The default Prometheus is the lab's, which listens inside the lab's node namespace: when
that default is used, we are root and the lab is up, the query is made from inside the
namespace (`lab.netns_http`); any other URL is asked directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from meshcp.cli.offline import OfflineError, load
from meshcp.cli.options import UsageError
from meshcp.kpi import queries
from meshcp.kpi.prometheus import (
    Fetch,
    NoData,
    Prometheus,
    PrometheusUnreachable,
    aiohttp_fetch,
    finite,
)
from meshcp.kpi.queries import QueryError, Resource, Selection
from meshcp.lab import layout, netns_http
from meshcp.lab.network import LabError
from meshcp.model.smi import TrafficSplit
from meshcp.model.state import MeshState
from meshcp.sidecar import bootstrap

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_URL = f"http://{layout.PROMETHEUS_HOST}:{layout.PROMETHEUS_PORT}"
STAT_COLUMNS = ("NAME", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN")
SPLIT_COLUMNS = ("APEX", "LEAF", "WEIGHT", "SHARE", *STAT_COLUMNS[1:])
EDGE_COLUMNS = ("SRC", "DST", "SECURED", "CLIENT_ID", "SERVER_ID")
#: Every meshed upstream cluster meshcp compiles carries an mTLS transport socket
#: (`compile.cds`), so an edge seen in those clusters' series went through mTLS.
SECURED = "yes"


def prometheus(url: str | None) -> Prometheus:
    """The client for `--prometheus-url`, or for the lab's when none was given."""
    if url is None and os.geteuid() == 0 and Path(f"/run/netns/{layout.NODE_NETNS}").exists():
        return Prometheus(DEFAULT_URL, _in_node_namespace())
    target = url or DEFAULT_URL
    return Prometheus(target, aiohttp_fetch(target))


def _in_node_namespace() -> Fetch:
    async def fetch(path: str) -> tuple[int, bytes]:
        try:
            return await netns_http.get(
                layout.NODE_NETNS, layout.PROMETHEUS_PORT, path, layout.PROMETHEUS_HOST
            )
        except LabError as error:
            raise PrometheusUnreachable(f"{DEFAULT_URL} (netns {layout.NODE_NETNS})", str(error)) from None

    return fetch


def _usage(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`call`, its QueryError (bad input) turned into a usage error (exit status 2)."""
    try:
        return call(*args, **kwargs)
    except QueryError as error:
        raise UsageError(str(error)) from None


def selection(args: argparse.Namespace) -> Selection:
    """The stat request of the command line; a bad kind, name or window is a usage error."""
    kind = _usage(queries.stat_kind, args.kind)
    namespace = "" if kind == "ns" else args.namespace
    name = args.name or ""
    res = Resource(kind, name, name if kind == "ns" else namespace)
    source_ns = args.namespace if args.from_namespace is None else args.from_namespace
    destination_ns = args.namespace if args.to_namespace is None else args.to_namespace
    source = _usage(queries.resource, args.source_res, source_ns) if args.source_res else None
    destination = _usage(queries.resource, args.to, destination_ns) if args.to else None
    found = Selection(res, source, destination, _usage(queries.window, args.window))
    if kind != "trafficsplit":
        _usage(queries.matchers, found)
    return found


async def stat(args: argparse.Namespace) -> None:
    chosen = selection(args)
    client = prometheus(args.prometheus_url)
    if chosen.resource.kind == "trafficsplit":
        rows = await _split_rows(client, chosen, await _state(args.source))
    else:
        rows = await stat_rows(client, chosen)
    columns = SPLIT_COLUMNS if chosen.resource.kind == "trafficsplit" else STAT_COLUMNS
    _print(rows, columns, args.output)


async def _state(source: Path | None) -> MeshState | None:
    return None if source is None else await load(source)


async def stat_rows(client: Prometheus, chosen: Selection) -> list[dict[str, Any]]:
    """One row per resource with requests (or connections) in the Prometheus data."""
    named = queries.stat_queries(chosen)
    answers = await asyncio.gather(*(client.query(q) for q in named.values()))
    by_column = dict(zip(named, answers, strict=True))
    labels = queries.group_labels(chosen.resource.kind)
    rows: dict[tuple[str, ...], dict[str, Any]] = {}
    for column, samples in by_column.items():
        for sample in samples:
            key = tuple(sample.labels.get(label, "") for label in labels)
            row = rows.setdefault(
                key, {"namespace": key[0], "name": key[-1]} if len(key) > 1 else {"name": key[0]}
            )
            row[column] = finite(sample.value)
    if not rows:
        raise NoData(named["requests"])
    return [_complete(row) for _, row in sorted(rows.items())]


def _complete(row: dict[str, Any]) -> dict[str, Any]:
    for column in ("success", "rps", "latency_p50", "latency_p95", "latency_p99", "tcp_conn", "requests"):
        row.setdefault(column, None)
    return row


async def _split_rows(client: Prometheus, chosen: Selection, state: MeshState | None) -> list[dict[str, Any]]:
    """One row per TrafficSplit leaf; the configured weight and leaves come from the
    manifests (`--source`), the observed share from the leaves' request rates."""
    if state is None:
        raise UsageError("stat trafficsplit needs --source DIR (the TrafficSplit manifests)")
    wanted = chosen.resource
    splits = [
        s
        for s in state.traffic_splits
        if (not wanted.namespace or s.meta.namespace == wanted.namespace)
        and (not wanted.name or s.meta.name == wanted.name)
    ]
    if not splits:
        named = f"TrafficSplit {wanted.name}" if wanted.name else "TrafficSplit"
        raise OfflineError(f"no {named} in {wanted.namespace or 'any namespace'} in the manifests")
    rows: list[dict[str, Any]] = []
    for split in splits:
        rows += await _leaf_rows(client, split, chosen.window)
    return rows


async def _leaf_rows(client: Prometheus, split: TrafficSplit, window: str) -> list[dict[str, Any]]:
    """A split's leaves: configured weight (normalised) beside the observed share of
    requests; a leaf without series yet is a row of '-'."""
    total_weight = sum(b.weight for b in split.backends) or 1.0
    leaves = []
    for backend in split.backends:
        leaf = queries.leaf_selection(split.meta.namespace, backend.service, window)
        found = await stat_rows(client, leaf) if await client.query(queries.requests(leaf)) else []
        row = found[0] if found else _complete({"namespace": split.meta.namespace, "name": backend.service})
        row.update(apex=split.service, leaf=backend.service, weight=backend.weight / total_weight)
        leaves.append(row)
    observed = sum(r["rps"] or 0.0 for r in leaves)
    for row in leaves:
        row["share"] = (row["rps"] or 0.0) / observed if observed else None
    return leaves


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    client_id: str
    server_id: str


async def edges(args: argparse.Namespace) -> None:
    kind = _usage(queries.edge_kind, args.kind)
    window = _usage(queries.window, args.window)
    client = prometheus(args.prometheus_url)
    promql = queries.edges(args.namespace or "", window)
    samples = await client.query(promql)
    if not samples:
        raise NoData(promql)
    accounts = server_accounts(await _state(args.source))
    found = sorted({_edge(kind, s.labels, accounts) for s in samples}, key=lambda e: (e.src, e.dst))
    rows = [
        {"src": e.src, "dst": e.dst, "secured": SECURED, "client_id": e.client_id, "server_id": e.server_id}
        for e in found
    ]
    _print(rows, EDGE_COLUMNS, args.output)


def _edge(kind: str, labels: Mapping[str, str], accounts: Mapping[tuple[str, str], str]) -> Edge:
    """An edge at the resolution of `kind`: the caller's pod, deploy or namespace, and the
    called service (or its namespace). Identities are `namespace/service-account`."""
    src_ns, pod = labels.get(bootstrap.SOURCE_NAMESPACE, ""), labels.get(bootstrap.SOURCE_POD, "")
    dst_ns, service = (
        labels.get(bootstrap.DESTINATION_NAMESPACE, ""),
        labels.get(bootstrap.DESTINATION_SERVICE, ""),
    )
    if kind == "ns":
        src, dst = src_ns, dst_ns
    else:
        src = f"{src_ns}/{pod if kind == 'pod' else queries.deploy_of(pod)}"
        dst = f"{dst_ns}/{service}"
    client_id = f"{src_ns}/{labels.get(bootstrap.SOURCE_SERVICE_ACCOUNT, '-')}"
    return Edge(src, dst, client_id, accounts.get((dst_ns, service), "-"))


def server_accounts(state: MeshState | None) -> dict[tuple[str, str], str]:
    """Each service's identity (`namespace/service-account`) when the manifests give its
    pods exactly one service account; Prometheus' client-side series do not name it."""
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


def _print(rows: Sequence[dict[str, Any]], columns: Sequence[str], output: str) -> None:
    if output == "json":
        print(json.dumps(list(rows), indent=2))
        return
    table = [list(columns)] + [[_cell(row, column) for column in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


def _cell(row: Mapping[str, Any], column: str) -> str:
    key = column.lower()
    value = row.get(key)
    if column == "NAME":
        return f"{row['namespace']}/{row['name']}" if row.get("namespace") else str(row["name"])
    if value is None:
        return "-"
    if key in ("success", "weight", "share"):
        return f"{value * 100:.2f}%"
    if key == "rps":
        return f"{value:.1f}rps"
    if key.startswith("latency_"):
        return f"{value:g}ms"
    if key == "tcp_conn":
        return f"{value:g}"
    return str(value)
