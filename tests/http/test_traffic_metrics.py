"""The SMI TrafficMetrics API (`meshcp.http.traffic_metrics`) against a real Prometheus
scraping Envoy-shaped series this test controls: resources count what their sidecars
received (403 a success, 5xx a failure), edges what clients sent, TrafficSplits per
backend; every error a Kubernetes Status."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from meshcp.http import traffic_metrics
from meshcp.kpi.prometheus import Prometheus, aiohttp_fetch
from meshcp.model.meta import Meta
from meshcp.model.smi import SplitBackend, TrafficSplit
from meshcp.model.state import MeshState
from tests.support import eventually, free_port
from tests.support.prometheus import Exporter, PrometheusServer

#: One Prometheus for the module: its tests only read.
pytestmark = pytest.mark.asyncio(loop_scope="module")

API = "/apis/metrics.smi-spec.io/v1alpha1"
#: Longer than the test: every counter was born inside it, so counts are the totals.
WINDOW = "1h"
SPLIT = TrafficSplit(
    Meta("bookstore-split", "bookstore"),
    "bookstore",
    (SplitBackend("bookstore-v1", 75), SplitBackend("bookstore-v2", 25)),
)


def _series(name: str, value: float, labels: dict[str, str]) -> str:
    text = ",".join(f'{key}="{label}"' for key, label in labels.items())
    return f"{name}{{{text}}} {value}\n"


def _who(namespace: str, pod: str, account: str) -> dict[str, str]:
    return {"source_namespace": namespace, "source_pod": pod, "source_service_account": account}


def _requests(prefix: str, labels: dict[str, str], codes: dict[str, int], timed: int) -> str:
    """Envoy's request counters and time histogram (`timed` requests in (1, 5] ms)."""
    text = _series(f"{prefix}_total", sum(codes.values()), labels)
    for klass, number in codes.items():
        text += _series(f"{prefix}_xx", number, {**labels, "envoy_response_code_class": klass})
    for le, number in (("0.5", 0), ("1", 0), ("5", timed), ("10", timed), ("+Inf", timed)):
        text += _series(f"{prefix}_time_bucket", number, {**labels, "le": le})
    return text


def _client(who: dict[str, str], service: str, codes: dict[str, int], timed: int) -> str:
    to = {"destination_namespace": "bookstore", "destination_service": service, "destination_port": "14001"}
    return _requests("envoy_cluster_upstream_rq", {**who, **to}, codes, timed) + _series(
        "envoy_cluster_upstream_cx_total", 1, {**who, **to}
    )


def _server(who: dict[str, str], services: tuple[str, ...], codes: dict[str, int], timed: int) -> str:
    inbound = {**who, "envoy_http_conn_manager_prefix": "inbound", "destination_port": "14001"}
    text = _requests("envoy_http_downstream_rq", inbound, codes, timed)
    for service in services:
        text += _series("envoy_cluster_upstream_cx_total", 3, {**who, "local_service": service})
    return text


def _live(*who: dict[str, str]) -> str:
    return "".join(_series("envoy_server_live", 1, w) for w in who)


BUYER = _who("bookbuyer", "bookbuyer-0", "bookbuyer")
THIEF = _who("bookthief", "bookthief-0", "bookthief")
V1_0 = _who("bookstore", "bookstore-v1-0", "bookstore")
V1_1 = _who("bookstore", "bookstore-v1-1", "bookstore")
V2_0 = _who("bookstore", "bookstore-v2-0", "bookstore-v2")
IDLE = _who("bookwarehouse", "bookwarehouse-0", "bookwarehouse")


def exposition(timed: int) -> str:
    """The mesh's series; `timed` grows between two expositions so that latency has a rate."""
    return (
        _live(BUYER, THIEF, V1_0, V1_1, V2_0, IDLE)
        + _client(BUYER, "bookstore-v1", {"2": 14, "4": 3, "5": 3}, timed)
        + _client(BUYER, "bookstore-v2", {"2": 5}, timed)
        + _client(BUYER, "bookwarehouse", {}, 0)  # a cluster that carried nothing
        + _client(THIEF, "bookstore-v1", {"4": 4}, timed)
        + _server(V1_0, ("bookstore", "bookstore-v1"), {"2": 9, "4": 4, "5": 2}, timed)
        + _server(V1_1, ("bookstore", "bookstore-v1"), {"2": 7, "4": 1, "5": 1}, timed)
        + _server(V2_0, ("bookstore", "bookstore-v2"), {"2": 5}, timed)
    )


Get = Callable[..., Any]


async def _serve(state: MeshState, prometheus: Prometheus | None) -> web.AppRunner:
    app = web.Application()
    traffic_metrics.add_routes(app, lambda: state, prometheus)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


