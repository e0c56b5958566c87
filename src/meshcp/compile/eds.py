"""EDS: the endpoints of one upstream service port (shared by every class that calls it)."""

from __future__ import annotations

from collections.abc import Iterable

from meshcp._proto.envoy.config.endpoint.v3 import ClusterLoadAssignment
from meshcp.compile import naming
from meshcp.policy.types import Endpoint, ServiceKey
from meshcp.sidecar.envoy_parts import cluster_load_assignment


def load_assignment(service: ServiceKey, port: int, endpoints: Iterable[Endpoint]) -> ClusterLoadAssignment:
    """The ClusterLoadAssignment of `<ns>/<svc>|<port>`: ready, meshed pods, sorted."""
    ordered = sorted(set(endpoints), key=lambda e: (e.address, e.port))
    name = naming.cluster(service.namespace, service.name, port)
    return cluster_load_assignment(name, [(e.address, e.port) for e in ordered])
