"""The ADS pieces both simulated clients frame by hand: the gRPC methods, the Node a
first request carries, and name lists (envoy/service/discovery/v3 DiscoveryRequest and
DeltaDiscoveryRequest). Each client's `self_check` proves its requests against betterproto2.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshcp.cache.wire import length_delimited

SOTW_PATH = b"/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_PATH = b"/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


def node_field(number: int, node_id: str, cluster: str) -> bytes:
    """A Node as Envoy fills it (id, cluster, user agent), as field `number` of a request."""
    node = (
        length_delimited(1, node_id.encode())
        + length_delimited(2, cluster.encode())
        + length_delimited(6, b"envoy")
        + length_delimited(7, b"1.40.0")
    )
    return length_delimited(number, node)


def names_field(number: int, names: Iterable[str]) -> bytes:
    """Each name as a repeated string field `number`, in the order given."""
    return b"".join(length_delimited(number, name.encode()) for name in names)
