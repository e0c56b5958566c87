"""EDS: the endpoints of one upstream service port (shared by every class that calls it)."""

from __future__ import annotations

from collections.abc import Iterable

from meshcp._proto.envoy.config.core.v3 import Address, SocketAddress
from meshcp._proto.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from meshcp.compile import naming
from meshcp.policy.types import Endpoint as PolicyEndpoint
from meshcp.policy.types import ServiceKey


def load_assignment(
    service: ServiceKey, port: int, endpoints: Iterable[PolicyEndpoint]
) -> ClusterLoadAssignment:
    """The ClusterLoadAssignment of `<ns>/<svc>|<port>`: ready, meshed pods, sorted."""
    ordered = sorted(set(endpoints), key=lambda e: (e.address, e.port))
    return ClusterLoadAssignment(
        cluster_name=naming.cluster(service.namespace, service.name, port),
        endpoints=[
            LocalityLbEndpoints(
                lb_endpoints=[
                    LbEndpoint(
                        endpoint=Endpoint(
                            address=Address(
                                socket_address=SocketAddress(address=e.address, port_value=e.port)
                            )
                        )
                    )
                    for e in ordered
                ]
            )
        ]
        if ordered
        else [],
    )
