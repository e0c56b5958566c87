"""The KPI page (`/dashboard`) in a real lab: Envoy sidecars, the lab's Prometheus, the
controller's HTTP endpoint, and a real headless Chromium in the lab's node namespace
(where the controller listens on loopback), reading the page as a person would see it.

A quiet client (`egress-client-0`, service account bookbuyer, which runs no traffic of its
own) sends a known number of requests to the bookstore apex; the TrafficSplit sends them
to bookstore-v1 and bookstore-v2, so the page must show exactly that many requests on the
egress-client's edges, besides the bookbuyer's own loop. The tests share one lab and run
in file order; the last one takes the lab down.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from meshcp.lab import layout, netns_http
from meshcp.lab.network import LabError
from meshcp.sidecar import ports
from tests.lab.driver import LabDriver, bookstore_lab, lab_leftovers
from tests.support import eventually
from tests.support.chromium import Chromium, artifact

BOOKSTORE = "http://bookstore.bookstore:14001"
CLIENT = "bookbuyer/egress-client-0"
BUYER_HEADERS = ("client-app=bookbuyer", "user-agent=Go-http-client/1.1")
REQUESTS = 12
#: Prometheus scrapes every 2 s; its first scrapes wait for it to start and for file_sd.
SCRAPE_DEADLINE = 90.0
PAGE = f"http://127.0.0.1:{ports.CONTROLLER_HTTP_PORT}/dashboard?refresh=2&window=1m"
LEAVES = ("bookstore/bookstore-v1", "bookstore/bookstore-v2")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    yield from bookstore_lab(tmp_path_factory.mktemp("bookstore"), prometheus=True)


async def _data() -> dict[str, Any] | None:
    """The controller's /dashboard/data, from inside the node namespace; None while the
    controller or Prometheus cannot answer yet."""
    try:
        status, body = await netns_http.get(layout.NODE_NETNS, ports.CONTROLLER_HTTP_PORT, "/dashboard/data")
    except LabError:
        return None
    if status != 200:
        return None
    found: dict[str, Any] = json.loads(body)
    return found


def _client_requests(data: dict[str, Any] | None) -> float:
    """Requests the egress-client sent to the split's backends, by the data route."""
    edges = (data or {}).get("edges", [])
    return sum(
        e["requests"] or 0 for e in edges if e["src"] == "bookbuyer/egress-client" and e["dst"] in LEAVES
    )


