"""SMI semantics of docs/smi-compiler.md, table by table: who may reach what."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshcp.identity import Identity
from meshcp.model.core import Pod
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.meta import Meta, ObjectRef, frozen_map
from meshcp.model.smi import SplitMatch, TargetRule
from meshcp.model.state import MeshState, Problem
from meshcp.policy.build import MeshPolicy, build_policies
from meshcp.policy.membership import PROXY_UUID_LABEL
from meshcp.policy.types import InboundPort, ServiceKey, Upstream
from tests.policy.mesh import BUY, RULE_ALL, RULE_BUY, STOCK, Bookstore, namespace, split, target, tcp

BUYER = Identity("bookbuyer", "bookbuyer")
THIEF = Identity("bookthief", "bookthief")
STORE = Identity("bookstore", "bookstore")
APEX = ServiceKey("bookstore", "bookstore")


def inbound(policy: MeshPolicy, ns: str, pod: str, service: str, port: int) -> InboundPort:
    key = policy.pod_classes[(ns, pod)]
    (found,) = [p for p in policy.classes[key].inbound if p.service.name == service and p.port == port]
    return found


def allowed(port: InboundPort) -> dict[str, set[Identity]]:
    """HTTP match name ('*' for all requests) → identities allowed."""
    return {(r.match.name if r.match else "*"): set(r.sources) for r in port.http_rules}


def upstream(policy: MeshPolicy, service: str, port: int) -> Upstream:
    """The mesh's view of a service port (what a class that may reach it gets)."""
    (found,) = [u for u in policy.upstreams if u.service.name == service and u.port == port]
    return found


def build(*extra: object, permissive: bool = False) -> MeshPolicy:
    return build_policies(Bookstore(list(extra), permissive).state())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("targets", "expected"),
    [
        pytest.param([], {}, id="default deny: no TrafficTarget, nobody"),
        pytest.param(
            [target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY)],
            {"buy-a-book": {BUYER}},
            id="allow one match to one source",
        ),
        pytest.param(
            [target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_ALL)],
            {"buy-a-book": {BUYER}, "books-bought": {BUYER}},
            id="omitted matches mean every match of the group",
        ),
        pytest.param(
            [
                target("bookstore", "t1", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY),
                target("bookstore", "t2", "bookstore", [("bookthief", "bookthief")], RULE_BUY),
            ],
            {"buy-a-book": {BUYER, THIEF}},
            id="targets are additive",
        ),
        pytest.param(
            [target("bookstore", "t", "warehouse", [("bookbuyer", "bookbuyer")], RULE_BUY)],
            {},
            id="a target for another destination does not apply",
        ),
        pytest.param(
            [target("bookbuyer", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_BUY)],
            {},
            id="a target lives in the destination's namespace",
        ),
        pytest.param(
            [
                target(
                    "bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], TargetRule("TCPRoute", "all")
                )
            ],
            {"*": {BUYER}},
            id="a TCPRoute alone allows all HTTP on its ports",
        ),
    ],
)
def test_http_access(targets: list[object], expected: dict[str, set[Identity]]) -> None:
    policy = build(*targets, tcp("bookstore", "all"))
    port = inbound(policy, "bookstore", "bookstore-v1", "bookstore", 14001)
    assert allowed(port) == expected


def test_tcp_route_intersects_http_routes_by_port() -> None:
    policy = build(
        tcp("bookstore", "only-8080", 8080),
        target(
            "bookstore",
            "t",
            "warehouse",
            [("bookbuyer", "bookbuyer")],
            TargetRule("TCPRoute", "only-8080"),
            RULE_BUY,
        ),
    )
    http = inbound(policy, "bookstore", "warehouse", "warehouse", 8080)
    database = inbound(policy, "bookstore", "warehouse", "warehouse", 5432)
    assert allowed(http) == {"buy-a-book": {BUYER}}
    assert database.tcp_sources == frozenset()  # port 5432 is not in the TCPRoute


def test_tcp_port_needs_a_tcp_route() -> None:
    policy = build(
        tcp("bookstore", "db", 5432),
        target("bookstore", "http-only", "warehouse", [("bookthief", "bookthief")], RULE_ALL),
        target("bookstore", "db", "warehouse", [("bookbuyer", "bookbuyer")], TargetRule("TCPRoute", "db")),
    )
    database = inbound(policy, "bookstore", "warehouse", "warehouse", 5432)
    assert database.tcp_sources == {BUYER}
    assert not database.any_source
    # The TCPRoute (port 5432) does not cover 8080; the HTTPRouteGroup target does.
    assert allowed(inbound(policy, "bookstore", "warehouse", "warehouse", 8080)) == {
        "buy-a-book": {THIEF},
        "books-bought": {THIEF},
    }


