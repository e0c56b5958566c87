"""MeshConfig `pruneUnreachableUpstreams`: each class gets only the services its identity
may reach; the outbound listener still matches every service, and their routes answer 403."""

from __future__ import annotations

from meshcp.compile import lds, rds
from meshcp.identity import Identity
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.state import MeshObject, MeshState
from meshcp.policy.build import build_policies
from meshcp.policy.types import ProxyPolicy
from tests.policy.mesh import RULE_BUY, Bookstore, namespace, pod, service, split, target

BUYER = Identity("bookbuyer", "bookbuyer")
THIEF = Identity("bookthief", "bookthief")


def _policies(*extra: MeshObject, prune: bool = True) -> dict[Identity, ProxyPolicy]:
    objects = [
        *Bookstore().objects(),
        target("bookstore", "buy", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY),
        split("bookstore", "s", "bookstore", ("bookstore-v1", 3), ("bookstore-v2", 1)),
        *extra,
        MeshConfig(prune_unreachable_upstreams=prune),
    ]
    policy = build_policies(MeshState().with_changes(objects))
    return {p.identity: p for p in policy.classes.values()}


def _services(policy: ProxyPolicy) -> set[str]:
    return {str(u.service) for u in policy.upstreams}


def test_a_client_gets_only_what_a_traffic_target_lets_it_reach() -> None:
    policies = _policies()
    assert _services(policies[BUYER]) == {
        "bookstore/bookstore",
        "bookstore/bookstore-v1",
        "bookstore/bookstore-v2",
    }
    assert _services(policies[THIEF]) == set()
    # The listener still matches every service, for both.
    every = {str(u.service) for u in policies[THIEF].matched_upstreams}
    assert "bookstore/warehouse" in every and "bookstore/bookstore" in every
    assert policies[BUYER].pruned and policies[BUYER].matched_upstreams == policies[THIEF].matched_upstreams


def test_clients_of_one_identity_share_one_tuple_of_upstreams() -> None:
    extra = [pod("bookbuyer", "bookbuyer-2", "bookbuyer", "10.244.1.9", app="other")]
    policy = build_policies(
        MeshState().with_changes(
            [*Bookstore().objects(), *extra, MeshConfig(prune_unreachable_upstreams=True)]
        )
    )
    buyers = [p for p in policy.classes.values() if p.identity == BUYER]
    assert len({id(p.upstreams) for p in buyers}) == 1


def test_a_permissive_destination_namespace_is_reachable_by_everyone() -> None:
    objects: list[MeshObject] = [
        namespace("open", permissive="true"),
        service("open", "web", "10.96.7.1", (80, "http"), app="web"),
    ]
    objects.append(pod("open", "web-0", "web", "10.244.7.1", app="web"))
    assert "open/web" in _services(_policies(*objects)[THIEF])


def test_without_pruning_every_client_gets_every_service() -> None:
    policies = _policies(prune=False)
    assert not policies[THIEF].pruned
    assert _services(policies[THIEF]) == _services(policies[BUYER])
    assert "bookstore/warehouse" in _services(policies[THIEF])


def test_pruned_routes_cover_every_listener_port_and_end_in_a_403() -> None:
    policies = _policies()
    thief_routes = {r.name: r for r in rds.outbound_routes(policies[THIEF])}
    # Every HTTP port the listener matches has its routes (a listener waits for them).
    assert set(thief_routes) == {"rds-outbound.14001", "rds-outbound.8080"}
    for route in thief_routes.values():
        assert [h.name for h in route.virtual_hosts] == ["denied"]
        (host,) = route.virtual_hosts
        assert host.domains == ["*"]
        assert host.routes[0].direct_response is not None and host.routes[0].direct_response.status == 403
    buyer = {r.name: r for r in rds.outbound_routes(policies[BUYER])}["rds-outbound.14001"]
    assert [h.name for h in buyer.virtual_hosts][-1] == "denied"
    assert len(buyer.virtual_hosts) == 4  # bookstore, -v1, -v2, then the 403
    # The TCP service has a chain in every listener; its cluster exists only where allowed.
    chains = {c.name for c in lds.outbound_listener(policies[THIEF]).filter_chains}
    assert "outbound:bookstore/warehouse|5432" in chains


def test_a_reachable_split_brings_its_backends_even_of_other_identities() -> None:
    """The apex's clusters route to the backends, whose own TrafficTargets may not name
    the client: their clusters and trust come with the apex (a missing secret would keep
    Envoy's clusters warming forever)."""
    extra: list[MeshObject] = [
        service("bookstore", "canary", "10.96.0.13", (14001, "http"), app="canary"),
        pod("bookstore", "canary-0", "canary", "10.244.2.9", app="canary"),
        split("bookstore", "s2", "bookstore-v1", ("bookstore-v1", 1), ("canary", 1)),
    ]
    services = _services(_policies(*extra)[BUYER])
    assert "bookstore/canary" in services
    assert "bookstore/canary" not in _services(_policies(*extra)[THIEF])
