"""OSM's Retry and UpstreamTrafficSetting: where each lands, that a client never changes a
cluster's bytes, conflicts, and that a change re-encodes only what it touches."""

from __future__ import annotations

from typing import TypeVar

import betterproto2

from meshcp._proto.envoy.config.listener.v3 import Listener
from meshcp._proto.envoy.config.route.v3 import RouteConfiguration, VirtualHost
from meshcp._proto.envoy.extensions.filters.http.local_ratelimit.v3 import LocalRateLimit as HttpLimit
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import HttpConnectionManager
from meshcp._proto.envoy.extensions.filters.network.local_ratelimit.v3 import LocalRateLimit as TcpLimit
from meshcp._proto.google.protobuf import Any as AnyMessage
from meshcp.cache import Encoder, Resource, resource_types
from meshcp.compile import cds, lds, rds
from meshcp.compile.ratelimit import HTTP_LOCAL_RATE_LIMIT, NETWORK_LOCAL_RATE_LIMIT
from meshcp.identity import Identity
from meshcp.model.meta import Meta
from meshcp.model.osm_policy import (
    ConnectionSettings,
    HttpRateLimit,
    OutlierDetection,
    Retry,
    RetryPolicy,
    RouteRateLimit,
    ServiceName,
    TcpRateLimit,
    UpstreamTrafficSetting,
)
from meshcp.model.smi import IdentitySubject
from meshcp.model.state import MeshObject, MeshState
from meshcp.policy.build import MeshPolicy, build_policies
from meshcp.policy.types import ProxyPolicy
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.reconcile import Reconciler
from tests.policy.mesh import Bookstore

M = TypeVar("M", bound=betterproto2.Message)
STORE = "bookstore/bookstore|14001"
RETRY = RetryPolicy("5xx,reset", per_try_timeout=0.5, num_retries=3, backoff_base_interval=0.01)


def retry(name: str = "r", source: str = "bookbuyer", policy: RetryPolicy = RETRY) -> Retry:
    return Retry(
        Meta(name, "bookbuyer"),
        IdentitySubject(source, "bookbuyer"),
        (ServiceName("bookstore", "bookstore"),),
        policy,
    )


def setting(name: str = "s", **fields: object) -> UpstreamTrafficSetting:
    return UpstreamTrafficSetting(Meta(name, "bookstore"), "bookstore", **fields)  # type: ignore[arg-type]


LIMITS = setting(
    tcp_rate_limit=TcpRateLimit(5, 60, 1),
    http_rate_limit=HttpRateLimit(10, 1, 2, 503, (("x-limited", "1"),)),
    http_routes=(RouteRateLimit("/buy.*", HttpRateLimit(1, 3600)),),
)


def policies(*extra: MeshObject, prune: bool = False) -> MeshPolicy:
    return build_policies(MeshState().with_changes(Bookstore(extra=list(extra), prune=prune).objects()))


def of(policy: MeshPolicy, identity: str, namespace: str | None = None) -> ProxyPolicy:
    """The (first) class of the identity `namespace/identity` (namespace: the same name)."""
    wanted = Identity(namespace or identity, identity)
    return next(p for p in policy.classes.values() if p.identity == wanted)


def store_host(policy: ProxyPolicy) -> VirtualHost:
    (config,) = [r for r in rds.outbound_routes(policy) if r.name == "rds-outbound.14001"]
    (host,) = [h for h in config.virtual_hosts if h.name == STORE]
    return host


def test_a_retry_is_on_its_source_virtual_host_only() -> None:
    policy = policies(retry())
    buyer, thief = of(policy, "bookbuyer"), of(policy, "bookthief")
    found = store_host(buyer).retry_policy
    assert found is not None
    assert (found.retry_on, found.num_retries) == ("5xx,reset", 3)
    assert found.per_try_timeout is not None and found.per_try_timeout.total_seconds() == 0.5
    assert found.retry_back_off is not None and found.retry_back_off.base_interval is not None
    assert found.retry_back_off.base_interval.total_seconds() == 0.01
    assert store_host(thief).retry_policy is None
    # The client's retry never reaches its clusters: both classes get the same clusters.
    assert cds.upstream_specs(buyer.upstreams) == cds.upstream_specs(thief.upstreams)


