"""Who may open an ADS stream, and which class of configuration it receives."""

from __future__ import annotations

from collections.abc import Callable

from meshcp._proto.envoy.config.core.v3 import Node

#: The peer's DER-encoded certificate (None without TLS or without a client certificate).
PeerCertificate = bytes | None

#: Decides whether a node may stream; returns its identity (None when unknown) or
#: raises `StreamRejected`. The TLS layer has already checked chain and expiry.
Authorizer = Callable[[Node, PeerCertificate], str | None]

#: Maps a node, with the identity its stream was authorised as (the authoriser's answer),
#: to the key of its snapshot in the cache (its proxy class). A stream is served that
#: class's snapshot only, and it holds that class's identity's certificate under the one
#: name every proxy shares: a classifier must never hand a stream a class of another
#: identity (`runtime.classify.ProxyClassifier` checks it).
Classifier = Callable[[Node, str | None], str]


class StreamRejected(Exception):
    """A stream the server refuses; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def allow_any(node: Node, peer: PeerCertificate) -> str | None:
    """The authoriser of `--insecure-xds` and of tests: everyone, identity unknown."""
    return None


def by_node_id(node: Node, identity: str | None) -> str:
    """The default classifier (tests, no mesh source): every node its own class, keyed by
    its node id, which the authoriser checked against the client certificate."""
    return node.id


#: Whether a stream may subscribe to a named secret. Checked on every SDS subscription;
#: refused names are dropped from the request, logged and counted.
SecretGuard = Callable[[str], bool]


def any_secret(name: str) -> bool:
    return True
