"""The end of `meshcp demo`'s report: golden metrics read back from the lab's Prometheus.

The demo's own table counts what its clients saw; this part shows the same traffic as the
mesh measured it (the sidecars' series, scraped by the lab's Prometheus, asked through
`kpi.report` exactly as `meshcp stat` asks), so the demo runs the whole loop: policy,
traffic, Envoy's counters, Prometheus, and back.

Prometheus scrapes on its own clock and Envoy merges latency histograms only at its stats
flush: the figures are read once every sidecar target has been scraped after the first
flush that followed the traffic, so the last requests and their latencies are in them.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from meshcp.kpi import report
from meshcp.kpi.prometheus import Prometheus, PrometheusError
from meshcp.kpi.queries import Resource, Selection
from meshcp.lab import commands, kpi_client
from meshcp.lab.manifests import read_directory
from meshcp.lab.plan import SIDECAR_JOB
from meshcp.model.parse import InvalidObject, parse_object
from meshcp.model.smi import TrafficSplit

#: How long the report waits for Prometheus to scrape every sidecar after the traffic.
SCRAPE_DEADLINE = 20.0
#: Envoy's `stats_flush_interval` (its default, which the sidecar bootstrap keeps): the
#: latency histograms reach /stats/prometheus only at a flush, counters at once.
ENVOY_STATS_FLUSH = 5.0
POLL = 0.5


def traffic_splits(source: Path) -> list[TrafficSplit]:
    """The TrafficSplits of the demo's manifests (their configured weights)."""
    manifests, _ = read_directory(source)
    found = []
    for manifest in manifests:
        if manifest.body.get("kind") != "TrafficSplit":
            continue
        try:
            parsed = parse_object(manifest.body)
        except InvalidObject:
            continue
        if isinstance(parsed, TrafficSplit):
            found.append(parsed)
    return found


async def scraped_since(client: Prometheus, moment: float, deadline: float = SCRAPE_DEADLINE) -> bool:
    """Whether every sidecar target was scraped after `moment` (Unix time) within the
    deadline: the oldest last scrape of the sidecar job is newer than it."""
    query = f'min(timestamp(up{{job="{SIDECAR_JOB}"}}))'
    give_up = time.monotonic() + deadline
    while True:
        samples = await client.query(query)
        if samples and samples[0].value > moment:
            return True
        if time.monotonic() >= give_up:
            return False
        await asyncio.sleep(POLL)


async def kpi_rows(
    client: Prometheus, splits: Sequence[TrafficSplit], window: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per edge (deploy → service) and per TrafficSplit leaf, over `window`."""
    edges = await report.stat_rows(client, Selection(Resource("deploy"), window=window, per_destination=True))
    leaves = await report.split_rows(client, splits, window)
    return edges, leaves


def print_kpis(
    edges: Sequence[dict[str, Any]], leaves: Sequence[dict[str, Any]], window: str, out: TextIO
) -> None:
    print(f"\nKPIs from Prometheus (the sidecars' own counters; rates over the last {window}):", file=out)
    rows: list[tuple[str, ...]] = [("FROM", "TO", "REQUESTS", "SUCCESS", "RPS", "P99")]
    for row in edges:
        rows.append(
            (
                f"{row['namespace']}/{row['name']}",
                f"{row['destination_namespace']}/{row['destination']}",
                _number(row["requests"]),
                _percent(row["success"]),
                "-" if row["rps"] is None else f"{row['rps']:.1f}",
                "-" if row["latency_p99"] is None else f"{row['latency_p99']:g}ms",
            )
        )
    commands.print_table(rows, out)
    print(
        "      REQUESTS counts since each sidecar started; SUCCESS is not-5xx (a 403 is an answer)", file=out
    )
    for split in sorted({leaf["split"] for leaf in leaves}):
        mine = [leaf for leaf in leaves if leaf["split"] == split]
        shares = ", ".join(
            f"{leaf['leaf']} {_percent(leaf['weight'], 0)} configured, {_percent(leaf['share'], 1)} observed"
            for leaf in mine
        )
        print(f"TrafficSplit {mine[0]['namespace']}/{split} ({mine[0]['apex']}): {shares}", file=out)


def report_kpis(source: Path, started: float, ended: float, out: TextIO) -> None:
    """Reads and prints the KPIs, or one line saying why there are none."""
    if not kpi_client.reachable():
        print("\nKPIs: the lab's Prometheus cannot be reached from here", file=out)
        return
    client = kpi_client.lab_prometheus()
    try:
        if not asyncio.run(scraped_since(client, ended + ENVOY_STATS_FLUSH)):
            print(f"\nKPIs: Prometheus did not scrape every sidecar within {SCRAPE_DEADLINE:g} s", file=out)
            return
        window = f"{math.ceil(time.time() - started) + 1}s"
        edges, leaves = asyncio.run(kpi_rows(client, traffic_splits(source), window))
    except PrometheusError as error:
        print(f"\nKPIs: {error}", file=out)
        return
    print_kpis(edges, leaves, window, out)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _percent(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"
