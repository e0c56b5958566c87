"""Who may open an ADS stream, and which class of configuration it receives."""

from __future__ import annotations

from collections.abc import Callable

from meshcp._proto.envoy.config.core.v3 import Node

#: The peer's DER-encoded certificate (None without TLS or without a client certificate).
PeerCertificate = bytes | None

#: Decides whether a node may stream; returns its identity (None when unknown) or
#: raises `StreamRejected`. The TLS layer has already checked chain and expiry.
Authorizer = Callable[[Node, PeerCertificate], str | None]

#: Maps a node to the key of its snapshot in the cache (its proxy class).
Classifier = Callable[[Node], str]


class StreamRejected(Exception):
    """A stream the server refuses; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def allow_any(node: Node, peer: PeerCertificate) -> str | None:
    """The authoriser of `--insecure-xds` and of tests: everyone, identity unknown."""
    return None


def by_node_id(node: Node) -> str:
    """The default classifier: every node its own class."""
    return node.id


#: Whether a stream of the given identity may receive a named secret. Checked on every
#: SDS subscription; refused names are dropped from the request, logged and counted.
SecretGuard = Callable[[str | None, str, str], bool]


def any_secret(identity: str | None, type_url: str, name: str) -> bool:
    return True
