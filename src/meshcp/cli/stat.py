"""`meshcp stat` and `meshcp edges`: golden metrics and who talks to whom, read back from
Prometheus (linkerd viz's shape), from the client side (see `kpi.queries`).

The default Prometheus is the lab's, which listens inside the lab's node namespace: when
that default is used, we are root and the lab is up, the query is made from inside the
namespace (`lab.kpi_client`); any other URL is asked directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from meshcp.cli.offline import OfflineError, load
from meshcp.cli.options import UsageError
from meshcp.cli.output import emit
from meshcp.kpi import queries, report
from meshcp.kpi.prometheus import (
    NoData,
    Prometheus,
    aiohttp_fetch,
)
from meshcp.kpi.queries import QueryError, Resource, Selection
from meshcp.lab import kpi_client
from meshcp.model.state import MeshState

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_URL = kpi_client.URL
STAT_COLUMNS = ("NAME", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN")
SPLIT_COLUMNS = ("APEX", "LEAF", "WEIGHT", "SHARE", *STAT_COLUMNS[1:])
EDGE_COLUMNS = ("SRC", "DST", "SECURED", "CLIENT_ID", "SERVER_ID")


def prometheus(url: str | None) -> Prometheus:
    """The client for `--prometheus-url`, or for the lab's when none was given."""
    if url is None and kpi_client.reachable():
        return kpi_client.lab_prometheus()
    target = url or DEFAULT_URL
    return Prometheus(target, aiohttp_fetch(target))


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
        try:
            rows = await report.stat_rows(client, chosen)
        except NoData:
            what = (
                f"{chosen.resource.kind}/{chosen.resource.name}"
                if chosen.resource.name
                else chosen.resource.kind
            )
            raise await _explain(client, what, args.namespace, chosen.window) from None
    columns = SPLIT_COLUMNS if chosen.resource.kind == "trafficsplit" else STAT_COLUMNS
    _print(rows, columns, args.output)


async def _state(source: Path | None) -> MeshState | None:
    return None if source is None else await load(source)


async def _split_rows(client: Prometheus, chosen: Selection, state: MeshState | None) -> list[dict[str, Any]]:
    """One row per TrafficSplit leaf; the configured weight and leaves come from the
    manifests (`--source`), the observed share from the leaves' request rates."""
    if state is None:
        raise UsageError("stat trafficsplit needs --source DIR (the TrafficSplit manifests)")
    wanted = chosen.resource
    splits = report.splits_of(state, wanted.namespace, wanted.name)
    if not splits:
        named = f"TrafficSplit {wanted.name}" if wanted.name else "TrafficSplit"
        raise OfflineError(f"no {named} in {wanted.namespace or 'any namespace'} in the manifests")
    return await report.split_rows(client, splits, chosen.window)


async def edges(args: argparse.Namespace) -> None:
    kind = _usage(queries.edge_kind, args.kind)
    window = _usage(queries.window, args.window)
    client = prometheus(args.prometheus_url)
    try:
        rows = await report.edge_rows(client, kind, args.namespace or "", window, await _state(args.source))
    except NoData:
        raise await _explain(client, "edges", args.namespace, window) from None
    _print(rows, EDGE_COLUMNS, args.output)


async def _explain(client: Prometheus, what: str, namespace: str, window: str) -> NoData:
    """Why a query matched nothing, in one line: a namespace no sidecar series names
    (not meshed, not scraped, or misspelt), or no traffic in the window yet."""
    if namespace and not await client.query(queries.namespace_known(namespace)):
        return NoData(
            f"no data: no sidecar series in Prometheus name namespace {namespace!r} "
            "(is it meshed and scraped, and spelt right?)"
        )
    where = f" in namespace {namespace}" if namespace else ""
    return NoData(f"no data: no meshed traffic for {what}{where} in the last {window} (yet)")


def _print(rows: Sequence[dict[str, Any]], columns: Sequence[str], output: str) -> None:
    emit(
        list(rows),
        output,
        lambda: [list(columns)] + [[_cell(row, column) for column in columns] for row in rows],
    )


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
