"""MeshConfig `observability.enablePerRouteStats`: which HTTPRouteGroup matches each
upstream's routes count (those of the TrafficTargets to the servers, and of the split)."""

from __future__ import annotations

from meshcp._proto.envoy.config.route.v3 import RouteConfiguration
from meshcp._proto.google.protobuf import Any as AnyMessage
from meshcp.cache import Encoder, Resource, resource_types
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.smi import HTTPMatch, SplitMatch
from meshcp.model.state import MeshObject, MeshState
from meshcp.policy.build import build_policies
from meshcp.policy.types import RouteStat, Upstream
from meshcp.runtime.reconcile import Reconciler
from tests.policy.mesh import BUY, RULE_ALL, RULE_BUY, STOCK, Bookstore, routes, split, target

CANARY = HTTPMatch("canary", headers={"x-canary": "yes"})


def _upstreams(*extra: MeshObject, on: bool = True) -> dict[str, Upstream]:
    objects = [
        *Bookstore().objects(),
        *extra,
        MeshConfig(per_route_stats=on, prune_unreachable_upstreams=False),
    ]
    policy = build_policies(MeshState().with_changes(objects))
    first = next(iter(policy.classes.values()))
    return {f"{u.service}|{u.port}": u for u in first.upstreams}


def test_off_no_upstream_counts_routes() -> None:
    upstreams = _upstreams(
        target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_ALL), on=False
    )
    assert {u.route_stats for u in upstreams.values()} == {None}


def test_on_the_matches_a_target_to_the_servers_names_are_counted() -> None:
    upstreams = _upstreams(target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY))
    expected = (RouteStat("bookstore-routes", BUY),)
    assert upstreams["bookstore/bookstore|14001"].route_stats == expected
    assert upstreams["bookstore/bookstore-v1|14001"].route_stats == expected
    # The warehouse's identity is named by no target: only its catch-all counts.
    assert upstreams["bookstore/warehouse|8080"].route_stats == ()


def test_on_matches_are_counted_once_in_group_and_name_order() -> None:
    upstreams = _upstreams(
        target("bookstore", "a", "bookstore", [("bookbuyer", "bookbuyer")], RULE_ALL),
        target("bookstore", "b", "bookstore", [("bookthief", "bookthief")], RULE_BUY),
    )
    assert upstreams["bookstore/bookstore|14001"].route_stats == (
        RouteStat("bookstore-routes", STOCK),
        RouteStat("bookstore-routes", BUY),
    )


def test_on_a_split_brings_the_matches_it_applies_to() -> None:
    upstreams = _upstreams(
        routes("bookstore", "canary-routes", CANARY),
        split(
            "bookstore",
            "s",
            "bookstore",
            ("bookstore-v1", 1),
            ("bookstore-v2", 1),
            matches=(SplitMatch("HTTPRouteGroup", "canary-routes"),),
        ),
    )
    apex = upstreams["bookstore/bookstore|14001"]
    assert apex.split is not None and apex.split.matches == (CANARY,)
    assert apex.route_stats == (RouteStat("canary-routes", CANARY),)


def test_turning_it_on_changes_only_the_outbound_routes() -> None:
    """Over RDS alone: no listener, cluster or bootstrap changes, so no proxy restarts."""
    buy = target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY)
    reconciler = Reconciler(Encoder())

    def compiled(on: bool) -> dict[tuple[str, str], Resource]:
        objects = [
            *Bookstore().objects(),
            buy,
            MeshConfig(per_route_stats=on, prune_unreachable_upstreams=False),
        ]
        classes = reconciler.apply(MeshState().with_changes(objects))
        return {(r.type_url, r.name): r for c in classes for r in c.all_resources()}

    before = compiled(False)
    after = compiled(True)
    changed = sorted({key for key, resource in after.items() if before.get(key) is not resource})
    assert changed == [
        (resource_types.ROUTE, "rds-outbound.14001"),
        (resource_types.ROUTE, "rds-outbound.8080"),
    ]
    resource = after[(resource_types.ROUTE, "rds-outbound.14001")]
    routes = RouteConfiguration.parse(AnyMessage.parse(resource.body).value)
    hosts = {host.name: [route.stat_prefix for route in host.routes] for host in routes.virtual_hosts}
    assert hosts["bookstore/bookstore|14001"] == ["bookstore-routes/buy-a-book", "*/*"]
    assert hosts["bookstore/bookstore-v2|14001"] == ["bookstore-routes/buy-a-book", "*/*"]
