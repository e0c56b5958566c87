"""Per-route stats in the outbound routes (MeshConfig `observability.enablePerRouteStats`):
a route per counted HTTPRouteGroup match, each with a stat prefix, acting as the catch-all
does; off, the routes are as they were (no stat prefix anywhere)."""

from __future__ import annotations

from meshcp._proto.envoy.config.route.v3 import Route, RouteAction
from meshcp.compile import http_routes, naming, rds
from meshcp.model.smi import HTTPMatch
from meshcp.policy.types import RouteStat, ServiceKey, SplitRoute, Upstream

APEX = ServiceKey("bookstore", "bookstore")
V1 = ServiceKey("bookstore", "bookstore-v1")
V2 = ServiceKey("bookstore", "bookstore-v2")
BUY = HTTPMatch("buy-a-book", path_regex=".*a-book.*new", methods=("GET",))
BOUGHT = HTTPMatch("books-bought", path_regex="/books-bought", methods=("GET",))
CANARY = HTTPMatch("canary", headers={"x-canary": "yes"})
GROUP = "bookstore-service-routes"


def _upstream(split: SplitRoute | None = None, route_stats: tuple[RouteStat, ...] | None = None) -> Upstream:
    return Upstream(APEX, 14001, "http", ("10.96.0.10",), (), split, route_stats)


def _prefixes(routes: list[Route]) -> list[str]:
    return [route.stat_prefix for route in routes]


def _target(action: RouteAction | None) -> str | list[str]:
    """The cluster a route sends to, or its weighted clusters."""
    assert action is not None
    if action.weighted_clusters is not None:
        return [c.name for c in action.weighted_clusters.clusters]
    return action.cluster or ""


def test_off_no_route_carries_a_stat_prefix() -> None:
    split = SplitRoute(((V1, 7500), (V2, 2500)), (CANARY,))
    for upstream in (_upstream(), _upstream(split)):
        host = rds.outbound_virtual_host(upstream, "bookstore")
        assert _prefixes(host.routes) == [""] * len(host.routes)


def test_on_each_counted_match_gets_a_route_before_the_catch_all_with_the_same_action() -> None:
    stats = (RouteStat(GROUP, BOUGHT), RouteStat(GROUP, BUY))
    host = rds.outbound_virtual_host(_upstream(route_stats=stats), "bookstore")
    assert _prefixes(host.routes) == [f"{GROUP}/books-bought", f"{GROUP}/buy-a-book", "*/*"]
    assert [route.match for route in host.routes] == [
        http_routes.route_match(BOUGHT),
        http_routes.route_match(BUY),
        http_routes.route_match(None),
    ]
    cluster = naming.cluster("bookstore", "bookstore", 14001)
    assert [_target(route.route) for route in host.routes] == [cluster] * 3


def test_on_without_matches_only_the_catch_all_counts() -> None:
    host = rds.outbound_virtual_host(_upstream(route_stats=()), "bookstore")
    assert _prefixes(host.routes) == ["*/*"]


def test_on_a_split_keeps_its_routes_first_and_its_match_is_counted_once() -> None:
    # The split applies to CANARY only: its route is weighted and comes first; a target's
    # match equal to it would never be reached, so it gets no route of its own.
    split = SplitRoute(((V1, 7500), (V2, 2500)), (CANARY,))
    stats = (RouteStat("canary-routes", CANARY), RouteStat(GROUP, BUY))
    host = rds.outbound_virtual_host(_upstream(split, stats), "bookstore")
    assert _prefixes(host.routes) == ["canary-routes/canary", f"{GROUP}/buy-a-book", "*/*"]
    weighted = [
        naming.cluster("bookstore", "bookstore-v1", 14001),
        naming.cluster("bookstore", "bookstore-v2", 14001),
    ]
    apex = naming.cluster("bookstore", "bookstore", 14001)
    assert [_target(route.route) for route in host.routes] == [weighted, apex, apex]


def test_on_a_split_of_all_traffic_splits_the_counted_routes_too() -> None:
    split = SplitRoute(((V1, 7500), (V2, 2500)))
    host = rds.outbound_virtual_host(_upstream(split, (RouteStat(GROUP, BUY),)), "bookstore")
    weighted = [
        naming.cluster("bookstore", "bookstore-v1", 14001),
        naming.cluster("bookstore", "bookstore-v2", 14001),
    ]
    assert [_target(route.route) for route in host.routes] == [weighted, weighted]
    assert _prefixes(host.routes) == [f"{GROUP}/buy-a-book", "*/*"]


def test_the_prefix_is_one_stat_name_token() -> None:
    # Envoy's tags split stat names at '.': a group `books.v1` would break the labels.
    assert rds.route_stat_prefix("books.v1", "buy a.book") == "books_v1/buy_a_book"
    assert rds.route_stat_prefix(rds.ANY_ROUTE, rds.ANY_ROUTE) == "*/*"
    assert rds.route_stat_prefix("routes", "get/books") == "routes/get_books"


def test_the_variants_of_every_client_namespace_count_alike() -> None:
    own, other = rds.outbound_host_variants(_upstream(route_stats=(RouteStat(GROUP, BUY),)))
    assert _prefixes(own.routes) == _prefixes(other.routes) == [f"{GROUP}/buy-a-book", "*/*"]
