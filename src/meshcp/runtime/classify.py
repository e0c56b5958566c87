"""Which class's snapshot each connected proxy follows.

The xDS server asks this for every stream when it opens and after every round; the round
hands over its tables (proxy UUID -> pod -> class key) as they are, so a round costs
nothing here, and each node id is parsed once, not once per round per stream.
"""

from __future__ import annotations

from collections.abc import Mapping

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp.identity import DEFAULT_TRUST_DOMAIN, ProxyIdentity

#: Parsed node ids kept before the memo starts over (a bound, not a working-set size).
_PARSED_LIMIT = 1 << 16


class ProxyClassifier:
    """Maps a node to its class key: the class of its pod in the last round's policy.

    Proxies not (yet) in the mesh get their node id as key: nothing is published under
    it, so they wait until a round knows their pod.
    """

    def __init__(self, trust_domain: str = DEFAULT_TRUST_DOMAIN) -> None:
        self._trust_domain = trust_domain
        self._proxies: Mapping[str, tuple[str, str]] = {}
        self._pod_classes: Mapping[tuple[str, str], str] = {}
        self._uuids: dict[str, str | None] = {}

    def update(
        self, proxies: Mapping[str, tuple[str, str]], pod_classes: Mapping[tuple[str, str], str]
    ) -> None:
        """A round's tables: proxy UUID -> (namespace, pod), and pod -> class key."""
        self._proxies, self._pod_classes = proxies, pod_classes

    def __call__(self, node: Node) -> str:
        proxy_uuid = self._uuid(node.id)
        pod = self._proxies.get(proxy_uuid) if proxy_uuid is not None else None
        if pod is None:
            return node.id
        return self._pod_classes.get(pod, node.id)

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