def test_empty_tcp_route_ports_mean_all_ports() -> None:
    policy = build(
        tcp("bookstore", "any"),
        target("bookstore", "t", "warehouse", [("bookbuyer", "bookbuyer")], TargetRule("TCPRoute", "any")),
    )
    assert inbound(policy, "bookstore", "warehouse", "warehouse", 5432).tcp_sources == {BUYER}
    assert allowed(inbound(policy, "bookstore", "warehouse", "warehouse", 8080)) == {"*": {BUYER}}


@pytest.mark.parametrize(
    ("mesh_permissive", "annotation", "expect_open"),
    [(False, None, False), (True, None, True), (True, "false", False), (False, "true", True)],
)
def test_permissive_mode_and_namespace_override(
    mesh_permissive: bool, annotation: str | None, expect_open: bool
) -> None:
    objects = Bookstore(permissive=mesh_permissive).objects()
    objects = [o for o in objects if getattr(o, "ref", None) != namespace("bookstore").ref]
    objects.append(namespace("bookstore", permissive=annotation))
    policy = build_policies(MeshState().with_changes(objects))
    port = inbound(policy, "bookstore", "bookstore-v1", "bookstore", 14001)
    assert port.any_source is expect_open
    assert (allowed(port) == {"*": set()}) is expect_open


def test_invalid_objects_are_reported_and_the_rest_compiles() -> None:
    policy = build(
        target(
            "bookstore",
            "broken",
            "bookstore",
            [("bookbuyer", "bookbuyer")],
            TargetRule("HTTPRouteGroup", "nope"),
        ),
        target(
            "bookstore",
            "bad-match",
            "bookstore",
            [("bookbuyer", "bookbuyer")],
            TargetRule("HTTPRouteGroup", "bookstore-routes", ("no-such-match", "buy-a-book")),
        ),
        target("bookstore", "udp", "bookstore", [("bookbuyer", "bookbuyer")], TargetRule("UDPRoute", "dns")),
    )
    reasons = {(p.ref.name, p.reason) for p in policy.problems}
    assert ("broken", "HTTPRouteGroup bookstore/nope does not exist; rule skipped") in reasons
    assert (
        "bad-match",
        "HTTPRouteGroup bookstore/bookstore-routes has no match named 'no-such-match'",
    ) in reasons
    assert ("udp", "UDPRoute bookstore/dns is not supported; rule skipped") in reasons
    assert allowed(inbound(policy, "bookstore", "bookstore-v1", "bookstore", 14001)) == {
        "buy-a-book": {BUYER}
    }


def test_split_weights_are_relative_and_zero_is_allowed() -> None:
    policy = build(split("bookstore", "s", "bookstore", ("bookstore-v1", 0.75), ("bookstore-v2", 0.25)))
    route = upstream(policy, "bookstore", 14001).split
    assert route is not None
    assert [(b.name, w) for b, w in route.backends] == [("bookstore-v1", 7500), ("bookstore-v2", 2500)]
    zero = build(split("bookstore", "s", "bookstore", ("bookstore-v1", 3), ("bookstore-v2", 0))).problems
    assert zero == ()


@pytest.mark.parametrize(
    ("splits", "reason"),
    [
        (
            [split("bookstore", "s", "bookstore", ("bookstore-v1", 0), ("bookstore-v2", 0))],
            "all backend weights are zero; traffic goes to the apex service",
        ),
        (
            [split("bookstore", "s", "bookstore", ("bookstore-v9", 1))],
            "backend service bookstore/bookstore-v9 does not exist",
        ),
        (
            [split("bookstore", "s", "bookstore", ("warehouse", 1))],
            "backend bookstore/warehouse lacks the apex port(s) [14001]",
        ),
        (
            [split("bookstore", "s", "nothing", ("bookstore-v1", 1))],
            "apex service bookstore/nothing does not exist",
        ),
    ],
)
def test_invalid_split_is_reported_and_traffic_goes_to_the_apex(splits: list[object], reason: str) -> None:
    policy = build(*splits)
    assert [p.reason for p in policy.problems] == [reason]
    assert upstream(policy, "bookstore", 14001).split is None


def test_several_splits_on_one_apex_are_an_error_on_each() -> None:
    policy = build(
        split("bookstore", "a", "bookstore", ("bookstore-v1", 1)),
        split("bookstore", "b", "bookstore", ("bookstore-v2", 1)),
    )
    assert sorted(p.ref.name for p in policy.problems) == ["a", "b"]
    assert all("share the apex service bookstore/bookstore" in p.reason for p in policy.problems)
    assert upstream(policy, "bookstore", 14001).split is None


