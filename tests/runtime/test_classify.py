"""Which class a stream follows (`ProxyClassifier`): its pod's, and only if that class is
of the identity the stream was authorised as. Every class's snapshot holds its identity's
certificate under the one name `service-cert`, so this is what keeps a proxy from ever
being served another identity's key."""

from __future__ import annotations

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp.identity import Identity, ProxyIdentity
from meshcp.policy.types import ProxyPolicy
from meshcp.runtime.classify import ProxyClassifier

BUYER = Identity("bookbuyer", "bookbuyer")
STORE = Identity("bookstore", "bookstore")
STORE_UUID = "6f1c3a52-0d6a-4b55-9a59-1d8a5f0e2b11"
STORE_PROXY = ProxyIdentity(STORE_UUID, STORE)
#: A certificate of another identity that carries the bookstore pod's proxy UUID.
IMPOSTOR = ProxyIdentity(STORE_UUID, BUYER)


def classifier() -> ProxyClassifier:
    found = ProxyClassifier()
    found.update(
        {STORE_UUID: ("bookstore", "bookstore-0")},
        {("bookstore", "bookstore-0"): "store-class"},
        {"store-class": ProxyPolicy(STORE, (), (), False, "cluster.local")},
    )
    return found


def node(proxy: ProxyIdentity) -> Node:
    return Node(id=proxy.name)


def test_a_proxy_follows_its_pods_class() -> None:
    assert classifier()(node(STORE_PROXY), "bookstore/bookstore") == "store-class"


def test_a_proxy_of_another_identity_never_follows_the_pods_class() -> None:
    """Nothing ties the proxy UUID to the certificate's identity: a proxy of the bookbuyer
    naming the bookstore pod's UUID waits under its own node id, where nothing is published."""
    classify = classifier()
    assert classify(node(IMPOSTOR), "bookbuyer/bookbuyer") == IMPOSTOR.name
    # Whatever the node id claims, the authorised identity decides.
    assert classify(node(STORE_PROXY), "bookbuyer/bookbuyer") == STORE_PROXY.name
    assert classify(node(STORE_PROXY), None) == STORE_PROXY.name


def test_unknown_proxies_wait_under_their_node_id() -> None:
    classify = classifier()
    other = ProxyIdentity("0b7c9e31-5d2f-4a8e-9c61-3e4f5a6b7c8d", STORE)
    assert classify(node(other), "bookstore/bookstore") == other.name
    assert classify(Node(id="router-1"), None) == "router-1"
