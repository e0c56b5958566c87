"""Work proportional to the change: the reconciler re-encodes only what a change touches.

Most tests run with pruning off (every proxy gets every service: the most each change
can touch); the last ones with the default, where a proxy gets only what it may reach."""

from __future__ import annotations

from typing import Any

import pytest

from meshcp._proto.envoy.config.cluster.v3 import Cluster
from meshcp.cache import Encoder, Resource, resource_types
from meshcp.compile import cds
from meshcp.model.state import MeshState
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.reconcile import Reconciler
from tests.policy.mesh import RULE_ALL, RULE_BUY, Bookstore, pod, service, split, target


async def reconciler() -> tuple[Reconciler, Encoder]:
    encoder = Encoder()
    return Reconciler(encoder), encoder


def state(echo_ip: str, *extra: object, prune: bool = False) -> MeshState:
    objects = [
        *Bookstore(prune=prune).objects(),
        pod("bookstore", "echo", "echo", echo_ip),
        service("bookstore", "echo", "10.96.0.30", (7000, "http")),
        *extra,
    ]
    return MeshState().with_changes(objects)  # type: ignore[arg-type]


def encoded(classes: list[ProxyClass]) -> dict[tuple[str, str], Resource]:
    return {(r.type_url, r.name): r for c in classes for r in c.all_resources()}


async def test_one_endpoint_change_re_encodes_one_load_assignment_and_no_listener() -> None:
    rec, encoder = await reconciler()
    before = encoded(rec.apply(state("10.244.5.1")))
    count = encoder.encodes
    after = encoded(rec.apply(state("10.244.5.2")))
    assert encoder.encodes - count == 1
    changed = [key for key, resource in after.items() if before.get(key) is not resource]
    assert changed == [(resource_types.ENDPOINT, "bookstore/echo|7000")]


async def test_a_new_traffic_target_recompiles_only_the_destination_inbound() -> None:
    rec, _ = await reconciler()
    before = encoded(rec.apply(state("10.244.5.1")))
    after = encoded(
        rec.apply(
            state("10.244.5.1", target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY))
        )
    )
    changed = sorted({key for key, resource in after.items() if before.get(key) is not resource})
    # The bookstore identity's inbound listener is untouched (RBAC lives in the routes).
    assert changed == [(resource_types.ROUTE, "rds-inbound.14001")]


async def test_unchanged_state_encodes_nothing() -> None:
    rec, encoder = await reconciler()
    rec.apply(state("10.244.5.1"))
    count = encoder.encodes
    rec.apply(state("10.244.5.1"))
    assert encoder.encodes == count


async def test_a_split_weight_change_re_encodes_routes_only() -> None:
    rec, encoder = await reconciler()
    before = encoded(
        rec.apply(
            state(
                "10.244.5.1", split("bookstore", "s", "bookstore", ("bookstore-v1", 1), ("bookstore-v2", 1))
            )
        )
    )
    count = encoder.encodes
    after = encoded(
        rec.apply(
            state(
                "10.244.5.1", split("bookstore", "s", "bookstore", ("bookstore-v1", 3), ("bookstore-v2", 1))
            )
        )
    )
    changed = sorted({key for key, resource in after.items() if before.get(key) is not resource})
    assert changed == [(resource_types.ROUTE, "rds-outbound.14001")]
    # Re-encoded: the apex's virtual host (as its own namespace and as the others see
    # it), the outbound routes of each client namespace filled from the encoded hosts,
    # and the outbound listener (its TCP chains could carry weights); no cluster:
    # weights are not a cluster input.
    policies = list(rec.policy.classes.values())
    namespaces = {p.identity.namespace for p in policies}
    http_ports = {u.port for u in policies[0].upstreams if u.is_http}
    assert encoder.encodes - count == 2 + len(namespaces) * len(http_ports) + 1


async def test_a_new_service_encodes_only_its_own_cluster_once_for_every_client() -> None:
    rec, encoder = await reconciler()
    before = rec.apply(state("10.244.5.1"))
    old = {
        (c.key, r.name): r for c in before for r in c.all_resources() if r.type_url == resource_types.CLUSTER
    }
    count = encoder.encodes
    extra = [
        pod("bookstore", "audit", "audit", "10.244.5.9"),
        service("bookstore", "audit", "10.96.0.31", (7100, "http")),
    ]
    after = rec.apply(state("10.244.5.1", *extra))
    old_keys = {c.key for c in before}
    new_clusters = {
        (c.key, r.name)
        for c in after
        if c.key in old_keys
        for r in c.all_resources()
        if r.type_url == resource_types.CLUSTER and old.get((c.key, r.name)) is not r
    }
    # Every existing class gets the new service's cluster and keeps every other one.
    assert new_clusters == {(key, "bookstore/audit|7100") for key in old_keys}
    # Whatever the client's identity, the same encoded cluster: one encode for all.
    audit = {
        id(r)
        for c in after
        for r in c.all_resources()
        if r.type_url == resource_types.CLUSTER and r.name == "bookstore/audit|7100"
    }
    assert len(audit) == 1
    # Re-encoding every class's clusters alone would take more encodes than the whole
    # change does (the new cluster, routes, listeners, the new class).
    refill = sum(1 for c in after for r in c.all_resources() if r.type_url == resource_types.CLUSTER)
    assert encoder.encodes - count < refill


