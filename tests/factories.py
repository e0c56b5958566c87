"""Small resources for protocol and cache tests (content matters, not Envoy validity)."""

from __future__ import annotations

from meshcp._proto.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from meshcp._proto.envoy.config.core.v3 import Address, SocketAddress
from meshcp._proto.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from meshcp._proto.envoy.config.listener.v3 import Listener
from meshcp._proto.envoy.config.route.v3 import RouteConfiguration
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import Secret
from meshcp.cache import Encoder, Resource, Snapshot, resource_types


def cluster(name: str, timeout_ms: int = 0) -> Cluster:
    message = Cluster(name=name, type=ClusterDiscoveryType.EDS)
    if timeout_ms:
        message.per_connection_buffer_limit_bytes = timeout_ms
    return message


def endpoints(name: str, *ports: int) -> ClusterLoadAssignment:
    return ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            LocalityLbEndpoints(
                lb_endpoints=[
                    LbEndpoint(
                        endpoint=Endpoint(
                            address=Address(
                                socket_address=SocketAddress(address="127.0.0.1", port_value=port)
                            )
                        )
                    )
                    for port in ports
                ]
            )
        ],
    )


def listener(name: str, port: int) -> Listener:
    return Listener(
        name=name, address=Address(socket_address=SocketAddress(address="127.0.0.1", port_value=port))
    )


def route(name: str) -> RouteConfiguration:
    return RouteConfiguration(name=name)


def secret(name: str) -> Secret:
    return Secret(name=name)


class World:
    """A mutable description of one proxy class's config that builds snapshots.

    Unchanged messages are encoded again on every build on purpose here: the encoder
    interns equal content, so versions stay equal; `encoder.encodes` counts calls.
    """

    def __init__(self) -> None:
        self.encoder = Encoder()
        self.clusters: dict[str, int] = {"a": 0, "b": 0}
        self.endpoints: dict[str, tuple[int, ...]] = {"a": (8001,), "b": (8002,)}
        self.listeners: dict[str, int] = {"http": 10000}
        self.routes: set[str] = {"r1"}
        self.secrets: set[str] = set()

    def resources(self) -> list[Resource]:
        encode = self.encoder.encode
        out = [encode(cluster(name, value)) for name, value in self.clusters.items()]
        out += [encode(endpoints(name, *ports)) for name, ports in self.endpoints.items()]
        out += [encode(listener(name, port)) for name, port in self.listeners.items()]
        out += [encode(route(name)) for name in self.routes]
        out += [encode(secret(name)) for name in self.secrets]
        return out

    def snapshot(self) -> Snapshot:
        return Snapshot(self.resources())


CDS, EDS, LDS, RDS, SDS = (
    resource_types.CLUSTER,
    resource_types.ENDPOINT,
    resource_types.LISTENER,
    resource_types.ROUTE,
    resource_types.SECRET,
)
