"""The PromQL of `meshcp stat` and `meshcp edges`, as pure functions of what is asked."""

from __future__ import annotations

import re

import pytest

from meshcp.kpi import queries
from meshcp.kpi.queries import QueryError, Resource, Selection


def _stat(kind: str, name: str = "", namespace: str = "", **extra: Resource | str) -> dict[str, str]:
    return queries.stat_queries(Selection(Resource(kind, name, namespace), **extra))  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["30s", "1m", "1h30m", "250ms", "2d"])
def test_windows_are_prometheus_durations(text: str) -> None:
    assert queries.window(text) == text


@pytest.mark.parametrize("text", ["5x", "", "1", "m", "1 m", "-1m", "1m]"])
def test_bad_windows_are_refused(text: str) -> None:
    with pytest.raises(QueryError, match="bad window"):
        queries.window(text)


def test_kinds_and_aliases() -> None:
    assert queries.stat_kind("deployment") == "deploy"
    assert queries.stat_kind("svc") == "svc"
    assert queries.edge_kind("ns") == "ns"
    with pytest.raises(QueryError, match="unknown kind 'foo'"):
        queries.stat_kind("foo")
    with pytest.raises(QueryError, match="unknown kind"):
        queries.edge_kind("svc")


def test_every_column_has_a_query_and_uses_the_window() -> None:
    found = _stat("pod", "bookbuyer-0", "bookbuyer", window="5m")
    assert set(found) == {
        "success",
        "rps",
        "latency_p50",
        "latency_p95",
        "latency_p99",
        "tcp_conn",
        "requests",
    }
    for column in ("rps", "latency_p50"):
        assert "[5m]" in found[column]
    assert " offset 5m " in found["success"]
    selector = 'destination_service!="",source_namespace="bookbuyer",source_pod="bookbuyer-0"'
    assert found["rps"] == (
        f"sum by (source_namespace, source_pod) (rate(envoy_cluster_upstream_rq_total{{{selector}}}[5m]))"
    )
    assert found["tcp_conn"] == (
        f"sum by (source_namespace, source_pod) (envoy_cluster_upstream_cx_active{{{selector}}})"
    )


def test_success_is_not_5xx_and_survives_no_5xx_series() -> None:
    success = _stat("svc", "bookstore", "bookstore")["success"]
    assert 'envoy_response_code_class="5"' in success
    assert success.startswith("1 - ((")
    # A row without any 5xx series keeps its rate through `or total * 0`.
    assert ") * 0) / (" in success
    assert 'envoy_response_code_class="4"' not in success
    # A 5xx series born inside the window counts from zero (Envoy creates it at the first
    # 5xx), and a restart counts no negative growth.
    failed = 'envoy_cluster_upstream_rq_xx{destination_service!="",destination_namespace="bookstore",'
    failed += 'destination_service="bookstore",envoy_response_code_class="5"}'
    assert f"clamp_min({failed} - ({failed} offset 1m or {failed} * 0), 0)" in success


def test_latency_quantiles_from_upstream_rq_time_buckets() -> None:
    found = _stat("ns", "bookbuyer", "bookbuyer")
    for quantile, column in ((0.5, "latency_p50"), (0.95, "latency_p95"), (0.99, "latency_p99")):
        assert found[column].startswith(f"histogram_quantile({quantile:g}, sum by (source_namespace, le) (")
        assert "envoy_cluster_upstream_rq_time_bucket{" in found[column]


def test_svc_selects_what_is_sent_to_it_and_pod_what_it_sends() -> None:
    svc = _stat("svc", "bookstore-v1", "bookstore")["rps"]
    assert 'destination_namespace="bookstore",destination_service="bookstore-v1"' in svc
    assert "source_" not in svc.split("(", 2)[2]
    assert "sum by (destination_namespace, destination_service)" in svc
    ns = _stat("ns", "bookthief", "bookthief")["rps"]
    assert 'source_namespace="bookthief"' in ns


def test_from_and_to_narrow_callers_and_callees() -> None:
    found = _stat(
        "svc",
        "",
        "bookstore",
        source=Resource("deploy", "bookbuyer", "bookbuyer"),
    )["rps"]
    assert 'destination_namespace="bookstore"' in found
    assert 'source_namespace="bookbuyer",source_pod=~"bookbuyer(?:-' in found
    to = _stat("pod", "", "bookbuyer", destination=Resource("svc", "bookstore", "bookstore"))["rps"]
    assert (
        'source_namespace="bookbuyer",destination_namespace="bookstore",destination_service="bookstore"' in to
    )
    with pytest.raises(QueryError, match="--to takes svc or ns"):
        _stat("pod", destination=Resource("pod", "x", "y"))
    with pytest.raises(QueryError, match="--from takes pod, deploy or ns"):
        _stat("svc", source=Resource("svc", "x", "y"))


def test_resource_arguments() -> None:
    assert queries.resource("deploy/bookbuyer", "bookbuyer") == Resource("deploy", "bookbuyer", "bookbuyer")
    assert queries.resource("ns/bookstore", "other") == Resource("ns", "bookstore", "bookstore")
    assert queries.resource("svc", "bookstore") == Resource("svc", "", "bookstore")
    with pytest.raises(QueryError, match="bad name"):
        queries.resource('svc/a"b', "ns")


@pytest.mark.parametrize(
    ("pod", "deploy"),
    [
        ("bookbuyer-0", "bookbuyer"),
        ("bookstore-v1-0", "bookstore-v1"),
        ("bookstore-v2-12", "bookstore-v2"),
        ("bookstore-7d9c5f6b4-x2kq9", "bookstore"),
        ("bookstore-v1-5b8d6c7f9d-w4z8n", "bookstore-v1"),
        ("web", "web"),
    ],
)
def test_deploy_naming_rule(pod: str, deploy: str) -> None:
    assert queries.deploy_of(pod) == deploy
    # The filter of a named deploy matches its pods, not those of a longer-named deploy.
    matcher = queries.DEPLOY_POD.replace("(.+?)", re.escape(deploy), 1)
    assert re.fullmatch(matcher, pod)
    assert not re.fullmatch(queries.DEPLOY_POD.replace("(.+?)", "bookstore", 1), "bookstore-v1-0")


def test_deploy_rows_are_grouped_by_a_relabelled_source_pod() -> None:
    rps = _stat("deploy", "", "bookbuyer")["rps"]
    assert rps.startswith("sum by (source_namespace, deploy) (label_replace(rate(")
    assert '"deploy", "$1", "source_pod"' in rps


def test_label_values_are_quoted() -> None:
    found = queries.matchers(Selection(Resource("ns", "", 'a"b')))
    assert 'source_namespace="a\\"b"' in found


def test_edges_query() -> None:
    everything = queries.edges("", "1m")
    assert "increase(envoy_cluster_upstream_cx_total" in everything
    assert "envoy_cluster_upstream_cx_active" in everything
    assert everything.endswith("> 0)")
    labels = (
        "source_namespace, source_pod, source_service_account, destination_namespace, destination_service"
    )
    assert f"sum by ({labels})" in everything
    scoped = queries.edges("bookstore", "30s")
    assert 'source_namespace="bookstore"' in scoped
    assert 'destination_namespace="bookstore"' in scoped
    assert ") or (" in scoped
    assert "[30s]" in scoped


def test_trafficsplit_rows_are_not_stat_queries() -> None:
    """A split's leaves are read as services (`report.split_rows`), never as a kind of stat."""
    with pytest.raises(QueryError):
        queries.stat_queries(Selection(Resource("trafficsplit", "", "bookstore")))