def test_a_setting_shapes_the_service_cluster_for_every_client() -> None:
    connection = ConnectionSettings(
        max_connections=1,
        connect_timeout=0.25,
        max_requests=2,
        max_requests_per_connection=3,
        max_pending_requests=4,
    )
    outlier = OutlierDetection(
        consecutive_5xx=2, interval=1.0, base_ejection_time=5.0, max_ejection_percent=100
    )
    policy = policies(setting(connection=connection, outlier_detection=outlier))
    clusters = {
        identity: {c.name: c for c in cds.upstream_clusters(of(policy, identity))}
        for identity in ("bookbuyer", "bookthief")
    }
    cluster = clusters["bookbuyer"][STORE]
    assert cluster == clusters["bookthief"][STORE]
    assert cluster.connect_timeout is not None and cluster.connect_timeout.total_seconds() == 0.25
    assert cluster.circuit_breakers is not None
    (thresholds,) = cluster.circuit_breakers.thresholds
    limits = (thresholds.max_connections, thresholds.max_requests, thresholds.max_pending_requests)
    assert limits == (1, 2, 4)
    assert thresholds.max_retries is None  # not set: Envoy's default
    assert cluster.outlier_detection is not None
    assert (cluster.outlier_detection.consecutive_5xx, cluster.outlier_detection.max_ejection_percent) == (
        2,
        100,
    )
    assert (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in cluster.typed_extension_protocol_options
    )
    # The split backends behind the apex keep their own (no) settings.
    assert clusters["bookbuyer"]["bookstore/bookstore-v1|14001"].circuit_breakers is None


def _unpack(packed: AnyMessage | None, cls: type[M]) -> M:
    assert packed is not None
    return cls.parse(packed.value)


def _inbound(policy: ProxyPolicy) -> tuple[Listener, RouteConfiguration]:
    (routes,) = rds.inbound_routes(policy)
    return lds.inbound_listener(policy), routes


def test_local_rate_limits_are_on_the_destination_inbound_side() -> None:
    store = of(policies(LIMITS), "bookstore")
    listener, routes = _inbound(store)
    chains = {c.name: c for c in listener.filter_chains}
    chain = chains["inbound:bookstore/bookstore|14001|local"]
    assert [f.name for f in chain.filters] == [
        NETWORK_LOCAL_RATE_LIMIT,
        "envoy.filters.network.http_connection_manager",
    ]
    tcp_limit = _unpack(chain.filters[0].typed_config, TcpLimit)
    assert tcp_limit.token_bucket is not None
    assert (tcp_limit.token_bucket.max_tokens, tcp_limit.token_bucket.tokens_per_fill) == (6, 5)
    manager = _unpack(chain.filters[1].typed_config, HttpConnectionManager)
    names = [f.name for f in manager.http_filters]
    assert names == ["envoy.filters.http.rbac", HTTP_LOCAL_RATE_LIMIT, "envoy.filters.http.router"]
    host = next(h for h in routes.virtual_hosts if h.name == "bookstore/bookstore|14001|local")
    host_limit = _unpack(host.typed_per_filter_config[HTTP_LOCAL_RATE_LIMIT], HttpLimit)
    assert host_limit.status is not None and host_limit.status.code == 503
    assert [(h.header.key, h.header.value) for h in host_limit.response_headers_to_add if h.header] == [
        ("x-limited", "1")
    ]
    assert host_limit.filter_enforced is not None and host_limit.filter_enforced.default_value is not None
    assert host_limit.filter_enforced.default_value.numerator == 100
    first, catch_all = host.routes
    assert first.match is not None and first.match.safe_regex is not None
    assert first.match.safe_regex.regex == "/buy.*"
    route_limit = _unpack(first.typed_per_filter_config[HTTP_LOCAL_RATE_LIMIT], HttpLimit)
    assert route_limit.status is not None and route_limit.status.code == 429
    assert first.route == catch_all.route  # the same destination
    assert HTTP_LOCAL_RATE_LIMIT not in catch_all.typed_per_filter_config
    # Pods of other services get none of it.
    other_listener, _ = _inbound(of(policies(LIMITS), "warehouse", "bookstore"))
    assert all(f.name != NETWORK_LOCAL_RATE_LIMIT for c in other_listener.filter_chains for f in c.filters)


