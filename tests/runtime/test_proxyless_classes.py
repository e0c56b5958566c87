"""Proxyless gRPC classes in the reconciler and the classifier: a `grpc:` variant only for
classes with a pod annotated proxyless, kept current by endpoints-only rounds, and
followed only by nodes whose metadata says they are proxyless gRPC."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.google.protobuf import Struct, Value
from meshcp.cache import Encoder, resource_types
from meshcp.identity import Identity, ProxyIdentity
from meshcp.model.core import Pod
from meshcp.model.meta import frozen_map
from meshcp.model.state import MeshObject, MeshState
from meshcp.policy.types import ProxyPolicy
from meshcp.runtime.classify import ProxyClassifier
from meshcp.runtime.proxy_class import ProxyClass
from meshcp.runtime.reconcile import Reconciler
from meshcp.sidecar.grpc_bootstrap import PROXYLESS_GRPC, PROXYLESS_KEY
from tests.policy.mesh import RULE_ALL, Bookstore, pod, target


def proxyless(found: Pod) -> Pod:
    return replace(found, meta=replace(found.meta, annotations=frozen_map({PROXYLESS_KEY: PROXYLESS_GRPC})))


def mesh() -> list[MeshObject]:
    objects = Bookstore(
        prune=False, extra=[target("bookstore", "t", "bookstore", [("bookbuyer", "bookbuyer")], RULE_ALL)]
    ).objects()
    annotated = ("bookbuyer", "bookstore-v2")
    return [proxyless(o) if isinstance(o, Pod) and o.meta.name in annotated else o for o in objects]


def grpc_classes(classes: list[ProxyClass]) -> dict[str, ProxyClass]:
    return {c.key: c for c in classes if c.key.startswith("grpc:")}


def endpoints_of(proxy_class: ProxyClass, name: str) -> bytes:
    (found,) = [
        r.body
        for r in proxy_class.all_resources()
        if r.type_url == resource_types.ENDPOINT and r.name == name
    ]
    return found


def test_only_classes_with_proxyless_pods_get_a_grpc_variant() -> None:
    rec = Reconciler(Encoder())
    classes = rec.apply(MeshState().with_changes(mesh()))
    assert set(grpc_classes(classes)) == {
        "grpc:" + rec.policy.pod_classes[("bookbuyer", "bookbuyer")],
        "grpc:" + rec.policy.pod_classes[("bookstore", "bookstore-v2")],
    }
    # Without the annotation, no variant: a mesh without proxyless pods pays nothing.
    assert not grpc_classes(Reconciler(Encoder()).apply(MeshState().with_changes(Bookstore().objects())))


def test_an_endpoints_only_round_updates_the_grpc_variant_as_a_full_compile_would() -> None:
    before = MeshState().with_changes(mesh())
    rec = Reconciler(Encoder())
    first = grpc_classes(rec.apply(before))
    buyer = "grpc:" + rec.policy.pod_classes[("bookbuyer", "bookbuyer")]
    store = "grpc:" + rec.policy.pod_classes[("bookstore", "bookstore-v2")]
    moved = proxyless(
        pod("bookstore", "bookstore-v2", "bookstore", "10.244.7.2", app="bookstore", version="v2")
    )
    after = before.with_changes([moved])
    second = grpc_classes(rec.apply(after))
    assert rec.last_scope == "endpoints"
    name = "bookstore/bookstore-v2|14001"
    assert b"10.244.7.2" in endpoints_of(second[buyer], name)
    assert b"10.244.7.2" not in endpoints_of(first[buyer], name)
    # The moved server's listener of its pod IP follows it.
    listeners = {r.name for r in second[store].all_resources() if r.type_url == resource_types.LISTENER}
    assert "grpc/server?xds.resource.listening_address=10.244.7.2:14001" in listeners
    assert "grpc/server?xds.resource.listening_address=10.244.2.2:14001" not in listeners
    full = grpc_classes(Reconciler(Encoder()).apply(after))
    for key in (buyer, store):
        assert [(r.name, r.version) for r in second[key].all_resources()] == [
            (r.name, r.version) for r in full[key].all_resources()
        ]
    # An unchanged round hands the class on as the same object (the publisher skips it).
    third = grpc_classes(rec.apply(after.with_changes([moved])))
    assert third[buyer] is second[buyer]


UUID = "6f1c3a52-0d6a-4b55-9a59-1d8a5f0e2b11"
BUYER = ProxyIdentity(UUID, Identity("bookbuyer", "bookbuyer"))


def classifier(proxyless: frozenset[str] = frozenset({"buyer"})) -> ProxyClassifier:
    found = ProxyClassifier()
    policy = ProxyPolicy(BUYER.identity, (), (), False, "cluster.local")
    found.update(
        {UUID: ("bookbuyer", "bookbuyer")},
        {("bookbuyer", "bookbuyer"): "buyer"},
        {"buyer": policy},
        proxyless,
    )
    return found


def test_a_node_whose_metadata_says_proxyless_follows_the_grpc_variant() -> None:
    classify = classifier()
    metadata = Struct(fields={PROXYLESS_KEY: Value(string_value=PROXYLESS_GRPC)})
    grpc_node = Node(id=BUYER.name, metadata=metadata)
    assert classify(grpc_node, "bookbuyer/bookbuyer") == "grpc:buyer"
    assert classify.flavour(grpc_node) == "proxyless-grpc"
    assert classify(Node(id=BUYER.name), "bookbuyer/bookbuyer") == "buyer"
    other = Struct(fields={PROXYLESS_KEY: Value(string_value="envoy")})
    assert classify(Node(id=BUYER.name, metadata=other), "bookbuyer/bookbuyer") == "buyer"
    # The metadata never lifts the identity check.
    assert classify(grpc_node, "bookthief/bookthief") == BUYER.name


def test_a_proxyless_node_of_a_pod_without_the_annotation_waits_and_is_named_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its pod's class has no proxyless variant: the node waits under its node id (nothing
    is published there), and a warning says why, once."""
    classify = classifier(frozenset())
    grpc_node = Node(
        id=BUYER.name, metadata=Struct(fields={PROXYLESS_KEY: Value(string_value=PROXYLESS_GRPC)})
    )
    with caplog.at_level("WARNING", logger="meshcp.runtime.classify"):
        assert classify(grpc_node, "bookbuyer/bookbuyer") == BUYER.name
        assert classify(grpc_node, "bookbuyer/bookbuyer") == BUYER.name
    (record,) = caplog.records
    assert "is not annotated meshcp.dev/proxyless: grpc" in record.getMessage()