def _getter(runner: web.AppRunner, session: aiohttp.ClientSession) -> Get:
    port = runner.addresses[0][1]

    async def get(path: str, status: int = 200, **query: str) -> Any:
        url = f"http://127.0.0.1:{port}{path}"
        async with session.get(url, params={"window": WINDOW, **query}) as reply:
            body = await reply.json()
            assert reply.status == status, body
            assert reply.content_type == "application/json"
            return body

    return get


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def get() -> AsyncIterator[Get]:
    async with Exporter(exposition(0)) as exporter, PrometheusServer([exporter.target]) as server:
        await server.wait_for_scrapes(exporter, 2)
        exporter.text = exposition(10)

        async def timed() -> bool:
            found = await server.client.query("rate(envoy_http_downstream_rq_time_bucket[1h]) > 0")
            # Three servers' buckets le=5, le=10 and +Inf grew.
            return len(found) == 3 * 3

        await eventually(timed, timeout=20, what="the latency buckets' growth", details=lambda: server.log)
        runner = await _serve(MeshState().with_changes([SPLIT]), server.client)
        try:
            async with aiohttp.ClientSession() as session:
                yield _getter(runner, session)
        finally:
            await runner.cleanup()


def _metrics(item: dict[str, Any]) -> dict[str, str | None]:
    return {metric["name"]: metric["value"] for metric in item["metrics"]}


def _counts(item: dict[str, Any]) -> tuple[str | None, str | None]:
    found = _metrics(item)
    return found["success_count"], found["failure_count"]


async def test_a_pod_counts_what_its_sidecar_received(get: Get) -> None:
    found = await get(f"{API}/namespaces/bookstore/pods/bookstore-v1-0")
    assert found["kind"] == "TrafficMetrics"
    assert found["resource"] == {"kind": "Pod", "namespace": "bookstore", "name": "bookstore-v1-0"}
    assert found["edge"] == {"direction": "from", "side": "server", "resource": {}}
    assert found["window"] == "1h0m0s"
    # 9 2xx and 4 403s answered, 2 5xx failed.
    assert _counts(found) == ("13", "2")
    # Every timed request took (1, 5] ms: the quantiles interpolate in that bucket.
    assert _metrics(found) | {"success_count": None, "failure_count": None} == {
        "p99_response_latency": "4960u",
        "p90_response_latency": "4600u",
        "p50_response_latency": "3m",
        "success_count": None,
        "failure_count": None,
    }


async def test_deployments_and_namespaces_sum_their_pods(get: Get) -> None:
    deploy = await get(f"{API}/namespaces/bookstore/deployments/bookstore-v1")
    assert deploy["resource"] == {"kind": "Deployment", "namespace": "bookstore", "name": "bookstore-v1"}
    assert _counts(deploy) == ("21", "3")
    namespace = await get(f"{API}/namespaces/bookstore")
    assert namespace["resource"] == {"kind": "Namespace", "name": "bookstore"}
    assert "namespace" not in namespace["metadata"]
    assert _counts(namespace) == ("26", "3")


async def test_a_pod_without_requests_has_zero_counts_and_no_latency(get: Get) -> None:
    found = await get(f"{API}/namespaces/bookwarehouse/pods/bookwarehouse-0")
    assert list(_metrics(found).values()) == [None, None, None, "0", "0"]


async def test_lists_hold_every_meshed_resource(get: Get) -> None:
    pods = await get(f"{API}/namespaces/bookstore/pods")
    assert pods["kind"] == "TrafficMetricsList"
    assert pods["resource"] == {"kind": "Pod", "namespace": "bookstore"}
    assert {item["resource"]["name"]: _counts(item) for item in pods["items"]} == {
        "bookstore-v1-0": ("13", "2"),
        "bookstore-v1-1": ("8", "1"),
        "bookstore-v2-0": ("5", "0"),
    }
    deployments = await get(f"{API}/namespaces/bookstore/deployments")
    assert [item["resource"]["name"] for item in deployments["items"]] == ["bookstore-v1", "bookstore-v2"]
    namespaces = await get(f"{API}/namespaces")
    assert namespaces["resource"] == {"kind": "Namespace"}
    assert [item["resource"]["name"] for item in namespaces["items"]] == [
        "bookbuyer",
        "bookstore",
        "bookthief",
        "bookwarehouse",
    ]
    everywhere = await get(f"{API}/pods")
    assert len(everywhere["items"]) == 6
    assert (await get(f"{API}/namespaces/nowhere/pods"))["items"] == []


async def test_edges_of_a_client_are_the_services_it_called(get: Get) -> None:
    found = await get(f"{API}/namespaces/bookbuyer/pods/bookbuyer-0/edges")
    assert found["kind"] == "TrafficMetricsList"
    assert found["resource"] == {"kind": "Pod", "namespace": "bookbuyer", "name": "bookbuyer-0"}
    # bookwarehouse's cluster carried nothing: no edge.
    assert [(item["edge"], _counts(item)) for item in found["items"]] == [
        (
            {
                "direction": "to",
                "side": "client",
                "resource": {"kind": "Service", "namespace": "bookstore", "name": "bookstore-v1"},
            },
            ("17", "3"),
        ),
        (
            {
                "direction": "to",
                "side": "client",
                "resource": {"kind": "Service", "namespace": "bookstore", "name": "bookstore-v2"},
            },
            ("5", "0"),
        ),
    ]