def test_conflicts_are_reported_on_each_and_none_applies() -> None:
    policy = policies(
        setting("a", http_rate_limit=HttpRateLimit(1, 1)),
        setting("b", http_rate_limit=HttpRateLimit(2, 1)),
        retry("r1"),
        retry("r2", policy=RetryPolicy("5xx")),
    )
    reasons = {str(p.ref): p.reason for p in policy.problems}
    assert (
        "several UpstreamTrafficSettings (a, b) name the host bookstore/bookstore"
        in reasons["UpstreamTrafficSetting bookstore/a"]
    )
    assert "UpstreamTrafficSetting bookstore/b" in reasons
    assert "several Retries" in reasons["Retry bookbuyer/r1"] and "Retry bookbuyer/r2" in reasons
    assert all(port.rate_limits is None for port in of(policy, "bookstore").inbound)
    assert store_host(of(policy, "bookbuyer")).retry_policy is None


def test_a_setting_for_a_missing_service_is_reported() -> None:
    missing = UpstreamTrafficSetting(Meta("s", "bookstore"), "nowhere", http_rate_limit=HttpRateLimit(1, 1))
    reasons = {str(p.ref): p.reason for p in policies(missing).problems}
    assert reasons["UpstreamTrafficSetting bookstore/s"].startswith(
        "host: Service bookstore/nowhere does not exist"
    )


def _encoded(classes: list[ProxyClass]) -> dict[tuple[str, str, str], Resource]:
    return {(str(c.identity), r.type_url, r.name): r for c in classes for r in c.all_resources()}


def _changed(extra: MeshObject, *, prune: bool) -> set[tuple[str, str, str]]:
    reconciler = Reconciler(Encoder())
    base = Bookstore(prune=prune).objects()
    before = _encoded(reconciler.apply(MeshState().with_changes(base)))
    after = _encoded(reconciler.apply(MeshState().with_changes([*base, extra])))
    return {key for key, resource in after.items() if before.get(key) is not resource}


def test_a_retry_re_encodes_only_its_source_outbound_routes() -> None:
    for prune in (False, True):
        changed = _changed(retry(), prune=prune)
        assert changed <= {("bookbuyer/bookbuyer", resource_types.ROUTE, "rds-outbound.14001")}, changed
        if not prune:  # pruned, bookbuyer reaches no bookstore without a TrafficTarget
            assert changed == {("bookbuyer/bookbuyer", resource_types.ROUTE, "rds-outbound.14001")}


def test_a_setting_re_encodes_only_the_service_cluster_and_its_inbound_side() -> None:
    changed = _changed(setting(connection=ConnectionSettings(max_connections=1)), prune=False)
    assert {(type_url, name) for _, type_url, name in changed} == {(resource_types.CLUSTER, STORE)}
    changed = _changed(LIMITS, prune=False)
    assert {(identity, name) for identity, _, name in changed} == {
        ("bookstore/bookstore", "inbound-listener"),
        ("bookstore/bookstore", "rds-inbound.14001"),
    }


def _bodies(classes: list[ProxyClass]) -> dict[tuple[str, str, str], bytes]:
    return {key: resource.body for key, resource in _encoded(classes).items()}


def test_every_round_of_adding_changing_and_removing_policies_equals_a_fresh_compile() -> None:
    """One reconciler (with its build memo and class takeover) through a sequence of
    changes gives, each round, exactly what a new reconciler compiles from scratch."""
    changed_limits = setting(http_rate_limit=HttpRateLimit(99, 60))
    steps: list[list[MeshObject]] = [
        [],
        [retry()],
        [retry(), LIMITS],
        [retry(), changed_limits],
        [retry(policy=RetryPolicy("reset")), changed_limits],
        [changed_limits],
        [],
    ]
    for prune in (False, True):
        reconciler = Reconciler(Encoder())
        state = MeshState().with_changes(Bookstore(prune=prune).objects())
        before: list[MeshObject] = []
        for extra in steps:
            # Made from the last state, as the store makes them: what did not change is
            # the same objects and indexes, so the memo takes it over.
            gone = [o.ref for o in before if o.ref not in {e.ref for e in extra}]
            state = state.with_changes(upserts=extra, deletes=gone)
            fresh = MeshState().with_changes(state.objects.values())
            assert _bodies(reconciler.apply(state)) == _bodies(Reconciler(Encoder()).apply(fresh)), extra
            before = extra
