"""`kpi.report` against a real Prometheus scraping Envoy-shaped series: rows per edge, the
server's identity measured from its own series, SECURED from handshakes vs connections."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from meshcp.kpi import report
from meshcp.kpi.prometheus import NoData, Prometheus
from meshcp.kpi.queries import Resource, Selection
from tests.support import eventually
from tests.support.prometheus import Exporter, PrometheusServer


def _series(name: str, value: float, **labels: str) -> str:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{text}}} {value}\n"


def _client(pod: str, account: str, service: str, *, requests: int, connections: int, handshakes: int) -> str:
    who = {"source_namespace": "bookbuyer", "source_pod": pod, "source_service_account": account}
    to = {"destination_namespace": "bookstore", "destination_service": service, "destination_port": "14001"}
    return (
        _series("envoy_cluster_upstream_rq_total", requests, **who, **to)
        + _series("envoy_cluster_upstream_cx_total", connections, **who, **to)
        + _series("envoy_cluster_upstream_cx_active", 1, **who, **to)
        + _series("envoy_cluster_ssl_handshake", handshakes, **who, **to)
    )


def _server(pod: str, account: str, service: str) -> str:
    who = {"source_namespace": "bookstore", "source_pod": pod, "source_service_account": account}
    return _series("envoy_cluster_upstream_cx_total", 3, **who, local_service=service)


EXPOSITION = (
    _client("bookbuyer-0", "bookbuyer", "bookstore", requests=7, connections=2, handshakes=2)
    + _client("bookbuyer-1", "bookbuyer", "bookstore", requests=5, connections=1, handshakes=1)
    + _client("bookbuyer-0", "bookbuyer", "legacy", requests=4, connections=2, handshakes=0)
    + _server("bookstore-v1-0", "bookstore", "bookstore")
    + _server("bookstore-v2-0", "bookstore-v2", "bookstore")
)


@pytest.fixture
async def prometheus() -> AsyncIterator[Prometheus]:
    async with Exporter(EXPOSITION) as exporter, PrometheusServer([exporter.target]) as server:

        async def stored() -> bool:
            return len(await server.client.query("envoy_cluster_upstream_rq_total")) == 3

        await eventually(
            stored, timeout=20, what="the exporter's series in Prometheus", details=lambda: server.log
        )
        yield server.client


async def test_edges_measure_identities_and_mtls(prometheus: Prometheus) -> None:
    rows = await report.edge_rows(prometheus, "deploy", "", "1m")
    assert rows == [
        {
            "src": "bookbuyer/bookbuyer",
            "dst": "bookstore/bookstore",
            "secured": "yes",
            "client_id": "bookbuyer/bookbuyer",
            # Two identities serve bookstore (v1 and v2): both are named.
            "server_id": "bookstore/bookstore,bookstore/bookstore-v2",
        },
        {
            "src": "bookbuyer/bookbuyer",
            "dst": "bookstore/legacy",
            "secured": "no",
            "client_id": "bookbuyer/bookbuyer",
            "server_id": "-",
        },
    ]
    pods = await report.edge_rows(prometheus, "pod", "bookbuyer", "1m")
    assert [(r["src"], r["dst"]) for r in pods] == [
        ("bookbuyer/bookbuyer-0", "bookstore/bookstore"),
        ("bookbuyer/bookbuyer-0", "bookstore/legacy"),
        ("bookbuyer/bookbuyer-1", "bookstore/bookstore"),
    ]


async def test_rows_per_destination_are_edges_with_golden_metrics(prometheus: Prometheus) -> None:
    chosen = Selection(Resource("deploy", "", "bookbuyer"), per_destination=True)
    rows = await report.stat_rows(prometheus, chosen)
    assert [(r["namespace"], r["name"], r["destination"], r["requests"], r["tcp_conn"]) for r in rows] == [
        ("bookbuyer", "bookbuyer", "bookstore", 12.0, 2.0),
        ("bookbuyer", "bookbuyer", "legacy", 4.0, 1.0),
    ]
    assert all(r["destination_namespace"] == "bookstore" for r in rows)


async def test_no_series_is_no_data(prometheus: Prometheus) -> None:
    with pytest.raises(NoData):
        await report.stat_rows(prometheus, Selection(Resource("ns", "", "nowhere")))
    with pytest.raises(NoData):
        await report.edge_rows(prometheus, "ns", "nowhere", "1m")