def test_split_with_matches_applies_only_to_those_requests() -> None:
    policy = build(
        split(
            "bookstore",
            "s",
            "bookstore",
            ("bookstore-v2", 1),
            matches=(SplitMatch("HTTPRouteGroup", "bookstore-routes"),),
        )
    )
    route = upstream(policy, "bookstore", 14001).split
    assert route is not None
    assert route.matches == (BUY, STOCK)


def test_endpoints_are_ready_meshed_pods_only() -> None:
    policy = build()
    endpoints = policy.endpoints[(APEX, 14001)]
    # v1 and v2 are meshed; "stranger" matches the selector but lives outside the mesh.
    assert [e.address for e in endpoints] == ["10.244.2.1", "10.244.2.2"]
    assert upstream(policy, "bookstore", 14001).identities == (STORE,)


def test_proxies_of_one_identity_and_services_share_a_class() -> None:
    policy = build()
    assert (
        policy.pod_classes[("bookstore", "bookstore-v1")] != policy.pod_classes[("bookstore", "bookstore-v2")]
    )
    assert ("outside", "stranger") not in policy.pod_classes  # not meshed: no proxy
    assert len(policy.proxies) == len(policy.pod_classes) == 5


def test_two_pods_claiming_one_proxy_uuid_are_reported_and_neither_is_served() -> None:
    """A stream names its pod by proxy UUID: a UUID two pods claim (a label copied, or set
    on purpose) would let one proxy follow the other's configuration."""
    shared = frozen_map({PROXY_UUID_LABEL: "0b5e7a1c-0000-4000-8000-000000000001"})
    first = Pod(Meta("buyer-a", "bookbuyer", labels=shared), "bookbuyer", "10.244.1.7", True)
    second = Pod(Meta("buyer-b", "bookbuyer", labels=shared), "bookbuyer", "10.244.1.8", True)
    policy = build(first, second)
    assert "0b5e7a1c-0000-4000-8000-000000000001" not in policy.proxies
    reasons = {p.ref.name: p.reason for p in policy.problems}
    assert "also claimed by pod bookbuyer/buyer-b" in reasons["buyer-a"]
    assert "neither is served" in reasons["buyer-b"]
    # every other pod is still served
    assert len(policy.proxies) == 5


def test_the_cas_trust_domain_is_the_one_rbac_uses() -> None:
    """RBAC principals and SAN matchers name SPIFFE IDs of the CA's trust domain (the
    certificates carry it): a MeshConfig `trustDomain` that differs is reported on the
    MeshConfig and not used, instead of every request getting a 403 with nothing saying why."""
    chosen = replace(MeshConfig(), explicit=frozenset({"trust_domain"}))
    policy = build_policies(Bookstore().state().with_changes([chosen]), "example.org")
    assert {p.trust_domain for p in policy.classes.values()} == {"example.org"}
    (problem,) = [p for p in policy.problems if p.ref.kind == "MeshConfig"]
    assert problem.reason.startswith("trustDomain 'cluster.local' is not the CA's 'example.org'")
    same = build_policies(Bookstore().state().with_changes([chosen]), "cluster.local")
    assert not [p for p in same.problems if p.ref.kind == "MeshConfig"]
    # a MeshConfig that does not set trustDomain chose nothing: the CA's is used, silently
    unset = build_policies(Bookstore().state(), "example.org")
    assert {p.trust_domain for p in unset.classes.values()} == {"example.org"}
    assert not [p for p in unset.problems if p.ref.kind == "MeshConfig"]


def test_a_rule_naming_an_invalid_route_says_invalid_not_missing() -> None:
    """An HTTPRouteGroup that was read and refused (its own problem names the field) is
    not one that does not exist: the TrafficTarget's problem says which it is."""
    refused = Problem(
        ObjectRef("HTTPRouteGroup", "bookstore", "broken-routes"), "spec.matches[0].pathRegex: bad"
    )
    rule = TargetRule("HTTPRouteGroup", "broken-routes")
    state = Bookstore(
        extra=[target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], rule)]
    ).state()
    state = state.with_changes(problems=(refused,))
    reasons = {(p.ref.name, p.reason) for p in build_policies(state).problems}
    assert (
        "t",
        "HTTPRouteGroup bookstore/broken-routes is invalid (see its own problem); rule skipped",
    ) in reasons
