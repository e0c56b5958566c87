"""The SMI TrafficMetrics API's JSON (`meshcp.kpi.traffic_metrics`) and its PromQL
(`meshcp.kpi.traffic_queries`), as pure functions of figures and of what is asked."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meshcp.kpi import traffic_metrics as tm
from meshcp.kpi import traffic_queries as tq
from meshcp.kpi.queries import QueryError
from meshcp.kpi.traffic_metrics import Figures, Ref
from meshcp.model.meta import Meta
from meshcp.model.smi import SplitBackend, TrafficSplit

NOW = datetime(2026, 12, 3, 12, 0, 5, 250_000, tzinfo=UTC)
ASKED = tm.Request("1m", NOW)
SOME = Figures(success=17.0, failure=3.0, latency={0.99: 4.96, 0.9: 4.6, 0.5: 3.0})


@pytest.mark.parametrize(
    ("milliseconds", "quantity"),
    [(10, "10m"), (1.5, "1500u"), (2000, "2"), (2500, "2500m"), (0.0004, "0"), (4.96, "4960u"), (0, "0")],
)
def test_latencies_are_quantities_of_seconds(milliseconds: float, quantity: str) -> None:
    assert tm.seconds(milliseconds) == quantity


@pytest.mark.parametrize(
    ("window", "written"),
    [
        ("30s", "30s"),
        ("1m", "1m0s"),
        ("90s", "1m30s"),
        ("1h30m", "1h30m0s"),
        ("250ms", "250ms"),
        ("1d", "24h0m0s"),
    ],
)
def test_windows_are_written_as_kubernetes_durations(window: str, written: str) -> None:
    assert tm.duration(window) == written


def test_a_resource_has_the_specs_shape() -> None:
    found = tm.traffic_metrics(Ref("Pod", "bookstore", "bookstore-v1-0"), tm.RECEIVED, SOME, ASKED)
    assert found == {
        "kind": "TrafficMetrics",
        "apiVersion": "metrics.smi-spec.io/v1alpha1",
        "metadata": {
            "name": "bookstore-v1-0",
            "namespace": "bookstore",
            "creationTimestamp": "2026-12-03T12:00:05Z",
        },
        "timestamp": "2026-12-03T12:00:05Z",
        "window": "1m0s",
        "resource": {"kind": "Pod", "namespace": "bookstore", "name": "bookstore-v1-0"},
        "edge": {"direction": "from", "side": "server", "resource": {}},
        "metrics": [
            {"name": "p99_response_latency", "unit": "seconds", "value": "4960u"},
            {"name": "p90_response_latency", "unit": "seconds", "value": "4600u"},
            {"name": "p50_response_latency", "unit": "seconds", "value": "3m"},
            {"name": "success_count", "value": "17"},
            {"name": "failure_count", "value": "3"},
        ],
    }


def test_no_request_in_the_window_is_no_latency_and_zero_counts() -> None:
    found = tm.traffic_metrics(Ref("Namespace", name="quiet"), tm.RECEIVED, Figures(), ASKED)
    assert found["metadata"] == {"name": "quiet", "creationTimestamp": "2026-12-03T12:00:05Z"}
    assert found["resource"] == {"kind": "Namespace", "name": "quiet"}
    assert [m["value"] for m in found["metrics"]] == [None, None, None, "0", "0"]


def test_a_list_of_a_kind_names_the_kind_and_namespace() -> None:
    received: dict[tuple[str, ...], Figures] = {
        ("bookstore", "bookstore-v2"): Figures(),
        ("bookstore", "bookstore-v1"): SOME,
    }
    found = tm.resource_list("deployments", "bookstore", received, ASKED)
    assert found["kind"] == "TrafficMetricsList"
    assert found["apiVersion"] == "metrics.smi-spec.io/v1alpha1"
    assert found["resource"] == {"kind": "Deployment", "namespace": "bookstore"}
    assert [item["resource"]["name"] for item in found["items"]] == ["bookstore-v1", "bookstore-v2"]
    assert all(item["edge"] == tm.RECEIVED for item in found["items"])
    namespaces = tm.resource_list("namespaces", "", {("bookstore",): SOME}, ASKED)
    assert namespaces["resource"] == {"kind": "Namespace"}
    assert namespaces["items"][0]["resource"] == {"kind": "Namespace", "name": "bookstore"}


def test_edges_name_services_called_and_callers() -> None:
    of = Ref("Deployment", "bookstore", "bookstore-v1")
    found = tm.edge_list(
        "deployments",
        of,
        to={("bookwarehouse", "bookwarehouse"): SOME},
        callers={("bookbuyer", "bookbuyer"): SOME, ("bookthief", "bookthief"): Figures(success=4)},
        request=ASKED,
    )
    assert found["resource"] == {"kind": "Deployment", "namespace": "bookstore", "name": "bookstore-v1"}
    assert [item["edge"] for item in found["items"]] == [
        {
            "direction": "to",
            "side": "client",
            "resource": {"kind": "Service", "namespace": "bookwarehouse", "name": "bookwarehouse"},
        },
        {
            "direction": "from",
            "side": "client",
            "resource": {"kind": "Deployment", "namespace": "bookbuyer", "name": "bookbuyer"},
        },
        {
            "direction": "from",
            "side": "client",
            "resource": {"kind": "Deployment", "namespace": "bookthief", "name": "bookthief"},
        },
    ]
    assert all(item["resource"] == of.as_json() for item in found["items"])
    assert found["items"][2]["metrics"][3] == {"name": "success_count", "value": "4"}


def test_a_split_has_an_item_per_backend_with_its_weight() -> None:
    split = TrafficSplit(
        Meta("bookstore-split", "bookstore"),
        "bookstore",
        (SplitBackend("bookstore-v1", 75), SplitBackend("bookstore-v2", 2.5)),
    )
    found = tm.split_list("bookstore", [split], [SOME, Figures()], ASKED)
    assert found["resource"] == {"kind": "TrafficSplit", "namespace": "bookstore"}
    assert [(item["backend"], item["edge"]) for item in found["items"]] == [
        (
            {"apex": "bookstore", "name": "bookstore-v1", "weight": 75},
            {"direction": "from", "side": "client", "resource": {}},
        ),
        (
            {"apex": "bookstore", "name": "bookstore-v2", "weight": 2.5},
            {"direction": "from", "side": "client", "resource": {}},
        ),
    ]
    assert found["items"][0]["resource"] == {
        "kind": "TrafficSplit",
        "namespace": "bookstore",
        "name": "bookstore-split",
    }


def test_discovery_documents() -> None:
    group = tm.api_group()
    assert group["name"] == "metrics.smi-spec.io"
    assert group["preferredVersion"] == {
        "groupVersion": "metrics.smi-spec.io/v1alpha1",
        "version": "v1alpha1",
    }
    assert tm.api_group_list()["groups"][0]["name"] == "metrics.smi-spec.io"
    resources = {r["name"]: r for r in tm.api_resource_list()["resources"]}
    assert set(resources) == {
        "namespaces",
        "namespaces/edges",
        "deployments",
        "deployments/edges",
        "pods",
        "pods/edges",
        "trafficsplits",
    }
    assert resources["namespaces"]["namespaced"] is False
    assert resources["pods"] == {
        "name": "pods",
        "singularName": "",
        "namespaced": True,
        "kind": "TrafficMetrics",
        "verbs": ["get", "list"],
    }


def test_errors_are_kubernetes_statuses() -> None:
    assert tm.status(404, "gone", {"name": "x", "kind": "pods", "group": ""}) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "gone",
        "reason": "NotFound",
        "code": 404,
        "details": {"name": "x", "kind": "pods"},
    }
    assert tm.status(503, "down")["reason"] == "ServiceUnavailable"


# --- PromQL -------------------------------------------------------------------------------------


def test_received_traffic_is_the_servers_inbound_series() -> None:
    view = tq.inbound("deploy", "bookstore", "bookstore-v1")
    assert view.total == "envoy_http_downstream_rq_total"
    assert 'envoy_http_conn_manager_prefix="inbound"' in view.matchers
    assert view.by == ("source_namespace", "deploy")
    success = tq.success_count(view, "1m")
    assert "offset 1m" in success
    assert (
        'label_replace(clamp_min(envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="inbound"'
        in (success)
    )
    assert 'source_pod=~"bookstore\\\\-v1(?:-' in success
    assert 'envoy_response_code_class="5"' in tq.failure_count(view, "1m")
    assert tq.latency(view, 0.9, "1m").startswith(
        "histogram_quantile(0.9, sum by (source_namespace, deploy, le)"
    )


def test_edges_are_client_side_series() -> None:
    to = tq.outbound("pod", "bookbuyer", "bookbuyer-0")
    assert to.total == "envoy_cluster_upstream_rq_total"
    assert to.by == ("destination_namespace", "destination_service")
    assert 'source_pod="bookbuyer-0"' in to.matchers
    callers = tq.callers("pod", "bookstore", ["bookstore-v1", "bookstore"])
    assert 'destination_service=~"bookstore|bookstore\\\\-v1"' in callers.matchers
    assert callers.by == ("source_namespace", "source_pod")
    everyone = tq.callers("ns", "bookstore", [])
    assert everyone.matchers == ('destination_namespace="bookstore"', 'destination_service!=""')
    assert tq.served("deploy", "bookstore", "bookstore-v1").startswith(
        'group by (source_namespace, local_service) (envoy_cluster_upstream_cx_total{local_service!=""'
    )


def test_members_are_sidecars_with_their_identity() -> None:
    assert tq.members("ns", "", "") == "group by (source_namespace) (envoy_server_live{})"
    assert tq.members("pod", "bookstore", "bookstore-v1-0") == (
        'group by (source_namespace, source_pod) (envoy_server_live{source_namespace="bookstore",'
        'source_pod="bookstore-v1-0"})'
    )
    assert 'source_namespace="bookstore"' not in tq.members("pod", "", "")


@pytest.mark.parametrize("text", ["Bad", "a b", 'x"}', "", "-x"])
def test_bad_names_and_kinds_are_refused(text: str) -> None:
    with pytest.raises(QueryError, match="bad name"):
        tq.name(text)
    with pytest.raises(QueryError, match="unknown resource 'services'"):
        tq.kind("services")
    with pytest.raises(QueryError, match="bad window"):
        tq.success_count(tq.inbound("pod", "a", "b"), "5x")
