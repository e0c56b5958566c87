"""`meshcp stat` and `meshcp edges` against a real lab: Envoy sidecars, their Prometheus
series and the lab's Prometheus in the node namespace, queried as a user would.

A quiet client (`egress-client-0`, service account bookbuyer, which runs no traffic of its
own) sends a known number of requests: allowed GETs (200) and POSTs the policy refuses
(403), so its counts are exact and its success rate is 100 % (a 403 is not a failure).
The tests share one lab and run in file order; the last one takes the lab down.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from tests.lab.driver import (
    LabDriver,
    bookstore_lab,
    lab_leftovers,
    wait_for,
)
from tests.lab.failing_app import FAILING_APP, FLAKY_MANIFESTS

BOOKSTORE = "http://bookstore.bookstore:14001"
CLIENT = "bookbuyer/egress-client-0"
THIEF = "bookthief/bookthief-0"
BUYER_HEADERS = ("client-app=bookbuyer", "user-agent=Go-http-client/1.1")
ALLOWED, REFUSED = 10, 5
#: Prometheus scrapes every 2 s; its first scrapes wait for it to start and for file_sd.
SCRAPE_DEADLINE = 60.0
FLAKY = "http://flaky.flaky:8080"
FAILED, SERVED = 4, 6


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDriver]:
    yield from bookstore_lab(
        tmp_path_factory.mktemp("bookstore"),
        prometheus=True,
        extra={"flaky.yaml": FLAKY_MANIFESTS, "apps/flaky.py": FAILING_APP},
    )


def _json(lab: LabDriver, *args: str) -> Any:
    """The JSON of a meshcp command, or None while Prometheus has no data for it yet."""
    result = lab.meshcp(*args, "-o", "json", check=False)
    if result.returncode == 1 and "no data" in result.stderr:
        return None
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _row(rows: list[dict[str, Any]] | None, name: str) -> dict[str, Any] | None:
    return next((row for row in rows or [] if row["name"] == name), None)


def test_stat_pod_counts_the_requests_sent(lab: LabDriver) -> None:
    allowed = lab.http(CLIENT, f"{BOOKSTORE}/books-bought", count=ALLOWED, headers=BUYER_HEADERS)
    assert allowed["statuses"] == {"200": ALLOWED}, allowed
    refused = lab.http(
        CLIENT, f"{BOOKSTORE}/update-books-bought", count=REFUSED, method="POST", headers=BUYER_HEADERS
    )
    assert refused["statuses"] == {"403": REFUSED}, refused
    assert lab.http(THIEF, f"{BOOKSTORE}/books-bought", count=5)["statuses"] == {"403": 5}

    def counted() -> bool:
        row = _row(_json(lab, "stat", "pod", "egress-client-0", "-n", "bookbuyer"), "egress-client-0")
        # Envoy flushes histograms (latency) on its stats flush, after the counters.
        return row is not None and row["requests"] == ALLOWED + REFUSED and row["latency_p50"] is not None

    wait_for(counted, SCRAPE_DEADLINE, "egress-client's requests in Prometheus")
    row = _row(_json(lab, "stat", "pod", "egress-client-0", "-n", "bookbuyer"), "egress-client-0")
    assert row is not None
    assert row["success"] == 1.0, row  # 403s are answers, not failures
    assert row["rps"] > 0
    assert 0 < row["latency_p50"] <= row["latency_p95"] <= row["latency_p99"]


def test_stat_deploy_groups_pods_by_name(lab: LabDriver) -> None:
    rows = _json(lab, "stat", "deploy", "-n", "bookbuyer")
    assert {row["name"] for row in rows} == {"bookbuyer", "egress-client"}
    client = _row(rows, "egress-client")
    assert client is not None
    assert client["namespace"] == "bookbuyer"
    assert client["requests"] == ALLOWED + REFUSED
    assert client["success"] == 1.0
    buyer = _row(rows, "bookbuyer")
    assert buyer is not None and buyer["requests"] > 0  # bookbuyer's own loop
    table = lab.meshcp("stat", "deploy", "-n", "bookbuyer").stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
        "TCP_CONN",
    ]
    assert any(line.startswith("bookbuyer/egress-client ") and "100.00%" in line for line in table), table


def test_stat_svc_sees_the_split_backends_and_the_callers(lab: LabDriver) -> None:
    rows = _json(lab, "stat", "svc", "-n", "bookstore")
    leaves = [_row(rows, "bookstore-v1"), _row(rows, "bookstore-v2")]
    assert all(leaf is not None for leaf in leaves), rows
    # Every request above went to a backend of the TrafficSplit, never to the apex.
    assert sum(leaf["requests"] for leaf in leaves if leaf) >= ALLOWED + REFUSED + 5
    apex = _row(rows, "bookstore")
    assert apex is None or apex["requests"] == 0
    mine = _json(
        lab,
        "stat",
        "svc",
        "-n",
        "bookstore",
        "--from",
        "pod/egress-client-0",
        "--from-namespace",
        "bookbuyer",
    )
    assert sum(row["requests"] for row in mine) == ALLOWED + REFUSED


def test_stat_trafficsplit_reads_weights_from_the_manifests(lab: LabDriver) -> None:
    rows = _json(lab, "stat", "trafficsplit", "-n", "bookstore", "--source", str(lab.directory))
    assert [(row["apex"], row["leaf"], row["weight"]) for row in rows] == [
        ("bookstore", "bookstore-v1", 0.75),
        ("bookstore", "bookstore-v2", 0.25),
    ]
    assert sum(row["share"] for row in rows) == pytest.approx(1.0)
    # The mesh splits by the weights: every request since the sidecars started is a draw
    # with p = 0.75 for v1, so v1's count is within 3 sigma of 0.75 n.
    counts = [row["requests"] or 0.0 for row in rows]
    n = sum(counts)
    assert n > 0, rows
    sigma = math.sqrt(0.75 * 0.25 / n)
    assert abs(counts[0] / n - 0.75) <= 3 * sigma, rows
    # The observed share (request rates over the window) as well, when the window holds
    # enough requests to say anything (rate over 1m x 60 s).
    recent = sum(row["rps"] or 0.0 for row in rows) * 60
    if recent >= 30:
        assert abs(rows[0]["share"] - 0.75) <= 3 * math.sqrt(0.75 * 0.25 / recent) + 0.02, rows


def test_edges_pod_names_callers_callees_and_identities(lab: LabDriver) -> None:
    rows = _json(lab, "edges", "pod")
    found = {(row["src"], row["dst"]): row for row in rows}
    client = [found[key] for key in found if key[0] == "bookbuyer/egress-client-0"]
    assert client, rows
    assert {row["dst"] for row in client} <= {"bookstore/bookstore-v1", "bookstore/bookstore-v2"}
    assert all(row["secured"] == "yes" and row["client_id"] == "bookbuyer/bookbuyer" for row in client)
    # Measured from the servers' own series, without manifests.
    assert {row["server_id"] for row in client} == {"bookstore/bookstore"}, client
    # bookthief may reach nothing: its calls are refused by its own sidecar (a proxy gets
    # only the upstreams its identity may reach) and never become an edge.
    assert not [key for key in found if key[0] == "bookthief/bookthief-0"], rows
    named = _json(lab, "edges", "deploy", "-n", "bookstore", "--source", str(lab.directory))
    assert {row["server_id"] for row in named} == {"bookstore/bookstore"}
    assert {"bookbuyer/egress-client", "bookbuyer/bookbuyer"} <= {row["src"] for row in named}


def test_5xx_are_failures(lab: LabDriver) -> None:
    failed = lab.http(CLIENT, f"{FLAKY}/fail", count=FAILED)
    assert failed["statuses"] == {"500": FAILED}, failed
    served = lab.http(CLIENT, f"{FLAKY}/ok", count=SERVED)
    assert served["statuses"] == {"200": SERVED}, served
    args = (
        "stat",
        "svc",
        "flaky",
        "-n",
        "flaky",
        "--from",
        "pod/egress-client-0",
        "--from-namespace",
        "bookbuyer",
    )

    seen: list[object] = []

    def counted() -> bool:
        row = _row(_json(lab, *args), "flaky")
        seen[:] = [row]
        # Counts only: a latency quantile comes from a rate over the last minute, gone once
        # the requests are older than that (a slow scrape on a loaded machine).
        return row is not None and row["requests"] == FAILED + SERVED

    try:
        wait_for(counted, SCRAPE_DEADLINE, "egress-client's requests to flaky in Prometheus")
    except AssertionError as error:
        raise AssertionError(f"{error}; the last row read: {seen}") from None
    row = _row(_json(lab, *args), "flaky")
    assert row is not None
    assert row["success"] == pytest.approx(SERVED / (FAILED + SERVED)), row


def test_errors_are_one_line(lab: LabDriver) -> None:
    unreachable = lab.meshcp("stat", "deploy", "--prometheus-url", "http://127.0.0.1:9", check=False)
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("meshcp: error: Prometheus at http://127.0.0.1:9 is unreachable"), (
        unreachable
    )
    assert len(unreachable.stderr.strip().splitlines()) == 1
    nothing = lab.meshcp("stat", "deploy", "-n", "nowhere", check=False)
    assert nothing.returncode == 1
    assert nothing.stderr.strip().splitlines() == [
        "meshcp: error: no data: no sidecar series in Prometheus name namespace 'nowhere' "
        "(is it meshed and scraped, and spelt right?)"
    ], nothing
    unknown = lab.meshcp("stat", "foo", check=False)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        "meshcp: error: unknown kind 'foo' (one of deploy, pod, svc, ns, trafficsplit)"
    ]


def test_down_removes_the_lab(lab: LabDriver) -> None:
    lab.down()
    assert lab_leftovers() == []