async def test_the_page_shows_the_bookstore_after_known_traffic(
    lab: LabDriver, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = lab.http(CLIENT, f"{BOOKSTORE}/books-bought", count=REQUESTS, headers=BUYER_HEADERS)
    assert sent["statuses"] == {"200": REQUESTS}, sent

    async def counted() -> bool:
        data = await _data()
        # Envoy flushes histograms (latency) on its stats flush, after the counters.
        timed = [
            e["latency_p99"] is not None
            for e in (data or {}).get("edges", [])
            if e["src"] == "bookbuyer/bookbuyer" and e["dst"] in LEAVES
        ]
        return _client_requests(data) == REQUESTS and timed == [True, True]

    await eventually(counted, timeout=SCRAPE_DEADLINE, what="the egress-client's requests in /dashboard/data")

    async with Chromium(prefix=("ip", "netns", "exec", layout.NODE_NETNS)) as browser:
        page = await browser.open(PAGE)
        await page.wait_for(
            "document.body.dataset.state === 'ok' && "
            "[...document.querySelectorAll('#edges-body tr[data-src=\"bookbuyer/egress-client\"]')]"
            f".reduce((n, r) => n + Number(r.dataset.requests), 0) === {REQUESTS}",
            timeout=SCRAPE_DEADLINE,
            what="the egress-client's requests on the page",
        )
        shot = await page.screenshot(artifact("lab-dashboard.png"))
        with capsys.disabled():
            print(f"\nthe lab dashboard's screenshot: {shot}")
        nodes = await page.evaluate(
            "[...document.querySelectorAll('#graph [data-node]')].map(n => n.dataset.node)"
        )
        assert {
            "deploy/bookbuyer/bookbuyer",
            "deploy/bookbuyer/egress-client",
            "deploy/bookthief/bookthief",
            "svc/bookstore/bookstore",
            "svc/bookstore/bookstore-v1",
            "svc/bookstore/bookstore-v2",
        } <= set(nodes), nodes

        drawn = await page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#graph path.edge')]"
            ".map(e => [e.dataset.edge, e.dataset.health]))"
        )
        for leaf in LEAVES:
            assert drawn.get(f"bookbuyer/bookbuyer->{leaf}") in ("ok", "warn", "bad"), drawn
        # Every request went to a backend of the split, never to the apex.
        assert "bookbuyer/bookbuyer->bookstore/bookstore" not in drawn

        # The page refreshes every few seconds; a rate is 0 while Prometheus holds one
        # sample of a series in the window, so wait (on the page) for both leaves' rates.
        await page.wait_for(
            "[...document.querySelectorAll('#edges-body tr[data-src=\"bookbuyer/bookbuyer\"]')]"
            ".filter(r => r.dataset.dst.startsWith('bookstore/bookstore-v'))"
            ".filter(r => Number(r.querySelector('[data-col=\"rps\"]').dataset.value) > 0).length === 2",
            timeout=SCRAPE_DEADLINE,
            what="the bookbuyer's request rates to both leaves on the page",
        )
        rows = await page.evaluate(ROWS)
        mine = [row for row in rows if row["src"] == "bookbuyer/bookbuyer" and row["dst"] in LEAVES]
        assert len(mine) == 2, rows
        for row in mine:
            assert row["text"]["success"].endswith("%"), row
            assert float(row["value"]["rps"]) > 0 and row["text"]["rps"] not in ("", "\u2013")
            assert float(row["value"]["latency_p50"]) <= float(row["value"]["latency_p99"])
            assert row["text"]["latency_p99"].endswith(" ms")
            assert (row["text"]["secured"], row["text"]["client_id"]) == ("yes", "bookbuyer/bookbuyer")
            assert row["text"]["server_id"] == "bookstore/bookstore"
        client = [row for row in rows if row["src"] == "bookbuyer/egress-client"]
        assert sum(float(row["requests"]) for row in client) == REQUESTS
        # Its requests were all answered 200: green, 100 %.
        assert {row["text"]["success"] for row in client} == {"100.00%"}, client
        assert {row["health"] for row in client} == {"ok"}

        leaves = await page.evaluate(
            "[...document.querySelectorAll('[data-split=\"bookstore/bookstore-split\"] tr[data-leaf]')]"
            ".map(r => [r.dataset.leaf, r.dataset.weight, r.dataset.share])"
        )
        assert [leaf[:2] for leaf in leaves] == [["bookstore-v1", "0.75"], ["bookstore-v2", "0.25"]]
        assert sum(float(leaf[2]) for leaf in leaves) == pytest.approx(1.0)
        arcs = await page.evaluate(
            "[...document.querySelectorAll('#graph path.split-link')]"
            ".map(l => [l.dataset.leaf, l.dataset.weight])"
        )
        assert arcs == [["bookstore-v1", "0.75"], ["bookstore-v2", "0.25"]]
        assert browser.page_errors == []


#: The edge table's rows as the DOM shows them.
ROWS = """[...document.querySelectorAll('#edges-body tr')].map(r => ({
  src: r.dataset.src,
  dst: r.dataset.dst,
  requests: r.dataset.requests,
  health: r.dataset.health,
  text: Object.fromEntries([...r.querySelectorAll('[data-col]')].map(c => [c.dataset.col, c.textContent])),
  value: Object.fromEntries([...r.querySelectorAll('[data-col]')].map(c => [c.dataset.col, c.dataset.value])),
}))"""


def test_down_removes_the_lab(lab: LabDriver) -> None:
    lab.down()
    assert lab_leftovers() == []