async def test_edges_of_a_server_are_its_callers(get: Get) -> None:
    deploy = await get(f"{API}/namespaces/bookstore/deployments/bookstore-v1/edges")
    assert [
        (item["edge"]["direction"], item["edge"]["resource"], _counts(item)) for item in deploy["items"]
    ] == [
        ("from", {"kind": "Deployment", "namespace": "bookbuyer", "name": "bookbuyer"}, ("17", "3")),
        ("from", {"kind": "Deployment", "namespace": "bookthief", "name": "bookthief"}, ("4", "0")),
    ]
    namespace = await get(f"{API}/namespaces/bookstore/edges")
    assert [(item["edge"]["resource"], _counts(item)) for item in namespace["items"]] == [
        ({"kind": "Namespace", "name": "bookbuyer"}, ("22", "3")),
        ({"kind": "Namespace", "name": "bookthief"}, ("4", "0")),
    ]
    assert all(item["edge"]["side"] == "client" for item in namespace["items"])


async def test_a_split_has_each_backends_traffic_and_weight(get: Get) -> None:
    found = await get(f"{API}/namespaces/bookstore/trafficsplits/bookstore-split")
    assert [(item["backend"], _counts(item)) for item in found["items"]] == [
        ({"apex": "bookstore", "name": "bookstore-v1", "weight": 75}, ("21", "3")),
        ({"apex": "bookstore", "name": "bookstore-v2", "weight": 25}, ("5", "0")),
    ]
    assert all(
        item["edge"] == {"direction": "from", "side": "client", "resource": {}} for item in found["items"]
    )
    listed = await get(f"{API}/namespaces/bookstore/trafficsplits")
    assert len(listed["items"]) == 2
    missing = await get(f"{API}/namespaces/bookstore/trafficsplits/nope", 404)
    assert missing["reason"] == "NotFound"


async def test_discovery(get: Get) -> None:
    assert (await get("/apis/metrics.smi-spec.io"))["kind"] == "APIGroup"
    assert (await get("/apis"))["kind"] == "APIGroupList"
    for path in (API, API + "/"):
        found = await get(path)
        assert found["kind"] == "APIResourceList"
        assert found["groupVersion"] == "metrics.smi-spec.io/v1alpha1"


@pytest.mark.parametrize(
    ("path", "query", "status", "message"),
    [
        ("/namespaces/bookstore/pods/nope", {}, 404, "pods 'nope' in namespace 'bookstore' has no traffic"),
        ("/namespaces/nowhere", {}, 404, "namespaces 'nowhere' has no traffic metrics"),
        ("/namespaces/nowhere/edges", {}, 404, "namespaces 'nowhere' has no traffic metrics"),
        ("/namespaces/bookstore/services/bookstore", {}, 404, "could not find the requested resource"),
        ("/namespaces/bookstore/services", {}, 404, "could not find the requested resource"),
        ("/namespaces/bookstore/trafficsplits/bookstore-split/edges", {}, 404, "could not find"),
        ("/nodes/a/b/c", {}, 404, "could not find the requested resource"),
        ("/namespaces/bookstore/pods/Bad_Name", {}, 400, "bad name 'Bad_Name'"),
        ("/namespaces/bookstore/pods", {"window": "5x"}, 400, "bad window '5x'"),
        ("/namespaces/bookstore/pods", {"labelSelector": "app=x"}, 400, "labelSelector is not supported"),
    ],
)
async def test_errors_are_statuses(
    get: Get, path: str, query: dict[str, str], status: int, message: str
) -> None:
    found = await get(API + path, status, **query)
    assert found["kind"] == "Status"
    assert found["code"] == status
    assert message in found["message"]


async def test_without_prometheus_the_api_is_unavailable() -> None:
    runner = await _serve(MeshState(), None)
    unreachable_url = f"http://127.0.0.1:{free_port()}"
    down = await _serve(MeshState(), Prometheus(unreachable_url, aiohttp_fetch(unreachable_url, timeout=2)))
    try:
        async with aiohttp.ClientSession() as session:
            none = await _getter(runner, session)(f"{API}/namespaces/bookstore/pods/x", 503)
            assert none["reason"] == "ServiceUnavailable"
            assert "meshcp serve --prometheus-url" in none["message"]
            gone = await _getter(down, session)(f"{API}/namespaces", 503)
            assert gone["message"].startswith(f"Prometheus at {unreachable_url} is unreachable")
            # Discovery needs no Prometheus.
            assert (await _getter(runner, session)(API))["kind"] == "APIResourceList"
    finally:
        await runner.cleanup()
        await down.cleanup()
