"""The sidecar bootstrap's stats: identity and destination labels, and the keep-list, as the
config says and as a real Envoy serves them in Prometheus text."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from meshcp._proto.envoy.config.bootstrap.v3 import Bootstrap, BootstrapStaticResources
from meshcp._proto.envoy.config.listener.v3 import FilterChain, Listener
from meshcp._proto.envoy.config.route.v3 import Route, RouteAction, RouteMatch
from meshcp._proto.envoy.type.matcher.v3 import StringMatcher
from meshcp.compile import naming, rds
from meshcp.model.smi import HTTPMatch
from meshcp.policy.types import RouteStat, ServiceKey, Upstream
from meshcp.sidecar.bootstrap import Workload, as_dict, bootstrap, stats_config
from meshcp.sidecar.envoy_parts import (
    HCM,
    LOOPBACK,
    network_filter,
    socket_address,
    static_cluster,
    static_http_manager,
)
from tests.support.envoy import REAL_ENVOY, EnvoyProcess
from tests.support.http import new_connection_per_request

WORKLOAD = Workload(namespace="bookstore", pod="bookstore-v1-7d9f-x2c4q", service_account="bookstore-sa")
IDENTITY_LABELS = {
    "source_namespace": "bookstore",
    "source_pod": "bookstore-v1-7d9f-x2c4q",
    "source_service_account": "bookstore-sa",
}
UPSTREAM = naming.cluster("bookwarehouse", "bookwarehouse", 8080)
ENVOY, NEEDS_ENVOY = REAL_ENVOY
LOCAL = naming.local_cluster("bookstore", "bookstore", 14001)
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def kept(config_matchers: list[StringMatcher], name: str) -> bool:
    """Whether the keep-list keeps the stat `name` (Envoy: RE2 full match, suffix, exact)."""
    for matcher in config_matchers:
        if matcher.safe_regex is not None and re.fullmatch(matcher.safe_regex.regex, name):
            return True
        if matcher.suffix is not None and name.endswith(matcher.suffix):
            return True
        if matcher.exact is not None and name == matcher.exact:
            return True
    return False


def keep_patterns() -> list[StringMatcher]:
    matcher = stats_config(**WORKLOAD).stats_matcher
    assert matcher is not None and matcher.inclusion_list is not None
    return matcher.inclusion_list.patterns


@pytest.mark.parametrize(
    "name",
    [
        f"cluster.{UPSTREAM}.upstream_rq_5xx",
        f"cluster.{UPSTREAM}.upstream_rq_2xx",
        f"cluster.{UPSTREAM}.upstream_rq_total",
        f"cluster.{UPSTREAM}.upstream_rq_time",
        f"cluster.{UPSTREAM}.upstream_cx_total",
        f"cluster.{UPSTREAM}.upstream_cx_active",
        "http.inbound.14001.downstream_rq_5xx",
        "http.inbound.14001.downstream_rq_total",
        "http.inbound.14001.downstream_rq_time",
        # What the lab's demo and tests read from admin /stats (the matcher filters it too).
        "listener.0.0.0.0_15003.ssl.handshake",
        f"cluster.{UPSTREAM}.ssl.handshake",
        f"cluster.{LOCAL}.upstream_cx_total",  # who serves what: the server side of an edge
        # Per-route stats (MeshConfig): kept always, they exist only when routes have a prefix.
        f"vhost.{UPSTREAM}.route.bookwarehouse-routes/restock.upstream_rq_2xx",
        f"vhost.{UPSTREAM}.route.bookwarehouse-routes/restock.upstream_rq_total",
        f"vhost.{UPSTREAM}.route.*/*.upstream_rq_time",
        "server.live",
        "control_plane.connected_state",
    ],
)
def test_the_keep_list_keeps_the_golden_metrics(name: str) -> None:
    assert kept(keep_patterns(), name)


@pytest.mark.parametrize(
    "name",
    [
        f"cluster.{UPSTREAM}.upstream_rq_503",  # per code: the class is enough
        f"cluster.{UPSTREAM}.external.upstream_rq_5xx",
        f"cluster.{UPSTREAM}.upstream_cx_connect_ms",
        f"cluster.{LOCAL}.upstream_rq_total",  # the inbound managers count the local app's calls
        f"cluster.{naming.METRICS_CLUSTER}.upstream_rq_total",  # scrapes are not traffic
        "http.prometheus.downstream_rq_total",
        "listener.0.0.0.0_15003.http.inbound.14001.downstream_rq_2xx",
        "cluster_manager.cds.update_success",
        f"vhost.{UPSTREAM}.route.bookwarehouse-routes/restock.upstream_rq_200",
        f"vhost.{UPSTREAM}.route.bookwarehouse-routes/restock.upstream_rq_retry",
        f"vhost.{UPSTREAM}.route.bookwarehouse-routes/restock.upstream_rq_completed",
    ],
)
def test_the_keep_list_drops_the_rest(name: str) -> None:
    assert not kept(keep_patterns(), name)


def test_identity_tags_come_first_and_the_baseline_has_no_keep_list() -> None:
    config = stats_config(**WORKLOAD, keep_list=False)
    assert config.stats_matcher is None
    assert {tag.tag_name: tag.fixed_value for tag in config.stats_tags[:3]} == IDENTITY_LABELS


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        name, labels, value = match.groups()
        samples.append((name, dict(LABEL.findall(labels or "")), float(value)))
    return samples


def sidecar_with_static_upstream(upstream_port: int) -> Bootstrap:
    """The sidecar bootstrap, with a static inbound-style HTTP listener (stat prefix
    `inbound.14001`, as `compile.lds` names it) routing to an upstream cluster named as ours
    instead of ADS: the stats config is what is under test."""
    config = bootstrap("node-1", "bookstore-sa.bookstore", LOOPBACK, 1, tls=None, **WORKLOAD, admin_port=0)
    manager = static_http_manager(
        "inbound.14001",
        [
            Route(match=RouteMatch(prefix="/local"), route=RouteAction(cluster=LOCAL)),
            Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster=UPSTREAM)),
        ],
    )
    listener = Listener(
        name="inbound-test",
        address=socket_address(LOOPBACK, 0),
        filter_chains=[FilterChain(filters=[network_filter(HCM, manager)])],
    )
    config.dynamic_resources = None
    config.static_resources = BootstrapStaticResources(
        listeners=[listener],
        clusters=[
            static_cluster(UPSTREAM, LOOPBACK, upstream_port),
            static_cluster(LOCAL, LOOPBACK, upstream_port),
        ],
    )
    return config


@asynccontextmanager
async def failing_upstream() -> AsyncIterator[int]:
    """An HTTP server on loopback answering 503 to /fail and 200 otherwise; yields its port."""

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=503 if request.path == "/fail" else 200, text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, LOOPBACK, 0)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@ENVOY
@NEEDS_ENVOY
async def test_envoy_labels_and_bounds_its_prometheus_series() -> None:
    async with failing_upstream() as upstream_port:
        config = as_dict(sidecar_with_static_upstream(upstream_port))
        async with EnvoyProcess(config) as envoy:
            await envoy.wait_live()
            port = await envoy.listener_port("inbound-test")
            async with new_connection_per_request() as client:
                for path in ["/ok", "/ok", "/fail", "/ok", "/fail", "/local"]:
                    async with client.get(f"http://127.0.0.1:{port}{path}") as response:
                        assert response.status == (503 if path == "/fail" else 200)

            samples: list[tuple[str, dict[str, str], float]] = []

            async def counted() -> bool:
                nonlocal samples
                samples = parse_prometheus(await envoy.admin_get("/stats/prometheus"))
                return any(
                    name == "envoy_cluster_upstream_rq_total" and value == 5 for name, _, value in samples
                )

            await envoy.wait_for(counted, what="5 upstream requests in /stats/prometheus")

    # Every series carries who the proxy is.
    assert samples
    for name, labels, _ in samples:
        assert {key: labels.get(key) for key in IDENTITY_LABELS} == IDENTITY_LABELS, name
    # Upstream cluster series carry the destination; the name keeps neither '/' nor '|'.
    destination = {
        "envoy_cluster_name": UPSTREAM,
        "destination_namespace": "bookwarehouse",
        "destination_service": "bookwarehouse",
        "destination_port": "8080",
    }
    cluster_series = [
        (name, labels, value)
        for name, labels, value in samples
        if name.startswith("envoy_cluster_") and labels.get("envoy_cluster_name") == UPSTREAM
    ]
    assert {name for name, _, _ in cluster_series} >= {
        "envoy_cluster_upstream_rq_xx",
        "envoy_cluster_upstream_rq_total",
        "envoy_cluster_upstream_cx_total",
        "envoy_cluster_upstream_cx_active",
        "envoy_cluster_upstream_rq_time_count",
    }
    for name, labels, _ in cluster_series:
        assert {key: labels.get(key) for key in destination} == destination, name
    # 5xx against the total: success is "not 5xx".
    by_class = {
        labels["envoy_response_code_class"]: value
        for name, labels, value in cluster_series
        if name == "envoy_cluster_upstream_rq_xx"
    }
    assert by_class == {"2": 3, "5": 2}
    # The inbound manager's series: the port is a label, not part of the name.
    inbound = {
        labels["envoy_response_code_class"]: value
        for name, labels, value in samples
        if name == "envoy_http_downstream_rq_xx"
        and labels.get("envoy_http_conn_manager_prefix") == "inbound"
        and labels.get("destination_port") == "14001"
    }
    assert inbound["5"] == 2 and inbound["2"] == 4
    # The local cluster: one series, naming the service served and no destination.
    local = [
        (name, labels, value) for name, labels, value in samples if labels.get("envoy_cluster_name") == LOCAL
    ]
    assert [(name, labels.get("local_service"), value) for name, labels, value in local] == [
        ("envoy_cluster_upstream_cx_total", "bookstore", 1)
    ]
    assert "destination_service" not in local[0][1]
    # Outside the keep-list: not exported (nor created).
    names = {name for name, _, _ in samples}
    assert "envoy_cluster_upstream_cx_connect_ms_count" not in names
    assert "envoy_cluster_upstream_rq" not in names  # per response code (envoy_response_code)
    assert not any(name.startswith("envoy_cluster_manager_") for name in names)
    assert len(samples) < 100


#: The HTTPRouteGroup matches the outbound routes to bookwarehouse count (per-route stats).
ROUTE_STATS = (
    RouteStat("bookwarehouse-routes", HTTPMatch("read", path_regex="/books", methods=("GET",))),
    RouteStat("bookwarehouse-routes", HTTPMatch("restock", path_regex="/restock", methods=("POST",))),
)


def sidecar_with_compiled_outbound_routes(upstream_port: int, route_stats: bool) -> Bootstrap:
    """The sidecar bootstrap with a static HTTP listener named as the outbound managers
    are (`outbound.<port>`) whose routes are `compile.rds`'s for an upstream
    bookwarehouse, with or without per-route stats, inline instead of over RDS."""
    config = bootstrap("node-1", "bookstore-sa.bookstore", LOOPBACK, 1, tls=None, **WORKLOAD, admin_port=0)
    upstream = Upstream(
        ServiceKey("bookwarehouse", "bookwarehouse"),
        8080,
        "http",
        ("10.96.0.10",),
        (),
        route_stats=ROUTE_STATS if route_stats else None,
    )
    manager = static_http_manager("outbound.8080", [])
    manager.route_config = rds.outbound_route(8080, [rds.outbound_virtual_host(upstream, "bookstore")])
    listener = Listener(
        name="outbound-test",
        address=socket_address(LOOPBACK, 0),
        filter_chains=[FilterChain(filters=[network_filter(HCM, manager)])],
    )
    config.dynamic_resources = None
    config.static_resources = BootstrapStaticResources(
        listeners=[listener], clusters=[static_cluster(UPSTREAM, LOOPBACK, upstream_port)]
    )
    return config


@ENVOY
@NEEDS_ENVOY
@pytest.mark.parametrize("route_stats", [True, False], ids=["on", "off"])
async def test_envoy_counts_per_route_series_with_route_labels_only_when_routes_have_a_prefix(
    route_stats: bool,
) -> None:
    requests = [("GET", "/books"), ("GET", "/books/1"), ("POST", "/restock"), ("GET", "/fail"), ("GET", "/")]
    async with failing_upstream() as upstream_port:
        config = as_dict(sidecar_with_compiled_outbound_routes(upstream_port, route_stats))
        async with EnvoyProcess(config) as envoy:
            await envoy.wait_live()
            port = await envoy.listener_port("outbound-test")
            async with new_connection_per_request() as client:
                for method, path in requests:
                    url = f"http://127.0.0.1:{port}{path}"
                    headers = {"Host": "bookwarehouse.bookwarehouse:8080"}
                    async with client.request(method, url, headers=headers) as response:
                        assert response.status == (503 if path == "/fail" else 200)

            samples: list[tuple[str, dict[str, str], float]] = []

            async def counted() -> bool:
                nonlocal samples
                samples = parse_prometheus(await envoy.admin_get("/stats/prometheus"))
                return any(
                    name == "envoy_cluster_upstream_rq_total" and value == len(requests)
                    for name, _, value in samples
                )

            await envoy.wait_for(counted, what="5 upstream requests in /stats/prometheus")

    route_series = [
        (name, labels, value) for name, labels, value in samples if name.startswith("envoy_vhost")
    ]
    if not route_stats:
        assert route_series == []
        return
    # Clean names: the virtual host and the prefix are labels, never part of the name.
    assert {name for name, _, _ in route_series} == {
        "envoy_vhost_route_upstream_rq_xx",
        "envoy_vhost_route_upstream_rq_total",
        "envoy_vhost_route_upstream_rq_time_bucket",
        "envoy_vhost_route_upstream_rq_time_sum",
        "envoy_vhost_route_upstream_rq_time_count",
    }
    destination = {
        "destination_namespace": "bookwarehouse",
        "destination_service": "bookwarehouse",
        "destination_port": "8080",
        **IDENTITY_LABELS,
    }
    for name, labels, _ in route_series:
        assert {key: labels.get(key) for key in destination} == destination, name
    totals = {
        (labels["route_group"], labels["route_match"]): value
        for name, labels, value in route_series
        if name == "envoy_vhost_route_upstream_rq_total"
    }
    # The catch-all route ("*") counts what no HTTPRouteGroup match takes.
    assert totals == {
        ("bookwarehouse-routes", "read"): 2,
        ("bookwarehouse-routes", "restock"): 1,
        ("*", "*"): 2,
    }
    by_class = {
        (labels["route_match"], labels["envoy_response_code_class"]): value
        for name, labels, value in route_series
        if name == "envoy_vhost_route_upstream_rq_xx"
    }
    assert by_class == {("read", "2"): 2, ("restock", "2"): 1, ("*", "2"): 1, ("*", "5"): 1}
