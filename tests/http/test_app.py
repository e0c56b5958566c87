"""The controller's HTTP endpoint (meshcp.http.app) serves every metric that
docs/observability.md documents, with the documented type, by Prometheus's conventions."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshcp.identity import Identity
from meshcp.injector.metrics import InjectorMetrics
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
#: A row of the metric tables: | `name` | type | labels | meaning |
_ROW = re.compile(r"^\| `([a-z_:]+)` \| (counter|gauge|histogram) \| ([^|]*)\|", re.MULTILINE)


def documented(section: str = "") -> dict[str, tuple[str, set[str]]]:
    """Exposed name -> (type, label names), from the tables of docs/observability.md: the
    controller's (before the first other top-level section), or those of `# <section>`."""
    text = DOC.read_text()
    parts = re.split(r"^# ", text, flags=re.MULTILINE)
    chosen = parts[1] if not section else next(p for p in parts if p.startswith(section))
    rows = _ROW.findall(chosen)
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


@pytest.fixture
async def scraped() -> AsyncIterator[dict[str, tuple[str, set[str]]]]:
    """Exposed name -> (type, label names seen) of a started controller's GET /metrics,
    after a certificate was issued (so the labelled certificate series have samples)."""
    runtime = await ControllerRuntime.open(
        Settings(xds_address=Address("127.0.0.1", 0), http_address=Address("127.0.0.1", 0))
    )
    await runtime.start()
    try:
        await runtime.certificates.get(Identity("shop", "web"))
        url = f"http://127.0.0.1:{runtime.http.port}/metrics"
        async with aiohttp.ClientSession() as http, http.get(url) as reply:
            assert reply.status == 200
            assert reply.content_type == "text/plain"
            text = await reply.text()
    finally:
        await runtime.close()
    families = list(text_string_to_metric_families(text))
    # prometheus_client's `<name>_created` series (when a counter or histogram series
    # started) parse as gauge families of their own.
    created = {family.name + "_created" for family in families if family.type in ("counter", "histogram")}
    out: dict[str, tuple[str, set[str]]] = {}
    for family in families:
        if family.name in created:
            continue
        # The text format names a counter's family without `_total`; its samples carry it.
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {label for sample in family.samples for label in sample.labels if label != "le"}
        out[name] = (family.type, labels)
    yield out


async def test_every_documented_metric_is_served_with_its_type(
    scraped: dict[str, tuple[str, set[str]]],
) -> None:
    docs = documented()
    assert len(docs) > 20
    served = {name: kind for name, (kind, _) in scraped.items()}
    wrong = {name: (kind, served.get(name)) for name, (kind, _) in docs.items() if served.get(name) != kind}
    assert wrong == {}, "documented (type, served type)"
    # Labels of the series that have samples are the documented ones.
    for name, (_, labels) in scraped.items():
        if name in docs and labels:
            assert labels == docs[name][1], name


async def test_counters_end_in_total_and_every_meshcp_metric_is_documented(
    scraped: dict[str, tuple[str, set[str]]],
) -> None:
    docs = documented()
    for name, (kind, _) in scraped.items():
        if kind == "counter":
            assert name.endswith("_total"), name
        if kind == "histogram" or "duration" in name or "latency" in name:
            assert name.endswith("_seconds"), name
    ours = {name for name in scraped if name.startswith("meshcp_")}
    assert ours - docs.keys() == set(), "served but not in docs/observability.md"


def test_the_injector_serves_what_is_documented() -> None:
    """The injector's table (its own registry) against what it exposes."""
    docs = documented("The injector's metrics")
    assert docs, "no injector table in docs/observability.md"
    families = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in text_string_to_metric_families(InjectorMetrics().exposition().decode())
    }
    assert {name: kind for name, (kind, _) in docs.items()} == {
        name: kind
        for name, kind in families.items()
        if name.startswith("meshcp_") and not name.endswith("_created")
    }
