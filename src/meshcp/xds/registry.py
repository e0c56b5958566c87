"""The proxies connected right now, for /debug/proxies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp.cache.resource_types import SHORT_NAMES
from meshcp.cache.snapshot import Snapshot


class StreamState(Protocol):
    """What the registry reads of a stream's protocol state (SotW or delta)."""

    kind: str
    node: Node | None

    def status(self) -> dict[str, object]: ...

    def holds_current(self, type_url: str, snapshot: Snapshot) -> bool: ...


@dataclass(slots=True)
class Connection:
    """One open ADS stream."""

    protocol: StreamState
    key: str
    identity: str | None
    peer: str
    connected_at: float

    def status(self) -> dict[str, object]:
        node = self.protocol.node
        return {
            "node_id": node.id if node is not None else "",
            "cluster": node.cluster if node is not None else "",
            "metadata": _metadata(node),
            "identity": self.identity,
            "class": self.key,
            "stream": self.protocol.kind,
            "peer": self.peer,
            "connected_at": self.connected_at,
            "types": self.protocol.status(),
        }


class ConnectedProxies:
    """Open streams by a server-assigned id (a node may briefly hold two streams)."""

    def __init__(self) -> None:
        self._connections: dict[int, Connection] = {}
        self._next = 0

    def add(self, connection: Connection) -> int:
        self._next += 1
        self._connections[self._next] = connection
        return self._next

    def remove(self, token: int) -> None:
        self._connections.pop(token, None)

    def __len__(self) -> int:
        return len(self._connections)

    def find(self, node_id: str) -> Connection | None:
        """The open stream of a node (the newest, if it briefly has two)."""
        for token in sorted(self._connections, reverse=True):
            node = self._connections[token].protocol.node
            if node is not None and node.id == node_id:
                return self._connections[token]
        return None

    def nodes(self) -> list[Node]:
        """The node of every open stream (a node with two streams, twice)."""
        return [c.protocol.node for c in self._connections.values() if c.protocol.node is not None]

    def lagging(self, type_url: str, snapshot_of: Callable[[str], Snapshot | None]) -> list[str]:
        """Node ids of connected proxies that have not ACKed their class's current content
        of `type_url` (for example the secrets of a new root)."""
        out = []
        for connection in self._connections.values():
            snapshot = snapshot_of(connection.key)
            if snapshot is not None and not connection.protocol.holds_current(type_url, snapshot):
                node = connection.protocol.node
                out.append(node.id if node is not None else connection.peer)
        return sorted(out)

    def status(self, snapshot_of: Callable[[str], Snapshot | None] | None = None) -> list[dict[str, object]]:
        """Each stream's status; with `snapshot_of`, per type also the class's current
        version and whether the proxy holds (has ACKed) that content."""
        out = []
        for connection in self._connections.values():
            item = connection.status()
            snapshot = None if snapshot_of is None else snapshot_of(connection.key)
            types = item["types"]
            if snapshot is not None and isinstance(types, dict):
                for type_url, short in SHORT_NAMES.items():
                    if short in types:
                        types[short]["version_current"] = snapshot.version(type_url)
                        types[short]["current"] = connection.protocol.holds_current(type_url, snapshot)
            out.append(item)
        return sorted(out, key=lambda item: (str(item["node_id"]), str(item["stream"])))


def _metadata(node: Node | None) -> dict[str, str]:
    """The node's string-valued metadata (what bootstraps set: namespace, pod, flavour)."""
    if node is None or node.metadata is None:
        return {}
    return {
        key: value.string_value or ""
        for key, value in sorted(node.metadata.fields.items())
        if value.is_set("string_value")
    }
