"""Which class's snapshot each connected proxy follows.

The xDS server asks this for every stream when it opens and after every round; the round
hands over its tables (proxy UUID -> pod -> class key, class key -> policy) as they are,
so a round costs nothing here, and each node id is parsed once, not once per round per
stream.

This is where a proxy's own certificate is kept its own: every class's snapshot holds
its identity's key under the one name all proxies share (`naming.SERVICE_CERT`), so a
stream must only ever follow a class of the identity it was authorised as. The proxy UUID
in a node id picks the pod, and nothing ties that UUID to the identity in the client
certificate; a class whose identity is not the stream's is therefore never handed out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp.identity import DEFAULT_TRUST_DOMAIN, ProxyIdentity
from meshcp.policy.types import ProxyPolicy
from meshcp.runtime.proxyless import proxyless_key
from meshcp.sidecar.grpc_bootstrap import PROXYLESS_GRPC, PROXYLESS_KEY

log = logging.getLogger("meshcp.runtime.classify")

#: Parsed node ids kept before the memo starts over (a bound, not a working-set size).
_PARSED_LIMIT = 1 << 16


class ProxyClassifier:
    """Maps a node to its class key: the class of its pod in the last round's policy,
    if that class is of the stream's authorised identity.

    Proxies not (yet) in the mesh, and proxies whose pod's class is of another identity,
    get their node id as key: nothing is published under it, so they wait until a round
    knows their pod (and get nothing while the identities differ).
    """

    def __init__(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        self._trust_domain = trust_domain
        self._proxies: Mapping[str, tuple[str, str]] = {}
        self._pod_classes: Mapping[tuple[str, str], str] = {}
        self._classes: Mapping[str, ProxyPolicy] = {}
        self._proxyless: frozenset[str] = frozenset()
        self._uuids: dict[str, str | None] = {}
        #: Node ids already warned about (their pod's class is of another identity, or
        #: they say they are proxyless and their pod is not).
        self._mismatched: set[str] = set()

    def update(
        self,
        proxies: Mapping[str, tuple[str, str]],
        pod_classes: Mapping[tuple[str, str], str],
        classes: Mapping[str, ProxyPolicy],
        proxyless: frozenset[str] = frozenset(),
    ) -> None:
        """A round's tables: proxy UUID -> (namespace, pod), pod -> class key, class key
        -> its policy (for its identity), and the class keys with a proxyless variant."""
        self._proxies, self._pod_classes, self._classes = proxies, pod_classes, classes
        self._proxyless = proxyless

    def __call__(self, node: Node, identity: str | None) -> str:
        """`identity`: what the stream was authorised as (`runtime.access`), as `ns/sa`."""
        proxy_uuid = self._uuid(node.id)
        pod = self._proxies.get(proxy_uuid) if proxy_uuid is not None else None
        if pod is None:
            return node.id
        key = self._pod_classes.get(pod)
        if key is None:
            return node.id
        policy = self._classes.get(key)
        if policy is None or identity is None or str(policy.identity) != identity:
            self._warn_once(
                node.id,
                "proxy %s (identity %s) names pod %s/%s of identity %s: not served its configuration",
                node.id,
                identity,
                pod[0],
                pod[1],
                policy.identity if policy is not None else "unknown",
            )
            return node.id
        if not is_proxyless(node):
            return key
        if key not in self._proxyless:
            self._warn_once(
                node.id,
                "proxy %s says it is a proxyless gRPC node, but pod %s/%s is not annotated "
                f"{PROXYLESS_KEY}: {PROXYLESS_GRPC}: not served",
                node.id,
                pod[0],
                pod[1],
            )
            return node.id
        return proxyless_key(key)

    def _warn_once(self, node_id: str, message: str, *args: object) -> None:
        if node_id not in self._mismatched:
            if len(self._mismatched) >= _PARSED_LIMIT:
                self._mismatched.clear()
            self._mismatched.add(node_id)
            log.warning(message, *args)

    def flavour(self, node: Node) -> str:
        """`proxyless-grpc` or `sidecar` (for /debug/proxies)."""
        return "proxyless-grpc" if is_proxyless(node) else "sidecar"

    def _uuid(self, node_id: str) -> str | None:
        if node_id in self._uuids:
            return self._uuids[node_id]
        try:
            found: str | None = ProxyIdentity.parse(node_id, self._trust_domain).proxy_uuid
        except ValueError:
            found = None
        if len(self._uuids) >= _PARSED_LIMIT:
            self._uuids.clear()
        self._uuids[node_id] = found
        return found

    def pod_of(self, node_id: str) -> tuple[str, str] | None:
        """The (namespace, pod) the last round knows for a node id (for /debug/proxies)."""
        proxy_uuid = self._uuid(node_id)
        return None if proxy_uuid is None else self._proxies.get(proxy_uuid)


def is_proxyless(node: Node) -> bool:
    """Whether the node's metadata (set by `meshcp bootstrap --proxyless`) says it is a
    proxyless gRPC application: it then follows the `grpc:` variant of its pod's class.
    Not a matter of trust: the variant holds the same identity's configuration."""
    metadata = node.metadata
    if metadata is None:
        return False
    value = metadata.fields.get(PROXYLESS_KEY)
    return value is not None and value.string_value == PROXYLESS_GRPC
