"""Endpoints-only rounds: a change that moves endpoints is compiled from the last round
(O(change)) and must give exactly what a full compile of the same state gives.

Each case applies a base mesh, then a change, on one reconciler; a second reconciler
compiles the changed state from nothing. Every class's resources must be byte-equal, and
the round must have taken the path the change allows (`Reconciler.last_scope`)."""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property

import pytest

from meshcp.cache import Encoder, resource_types
from meshcp.model import state as state_module
from meshcp.model.core import EndpointSlice, Pod, SliceEndpoint, SlicePort
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.meta import Meta, ObjectRef
from meshcp.model.osm_policy import Egress, EgressPort
from meshcp.model.smi import HTTPMatch, IdentitySubject
from meshcp.model.state import MeshObject, MeshState
from meshcp.policy.build import build_policies
from meshcp.policy.build_memo import BuildMemo
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.reconcile import Reconciler
from meshcp.telemetry.metrics import Metrics
from tests.policy.mesh import BUY, RULE_ALL, Bookstore, namespace, pod, routes, service, split, target, tcp

Change = list[MeshObject]


def endpoint_slice(ns: str, svc: str, *endpoints: tuple[str, str, bool], name: str = "") -> EndpointSlice:
    return EndpointSlice(
        Meta(name or f"{svc}-abc", ns),
        svc,
        tuple(SliceEndpoint((ip,), ready, pod_name) for pod_name, ip, ready in endpoints),
        (SlicePort(14001, "http"),),
    )


def base(prune: bool = True) -> list[MeshObject]:
    return Bookstore(
        prune=prune,
        extra=[
            target(
                "bookstore",
                "t",
                "bookstore",
                [("bookbuyer", "bookbuyer"), ("bookthief", "bookthief")],
                RULE_ALL,
            ),
            split("bookstore", "s", "bookstore", ("bookstore-v1", 1), ("bookstore-v2", 1)),
            pod("bookstore", "bookstore-v1b", "bookstore", "10.244.2.3", app="bookstore", version="v1"),
            endpoint_slice(
                "bookstore",
                "bookstore-v1",
                ("bookstore-v1", "10.244.2.1", True),
                ("bookstore-v1b", "10.244.2.3", True),
            ),
            pod("bookstore", "db-0", "warehouse", "10.244.4.1", app="db"),
            service("bookstore", "db", "None", (5432, "tcp"), app="db"),
        ],
    ).objects()


def snapshot(classes: list[ProxyClass]) -> dict[tuple[str, str, str], bytes]:
    return {(c.key, r.type_url, r.name): r.body for c in classes for r in c.all_resources()}


CASES: dict[str, tuple[Change, str]] = {
    # selected (no slice) pod's IP and readiness: endpoints only
    "pod IP": (
        [pod("bookstore", "bookstore-v2", "bookstore", "10.244.7.2", app="bookstore", version="v2")],
        "endpoints",
    ),
    "pod not ready": (
        [
            pod(
                "bookstore",
                "bookstore-v2",
                "bookstore",
                "10.244.2.2",
                ready=False,
                app="bookstore",
                version="v2",
            )
        ],
        "endpoints",
    ),
    "slice address": (
        [
            endpoint_slice(
                "bookstore",
                "bookstore-v1",
                ("bookstore-v1", "10.244.8.1", True),
                ("bookstore-v1b", "10.244.2.3", True),
            )
        ],
        "endpoints",
    ),
    "slice endpoint not ready": (
        [
            endpoint_slice(
                "bookstore",
                "bookstore-v1",
                ("bookstore-v1", "10.244.2.1", True),
                ("bookstore-v1b", "10.244.2.3", False),
            )
        ],
        "endpoints",
    ),
    # a pod leaves a service's slice: its local services (inbound) change
    "slice drops a pod": (
        [endpoint_slice("bookstore", "bookstore-v1", ("bookstore-v1", "10.244.2.1", True))],
        "full",
    ),
    "pod label": ([pod("bookstore", "bookstore-v2", "bookstore", "10.244.2.2", app="bookstore")], "full"),
    "new pod": ([pod("bookstore", "bookstore-v3", "bookstore", "10.244.2.9", app="bookstore")], "full"),
    # a headless service's addresses are its pods' IPs: the outbound listener changes
    "headless pod IP": ([pod("bookstore", "db-0", "warehouse", "10.244.4.9", app="db")], "full"),
    "TrafficTarget": (
        [target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_ALL)],
        "full",
    ),
}


