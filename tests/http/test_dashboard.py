"""The KPI page (`meshcp.http.dashboard`): its data route against a real Prometheus
scraping Envoy-shaped series whose counts the test sets, its error answers, and the page
itself rendered by a real headless Chromium against the controller's app on loopback.

The series go through two phases (the counters grow between them), so rates, latency
quantiles and shares are exact: every series shares the scrapes' timestamps, so
Prometheus extrapolates them alike, and all requests of the second phase fall in one
latency bucket (5-10 ms: p50 7.5 ms, p99 9.95 ms). Success is counted over the window
from the first sample (`kpi.queries.success_rate`), so it is the 5xx of the totals.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from meshcp.cache.snapshot_cache import SnapshotCache
from meshcp.http.app import Controller, HttpServer
from meshcp.kpi.prometheus import Prometheus, aiohttp_fetch
from meshcp.model.core import Namespace, Pod, Service
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.model.meta import Meta
from meshcp.model.smi import SplitBackend, TrafficSplit
from meshcp.model.state import MeshState
from meshcp.telemetry.metrics import Metrics
from meshcp.telemetry.readiness import Readiness
from meshcp.xds.registry import ConnectedProxies
from tests.support import eventually, free_port
from tests.support.chromium import Chromium, artifact
from tests.support.prometheus import Exporter, PrometheusServer

WINDOW = "1m"
#: What the page shows for a number Prometheus does not have (an en dash).
NO_VALUE = "\u2013"


def _series(name: str, value: float, **labels: str) -> str:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{text}}} {value}\n"


def _client(
    namespace: str,
    pod: str,
    account: str,
    to: tuple[str, str],
    *,
    requests: int,
    failed: int = 0,
    handshakes: int = 2,
) -> str:
    """A client sidecar's series for one upstream: `requests` (all in the 5-10 ms bucket),
    `failed` of them 5xx, 2 connections of which `handshakes` did TLS, 1 open."""
    who = {"source_namespace": namespace, "source_pod": pod, "source_service_account": account}
    dst = {"destination_namespace": to[0], "destination_service": to[1], "destination_port": "14001"}
    text = (
        _series("envoy_cluster_upstream_rq_total", requests, **who, **dst)
        + _series("envoy_cluster_upstream_cx_total", 2, **who, **dst)
        + _series("envoy_cluster_upstream_cx_active", 1, **who, **dst)
        + _series("envoy_cluster_ssl_handshake", handshakes, **who, **dst)
    )
    for le, count in (("1", 0), ("5", 0), ("10", requests), ("+Inf", requests)):
        text += _series("envoy_cluster_upstream_rq_time_bucket", count, **who, **dst, le=le)
    if failed:
        text += _series("envoy_cluster_upstream_rq_xx", failed, **who, **dst, envoy_response_code_class="5")
    return text


def _server(namespace: str, pod: str, account: str, service: str) -> str:
    who = {"source_namespace": namespace, "source_pod": pod, "source_service_account": account}
    return _series("envoy_cluster_upstream_cx_total", 3, **who, local_service=service)


V1, V2 = ("bookstore", "bookstore-v1"), ("bookstore", "bookstore-v2")
LEGACY = ("legacy", "legacy")


def exposition(grown: bool) -> str:
    """Both phases; between them bookbuyer sends 30 requests to v1 and 10 to v2, bookthief
    5 to v1 (so v1 has 35 of the 45 requests to the split's backends)."""
    more = 1 if grown else 0
    return (
        _client("bookbuyer", "bookbuyer-0", "bookbuyer", V1, requests=100 + 30 * more)
        + _client("bookbuyer", "bookbuyer-0", "bookbuyer", V2, requests=40 + 10 * more, failed=2)
        + _client("bookthief", "bookthief-0", "bookthief", V1, requests=20 + 5 * more, failed=5)
        # A TCP edge: a plaintext connection, no request.
        + _client("bookthief", "bookthief-0", "bookthief", LEGACY, requests=0, handshakes=0)
        + _server("bookstore", "bookstore-v1-0", "bookstore", "bookstore-v1")
        + _server("bookstore", "bookstore-v2-0", "bookstore-v2", "bookstore-v2")
    )


def mesh_state() -> MeshState:
    """The manifests: three meshed namespaces of the bookstore plus a quiet bookwarehouse;
    `legacy` is not in the mesh (known only from bookthief's series)."""
    meshed = {MESH_LABEL: "meshcp"}
    objects: list[Any] = [
        Namespace(Meta(name, labels=meshed))
        for name in ("bookbuyer", "bookstore", "bookthief", "bookwarehouse")
    ]
    pods = [
        ("bookbuyer", "bookbuyer-0", "bookbuyer", "bookbuyer"),
        ("bookthief", "bookthief-0", "bookthief", "bookthief"),
        ("bookstore", "bookstore-v1-0", "bookstore", "bookstore-v1"),
        ("bookstore", "bookstore-v2-0", "bookstore-v2", "bookstore-v2"),
        ("bookwarehouse", "bookwarehouse-0", "bookwarehouse", "bookwarehouse"),
    ]
    for index, (namespace, name, account, app) in enumerate(pods):
        objects.append(Pod(Meta(name, namespace, labels={"app": app}), account, f"10.0.0.{index + 2}", True))
    for namespace, name, selector in (
        ("bookstore", "bookstore", {"app": "bookstore-v1"}),
        ("bookstore", "bookstore-v1", {"app": "bookstore-v1"}),
        ("bookstore", "bookstore-v2", {"app": "bookstore-v2"}),
        ("bookwarehouse", "bookwarehouse", {"app": "bookwarehouse"}),
    ):
        objects.append(Service(Meta(name, namespace), (), selector))
    backends = (SplitBackend("bookstore-v1", 75), SplitBackend("bookstore-v2", 25))
    objects.append(TrafficSplit(Meta("bookstore-split", "bookstore"), "bookstore", backends))
    return MeshState().with_changes(objects)


@asynccontextmanager
async def controller_http(
    prometheus: Prometheus | None, state: MeshState | Callable[[], MeshState] | None = None
) -> AsyncIterator[str]:
    """The controller's HTTP app (`http.app.create_app`) on 127.0.0.1: its base URL."""
    settled = MeshState() if state is None else state

    def current() -> MeshState:
        return settled() if callable(settled) else settled

    server = HttpServer(
        Controller(
            Readiness(),
            Metrics(),
            ConnectedProxies(),
            SnapshotCache(),
            state=current,
            prometheus=prometheus,
        )
    )
    await server.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as reply:
        return reply.status, json.loads(await reply.read())


@pytest.fixture
async def prometheus() -> AsyncIterator[Prometheus]:
    """A real Prometheus that has stored both phases of `exposition`."""
    async with Exporter(exposition(grown=False)) as exporter, PrometheusServer([exporter.target]) as server:

        async def stored() -> bool:
            return len(await server.client.query("envoy_cluster_upstream_rq_total")) == 4

        await eventually(
            stored, timeout=20, what="the exporter's series in Prometheus", details=lambda: server.log
        )
        await server.wait_for_scrapes(exporter, 1)
        exporter.text = exposition(grown=True)
        await server.wait_for_scrapes(exporter, 2)
        yield server.client


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


async def test_data_joins_golden_metrics_identities_and_splits(prometheus: Prometheus) -> None:
    async with controller_http(prometheus, mesh_state()) as base:
        status, data = await get_json(f"{base}/dashboard/data?window={WINDOW}")
    assert status == 200, data
    assert data["window"] == WINDOW
    assert data["prometheus"] == prometheus.url
    assert [node["id"] for node in data["nodes"]] == [
        "deploy/bookbuyer/bookbuyer",
        "deploy/bookstore/bookstore-v1",
        "deploy/bookstore/bookstore-v2",
        "deploy/bookthief/bookthief",
        # Meshed and quiet: drawn, with no edge.
        "deploy/bookwarehouse/bookwarehouse",
        "svc/bookstore/bookstore",
        "svc/bookstore/bookstore-v1",
        "svc/bookstore/bookstore-v2",
        "svc/bookwarehouse/bookwarehouse",
        # Not in the mesh, but called.
        "svc/legacy/legacy",
    ]
    edges = _by_id(data["edges"])
    assert list(edges) == [
        "bookbuyer/bookbuyer->bookstore/bookstore-v1",
        "bookbuyer/bookbuyer->bookstore/bookstore-v2",
        "bookthief/bookthief->bookstore/bookstore-v1",
        "bookthief/bookthief->legacy/legacy",
    ]
    v1 = edges["bookbuyer/bookbuyer->bookstore/bookstore-v1"]
    assert v1["source"] == "deploy/bookbuyer/bookbuyer" and v1["target"] == "svc/bookstore/bookstore-v1"
    assert v1["success"] == 1.0 and v1["requests"] == 130 and v1["rps"] > 0
    assert v1["latency_p50"] == pytest.approx(7.5) and v1["latency_p99"] == pytest.approx(9.95)
    assert (v1["secured"], v1["client_id"], v1["server_id"]) == (
        "yes",
        "bookbuyer/bookbuyer",
        "bookstore/bookstore",
    )
    v2 = edges["bookbuyer/bookbuyer->bookstore/bookstore-v2"]
    assert v2["success"] == pytest.approx(1 - 2 / 50) and v2["server_id"] == "bookstore/bookstore-v2"
    # Rates of one scrape's series are extrapolated alike: their ratio is the increases'.
    assert v1["rps"] / v2["rps"] == pytest.approx(3.0)
    thief = edges["bookthief/bookthief->bookstore/bookstore-v1"]
    assert thief["success"] == pytest.approx(1 - 5 / 25) and thief["client_id"] == "bookthief/bookthief"
    tcp = edges["bookthief/bookthief->legacy/legacy"]
    assert (tcp["success"], tcp["rps"], tcp["requests"], tcp["tcp_conn"]) == (None, 0.0, 0.0, 1.0)
    assert (tcp["secured"], tcp["server_id"]) == ("no", "-")
    [split] = data["splits"]
    assert (split["namespace"], split["name"], split["apex"]) == ("bookstore", "bookstore-split", "bookstore")
    leaves = {leaf["service"]: leaf for leaf in split["leaves"]}
    assert [leaf["service"] for leaf in split["leaves"]] == ["bookstore-v1", "bookstore-v2"]
    assert (leaves["bookstore-v1"]["weight"], leaves["bookstore-v2"]["weight"]) == (0.75, 0.25)
    # Each leaf is asked on its own, a moment apart: extrapolated a little differently.
    assert leaves["bookstore-v1"]["share"] == pytest.approx(35 / 45, abs=0.01)
    assert leaves["bookstore-v1"]["share"] + leaves["bookstore-v2"]["share"] == pytest.approx(1.0)


async def test_the_page_draws_the_graph_the_table_and_the_splits(
    prometheus: Prometheus, capsys: pytest.CaptureFixture[str]
) -> None:
    async with controller_http(prometheus, mesh_state()) as base, Chromium() as browser:
        page = await browser.open(f"{base}/dashboard?refresh=1&window={WINDOW}")
        # Drawn twice: the page refreshes by itself.
        await page.wait_for(
            "document.body.dataset.state === 'ok' && Number(document.body.dataset.updates) >= 2"
        )
        nodes = await page.evaluate(
            "[...document.querySelectorAll('#graph [data-node]')].map(n => n.dataset.node)"
        )
        assert (
            len(nodes) == 10
            and "svc/legacy/legacy" in nodes
            and "deploy/bookwarehouse/bookwarehouse" in nodes
        )
        drawn = await page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#graph path.edge')]"
            ".map(e => [e.dataset.edge, [e.dataset.source, e.dataset.target, e.dataset.health]]))"
        )
        assert drawn == {
            "bookbuyer/bookbuyer->bookstore/bookstore-v1": [
                "deploy/bookbuyer/bookbuyer",
                "svc/bookstore/bookstore-v1",
                "ok",
            ],
            "bookbuyer/bookbuyer->bookstore/bookstore-v2": [
                "deploy/bookbuyer/bookbuyer",
                "svc/bookstore/bookstore-v2",
                "warn",
            ],
            "bookthief/bookthief->bookstore/bookstore-v1": [
                "deploy/bookthief/bookthief",
                "svc/bookstore/bookstore-v1",
                "bad",
            ],
            "bookthief/bookthief->legacy/legacy": ["deploy/bookthief/bookthief", "svc/legacy/legacy", "idle"],
        }
        colours = await page.evaluate(
            "[...document.querySelectorAll('#graph path.edge')].map(e => getComputedStyle(e).stroke)"
        )
        assert len(set(colours)) == 4, colours  # one colour per health
        split_links = await page.evaluate(
            "[...document.querySelectorAll('#graph path.split-link')]"
            ".map(l => [l.dataset.leaf, l.dataset.weight])"
        )
        assert split_links == [["bookstore-v1", "0.75"], ["bookstore-v2", "0.25"]]

        table = await page.evaluate(ROWS)
        assert [row["edge"] for row in table] == sorted(drawn)  # by source, then destination
        cells = {row["edge"]: row for row in table}
        v2 = cells["bookbuyer/bookbuyer->bookstore/bookstore-v2"]
        assert v2["text"]["success"] == "96.00%"
        assert v2["text"]["latency_p50"] == "7.50 ms" and v2["text"]["latency_p99"] == "9.95 ms"
        assert v2["text"]["secured"] == "yes" and v2["text"]["server_id"] == "bookstore/bookstore-v2"
        assert float(v2["value"]["rps"]) > 0
        assert cells["bookthief/bookthief->legacy/legacy"]["text"]["success"] == NO_VALUE

        async def sort_by(column: str) -> tuple[list[str], str]:
            await page.evaluate(f"document.querySelector('#edges-table button[data-sort={column}]').click()")
            rows = await page.evaluate(ROWS)
            sorted_as = await page.evaluate(
                f"document.querySelector('#edges-table th[data-col={column}]').ariaSort"
            )
            return [row["value"][column] for row in rows], sorted_as

        rps, order = await sort_by("rps")
        assert order == "descending" and [float(v) for v in rps] == sorted(
            (float(v) for v in rps), reverse=True
        )
        rps, order = await sort_by("rps")
        assert order == "ascending" and [float(v) for v in rps] == sorted(float(v) for v in rps)
        success, order = await sort_by("success")
        # Highest first, and an edge without requests last whichever the direction.
        assert order == "descending" and success == ["1", "0.96", "0.8", ""]
        success, order = await sort_by("success")
        assert order == "ascending" and success == ["0.8", "0.96", "1", ""]
        secured, _ = await sort_by("secured")
        assert secured == ["yes", "yes", "yes", "no"]

        leaves = await page.evaluate(
            "[...document.querySelectorAll('[data-split=\"bookstore/bookstore-split\"] tr[data-leaf]')]"
            ".map(r => [r.dataset.leaf, r.dataset.weight, Number(r.dataset.share),"
            " r.querySelector('[data-col=weight]').textContent])"
        )
        assert [leaf[:2] for leaf in leaves] == [["bookstore-v1", "0.75"], ["bookstore-v2", "0.25"]]
        assert leaves[0][2] == pytest.approx(35 / 45, abs=0.01) and leaves[0][3] == "75.0%"

        shot = await page.screenshot(artifact("dashboard.png"))
        with capsys.disabled():
            print(f"\nthe dashboard's screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        assert browser.page_errors == []
        # Nothing from elsewhere: the page, its two files and its data.
        assert {url.split("?")[0] for url in browser.requests} == {
            f"{base}/dashboard",
            f"{base}/dashboard/dashboard.css",
            f"{base}/dashboard/dashboard.js",
            f"{base}/dashboard/data",
        }


#: The edge table's rows as the DOM shows them: per column its text and data-value.
ROWS = """[...document.querySelectorAll('#edges-body tr')].map(r => ({
  edge: r.dataset.edge,
  text: Object.fromEntries([...r.querySelectorAll('[data-col]')].map(c => [c.dataset.col, c.textContent])),
  value: Object.fromEntries([...r.querySelectorAll('[data-col]')].map(c => [c.dataset.col, c.dataset.value])),
}))"""


async def test_without_prometheus_the_data_is_503_and_the_page_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with controller_http(None) as base:
        status, data = await get_json(f"{base}/dashboard/data")
        assert status == 503
        assert data["error"].startswith("Prometheus is not configured"), data
        async with Chromium() as browser:
            page = await browser.open(f"{base}/dashboard")
            await page.wait_for("document.body.dataset.state === 'error'")
            shown = await page.evaluate("document.getElementById('error').textContent")
            assert shown == data["error"]
            hidden = await page.evaluate(
                "[...document.querySelectorAll('section.panel')]"
                ".every(s => getComputedStyle(s).display === 'none')"
            )
            assert hidden, "the panels are shown without data"
            shot = await page.screenshot(artifact("dashboard-no-prometheus.png"))
            with capsys.disabled():
                print(f"\nthe dashboard's screenshot without Prometheus: {shot}")
            assert browser.page_errors == []


async def test_unreachable_prometheus_is_503_with_the_reason() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with controller_http(Prometheus(url, aiohttp_fetch(url, timeout=2.0))) as base:
        status, data = await get_json(f"{base}/dashboard/data")
    assert status == 503
    assert data["error"].startswith(f"Prometheus at {url} is unreachable"), data
    assert "Traceback" not in data["error"]


async def test_a_bad_window_is_400() -> None:
    async with controller_http(None) as base:
        status, data = await get_json(f"{base}/dashboard/data?window=5%20minutes")
    assert status == 400
    assert data["error"] == "bad window '5 minutes' (a Prometheus duration such as 30s, 1m, 1h)"


async def test_pages_asking_together_share_one_set_of_queries() -> None:
    """Many open pages cost Prometheus one set of queries per refresh, not one per page."""
    asked: list[str] = []
    release = asyncio.Event()

    async def fetch(path: str) -> tuple[int, bytes]:
        asked.append(path)
        await release.wait()
        return 200, b'{"status": "success", "data": {"resultType": "vector", "result": []}}'

    handled: list[int] = []

    def state() -> MeshState:
        # Read by each request right before it joins (or starts) the queries, in one step.
        handled.append(1)
        return MeshState()

    async with controller_http(Prometheus("http://prometheus.test", fetch), state) as base:
        release.set()
        assert (await get_json(f"{base}/dashboard/data"))[0] == 200
        one_page = len(asked)
        asked.clear()
        handled.clear()
        release.clear()
        together = [asyncio.create_task(get_json(f"{base}/dashboard/data")) for _ in range(20)]
        await eventually(_async(lambda: len(handled) == 20), what="20 requests waiting for Prometheus")
        release.set()
        answers = await asyncio.gather(*together)
    assert {status for status, _ in answers} == {200}
    assert one_page > 0 and len(asked) == one_page


def _async(check: Callable[[], bool]) -> Callable[[], Any]:
    async def predicate() -> bool:
        return check()

    return predicate