async def test_classes_with_the_same_upstreams_share_their_pieces_across_changes() -> None:
    """Publishing a thousand classes must not cost a thousand copies: classes that call the
    same services hold the same endpoint and upstream cluster sets (whatever their
    identities), and keep them while unchanged."""
    rec = Reconciler(Encoder())
    first = rec.apply(state("10.244.5.1"))
    endpoint_sets = {id(s) for c in first for s in c.sets if s.type_url == resource_types.ENDPOINT}
    assert len(first) > 1 and len(endpoint_sets) == 1
    second = rec.apply(
        state("10.244.5.1", target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY))
    )
    assert {id(s) for c in second for s in c.sets if s.type_url == resource_types.ENDPOINT} == endpoint_sets

    def upstream_cluster_sets(classes: list[ProxyClass]) -> set[int]:  # EDS clusters only
        return {
            id(s)
            for c in classes
            for s in c.sets
            if s.type_url == resource_types.CLUSTER and all(r.endpoints for r in s)
        }

    assert len({c.identity for c in first}) > 1 and len(upstream_cluster_sets(first)) == 1
    assert upstream_cluster_sets(second) == upstream_cluster_sets(first)


async def test_pruned_a_new_traffic_target_reaches_the_source_and_the_destination_only() -> None:
    """With pruning, a TrafficTarget also changes what its source may reach: bookbuyer gets
    the bookstore's clusters, endpoints and routes; the bookstore its new inbound rule; no
    other class changes."""
    rec, _ = await reconciler()
    first = rec.apply(state("10.244.5.1", prune=True))
    before = {c.key: {(r.type_url, r.name): r for r in c.all_resources()} for c in first}
    allow = target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY)
    second = rec.apply(state("10.244.5.1", allow, prune=True))
    changed = {
        c.key.split("#")[0]
        for c in second
        if {(r.type_url, r.name): r for r in c.all_resources()} != before.get(c.key)
    }
    assert changed == {"bookbuyer/bookbuyer", "bookstore/bookstore"}
    buyer = next(c for c in second if c.identity.namespace == "bookbuyer")
    assert {r.name for r in buyer.all_resources() if r.type_url == resource_types.CLUSTER} >= {
        "bookstore/bookstore|14001",
        "bookstore/bookstore-v1|14001",
        "bookstore/bookstore-v2|14001",
    }


async def test_a_new_client_of_a_service_is_handed_its_encoded_clusters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Clusters do not depend on their client: a second client of the bookstore gets the
    clusters the first one's were encoded as, even after a round that changed no class's
    upstreams (where they were reused as a whole)."""
    compiled: list[str] = []
    original = cds.upstream_cluster

    def counting(*args: Any, **kwargs: Any) -> Cluster:
        cluster = original(*args, **kwargs)
        compiled.append(cluster.name)
        return cluster

    monkeypatch.setattr(cds, "upstream_cluster", counting)
    rec, _ = await reconciler()
    buyer = target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY)
    # The thief reaches the warehouse already: its upstreams will differ from the buyer's.
    warehouse = target("bookstore", "w", "warehouse", [("bookthief", "bookthief")], RULE_ALL)
    rec.apply(state("10.244.5.1", buyer, warehouse, prune=True))
    assert "bookstore/bookstore|14001" in compiled
    rec.apply(state("10.244.5.2", buyer, warehouse, prune=True))  # an endpoint: no cluster read
    compiled.clear()
    thief = target("bookstore", "t2", "bookstore", [("bookthief", "bookthief")], RULE_BUY)
    classes = rec.apply(state("10.244.5.2", buyer, warehouse, thief, prune=True))
    assert compiled == []
    clients = [c for c in classes if c.identity.namespace in ("bookbuyer", "bookthief")]
    held = [
        {r.name: r for r in c.all_resources() if r.type_url == resource_types.CLUSTER and r.endpoints}
        for c in clients
    ]
    assert len(held) == 2 and "bookstore/bookstore|14001" in held[0]
    assert held[0]["bookstore/bookstore|14001"] is held[1]["bookstore/bookstore|14001"]