@pytest.mark.parametrize("prune", [True, False], ids=["pruned", "every-upstream"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_change_compiles_as_a_full_compile_would(case: str, prune: bool) -> None:
    change, scope = CASES[case]
    before = MeshState().with_changes(base(prune))
    after = before.with_changes(change)
    metrics = Metrics()
    incremental = Reconciler(Encoder(), metrics)
    first = snapshot(incremental.apply(before))
    got = snapshot(incremental.apply(after))
    assert incremental.last_scope == scope
    assert metrics.compiles.labels(scope)._value.get() == 1 + (scope == "full")
    want = snapshot(Reconciler(Encoder()).apply(after))
    assert got == want
    if scope == "endpoints":
        assert got != first  # each case moves something
        changed = {key[1] for key, body in got.items() if first.get(key) != body}
        assert changed == {resource_types.ENDPOINT}


async def test_untouched_classes_are_the_same_objects() -> None:
    """The publisher skips classes handed back as the same object: an endpoints-only round
    must hand back every class it did not touch as it was."""
    before = MeshState().with_changes(base())
    rec = Reconciler(Encoder())
    first = {c.key: c for c in rec.apply(before)}
    moved = pod("bookstore", "bookstore-v2", "bookstore", "10.244.7.2", app="bookstore", version="v2")
    second = {c.key: c for c in rec.apply(before.with_changes([moved]))}
    assert rec.last_scope == "endpoints"
    same = sorted(key for key in first if second[key] is first[key])
    replaced = sorted(key for key in first if second[key] is not first[key])
    # bookbuyer and bookthief reach bookstore (split to v2); the servers reach nothing
    assert [key.split("#")[0] for key in replaced] == ["bookbuyer/bookbuyer", "bookthief/bookthief"]
    assert same, "every class was replaced"


async def test_a_run_of_endpoint_changes_stays_equal_to_a_full_compile() -> None:
    """Twenty endpoints-only rounds in a row: the memo the fast path edits in place must
    not drift from what a full compile makes (and must not keep what it replaced)."""
    state = MeshState().with_changes(base())
    rec = Reconciler(Encoder())
    rec.apply(state)
    for step in range(20):
        ip = f"10.244.{7 + step % 3}.{step}"
        state = state.with_changes(
            [pod("bookstore", "bookstore-v2", "bookstore", ip, app="bookstore", version="v2")]
        )
        got = snapshot(rec.apply(state))
        assert rec.last_scope == "endpoints"
        assert got == snapshot(Reconciler(Encoder()).apply(state)), f"step {step}"
    held = {key for key in rec._memo.entries if isinstance(key, tuple) and key[0] == "eds"}
    assert len(held) == len({key[1:3] for key in held}), "replaced assignments are still held"
    # a full round after them takes the classes over with what they now hold, nothing older
    classes = rec.apply(state.with_changes([target("bookstore", "t2", "warehouse", BUYER, RULE_ALL)]))
    live = {id(part) for proxy_class in classes for part in proxy_class.sets}
    assert {id(found[1]) for found in rec._memo.sets.values()} <= live, "replaced pieces are still held"


async def test_a_state_not_derived_from_the_last_one_is_diffed() -> None:
    """A state built afresh (not by `with_changes` from the last one) is compared object by
    object: still endpoints-only when that is all that differs."""
    rec = Reconciler(Encoder())
    rec.apply(MeshState().with_changes(base()))
    moved = ObjectRef("Pod", "bookstore", "bookstore-v2")
    objects = [
        replace(obj, ip="10.244.7.2") if isinstance(obj, Pod) and obj.ref == moved else obj for obj in base()
    ]
    rec.apply(MeshState().with_changes(objects))
    assert rec.last_scope == "endpoints"


def test_states_take_over_the_indexes_a_change_did_not_touch() -> None:
    state = MeshState().with_changes(base())
    services, pods = state.services, state.pods
    after = state.with_changes([pod("bookstore", "bookstore-v2", "bookstore", "10.244.7.2", app="bookstore")])
    assert after.services is services
    assert after.pods is not pods and len(after.pods) == len(pods)
    assert after.changes_since(state) == {ObjectRef("Pod", "bookstore", "bookstore-v2")}
    assert after.changes_since(after) == frozenset()
    assert state.changes_since(after) == {ObjectRef("Pod", "bookstore", "bookstore-v2")}  # walked


BUYER = [("bookbuyer", "bookbuyer")]


def egress(name: str = "http", source: str = "bookbuyer", port: EgressPort | None = None) -> Egress:
    return Egress(
        Meta(name, "bookbuyer"),
        (IdentitySubject(source, source),),
        (port or EgressPort(80, "http"),),
        ("httpbin.org",),
        ("203.0.113.0/24",),
        ("egress-get",) if port is None else (),
    )


#: A run of changes of every kind, applied one after the other on one reconciler.
STEPS: list[tuple[str, Change, list[ObjectRef]]] = [
    ("split weight", [split("bookstore", "s", "bookstore", ("bookstore-v1", 9), ("bookstore-v2", 1))], []),
    (
        "target source added",
        [target("bookstore", "t2", "warehouse", [("bookbuyer", "bookbuyer")], RULE_ALL)],
        [],
    ),
    ("route group narrowed", [routes("bookstore", "bookstore-routes", BUY)], []),
    (
        "pod IP",
        [pod("bookstore", "bookstore-v2", "bookstore", "10.244.7.2", app="bookstore", version="v2")],
        [],
    ),
    ("tcp route", [tcp("bookstore", "tcp", 5432)], []),
    ("namespace permissive", [namespace("bookthief", permissive="true")], []),
    (
        "service port added",
        [
            service(
                "bookstore",
                "warehouse",
                "10.96.0.20",
                (5432, "tcp"),
                (8080, "http"),
                (9090, "http"),
                app="warehouse",
            )
        ],
        [],
    ),
    ("target deleted", [], [ObjectRef("TrafficTarget", "bookstore", "t2")]),
    ("split deleted", [], [ObjectRef("TrafficSplit", "bookstore", "s")]),
    ("pod deleted", [], [ObjectRef("Pod", "bookthief", "bookthief")]),
    ("prune off", [MeshConfig(prune_unreachable_upstreams=False)], []),
    ("per-route stats on", [MeshConfig(prune_unreachable_upstreams=True, per_route_stats=True)], []),
    ("target again", [target("bookstore", "t3", "bookstore", [("bookbuyer", "bookbuyer")], RULE_ALL)], []),
    # OSM Egress: the source's listener and local clusters, route groups named by `matches`
    ("egress added", [egress()], []),
    ("egress route group", [routes("bookbuyer", "egress-get", HTTPMatch("get", "/get", ("GET",)))], []),
    ("egress second source", [egress("tcp", "bookthief", EgressPort(5432, "tcp"))], []),
    ("egress deleted", [], [ObjectRef("Egress", "bookbuyer", "http")]),
    ("back to the start", [], []),
]


async def test_a_run_of_changes_of_every_kind_compiles_as_full_compiles_would() -> None:
    """Each step is taken over from the last round where it can be (same objects) and
    must give byte for byte what a reconciler compiling that state from nothing gives,
    problems included; so must the policy built with the memo and without."""
    start = MeshState().with_changes(base())
    state = start
    rec = Reconciler(Encoder())
    rec.apply(state)
    memo = BuildMemo()
    build_policies(state, None, memo)
    for name, upserts, deletes in STEPS:
        if name == "back to the start":
            state = state.with_changes(
                list(start.objects.values()), [ref for ref in state.objects if ref not in start.objects]
            )
        else:
            state = state.with_changes(upserts, deletes)
        got = snapshot(rec.apply(state))
        fresh = Reconciler(Encoder())
        assert got == snapshot(fresh.apply(state)), name
        assert rec.policy.problems == fresh.policy.problems, name
        assert build_policies(state, None, memo) == build_policies(state), name


async def test_a_class_nothing_touched_is_taken_over_as_it_was() -> None:
    """A TrafficTarget change recompiles the classes it touches: the others are the same
    objects, so the publisher skips them."""
    state = MeshState().with_changes(base())
    rec = Reconciler(Encoder())
    first = {c.key: c for c in rec.apply(state)}
    changed = target("bookstore", "t2", "warehouse", [("bookbuyer", "bookbuyer")], RULE_ALL)
    second = {c.key: c for c in rec.apply(state.with_changes([changed]))}
    assert rec.last_scope == "full"
    replaced = sorted(key.split("#")[0] for key in second if first.get(key) is not second[key])
    # warehouse's inbound now admits bookbuyer, and bookbuyer may now reach warehouse
    assert replaced == ["bookbuyer/bookbuyer", "bookstore/warehouse"]


async def test_unchanged_tables_stay_the_same_objects() -> None:
    """A split's weights move no pod to another class: the classification tables are the
    last round's objects, so the streams are not reclassified (`Rounds`)."""
    state = MeshState().with_changes(base())
    rec = Reconciler(Encoder())
    rec.apply(state)
    before = rec.policy
    rec.apply(
        state.with_changes([split("bookstore", "s", "bookstore", ("bookstore-v1", 9), ("bookstore-v2", 1))])
    )
    assert rec.last_scope == "full"
    assert rec.policy.pod_classes is before.pod_classes
    assert rec.policy.proxies is before.proxies
    assert rec.policy.classes is not before.classes  # the clients' upstreams changed
    assert rec.policy.classes.keys() == before.classes.keys()


async def test_a_full_round_after_endpoint_rounds_takes_the_mesh_walks_over() -> None:
    """Pods moving in between do not make the next full round (a TrafficTarget) walk
    the mesh again: the local-service index, the upstreams and the endpoints are taken
    over from the endpoints-only rounds."""
    state = MeshState().with_changes(base())
    rec = Reconciler(Encoder())
    rec.apply(state)
    memo = rec._pods
    computed = dict(memo.computed)
    for ip in ("10.244.7.2", "10.244.7.3"):
        state = state.with_changes(
            [pod("bookstore", "bookstore-v2", "bookstore", ip, app="bookstore", version="v2")]
        )
        rec.apply(state)
        assert rec.last_scope == "endpoints"
    state = state.with_changes([target("bookstore", "t2", "warehouse", BUYER, RULE_ALL)])
    got = snapshot(rec.apply(state))
    assert rec.last_scope == "full"
    for name in ("labels", "local", "upstreams", "all endpoints"):
        assert memo.computed[name] == computed[name], name
    assert got == snapshot(Reconciler(Encoder()).apply(state))


def test_every_state_index_names_the_kinds_it_is_computed_from() -> None:
    """A state made by `with_changes` takes over its parent's indexes by `_INDEX_KINDS`: an
    index missing from it would be recomputed every time, one listed with the wrong kinds
    would be taken over stale."""
    cached = {name for name, value in vars(MeshState).items() if isinstance(value, cached_property)}
    assert cached == set(state_module._INDEX_KINDS)
    kinds = {ref_kind for found in state_module._INDEX_KINDS.values() for ref_kind in found}
    assert {obj.ref.kind for obj in base()} <= kinds
