"""Builders of Envoy resources for tests, made of the generated classes in `meshcp._proto`.

Nested typed configs are packed with `meshcp.cache.pack` (canonical bytes), as the
production compilers do; `snapshot` encodes with `meshcp.cache.Encoder`.
"""

from __future__ import annotations

import datetime

import betterproto2

from meshcp._proto.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterEdsClusterConfig
from meshcp._proto.envoy.config.core.v3 import (
    Address,
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
    SocketAddress,
)
from meshcp._proto.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from meshcp._proto.envoy.config.listener.v3 import Filter, FilterChain, Listener
from meshcp._proto.envoy.config.route.v3 import (
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from meshcp._proto.envoy.extensions.filters.http.router.v3 import Router
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpFilter,
    Rds,
)
from meshcp.cache import Encoder, Snapshot, pack

LOOPBACK = "127.0.0.1"


def ads_source() -> ConfigSource:
    """`{ads: {}, resource_api_version: V3}`: fetch over the ADS stream."""
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def socket_address(port: int, host: str = LOOPBACK) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def eds_cluster(name: str, service_name: str = "") -> Cluster:
    """A cluster whose endpoints come over ADS (ClusterLoadAssignment `service_name or name`)."""
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.EDS,
        eds_cluster_config=ClusterEdsClusterConfig(eds_config=ads_source(), service_name=service_name),
        connect_timeout=datetime.timedelta(seconds=1),
    )


def load_assignment(cluster: str, *ports: int, host: str = LOOPBACK) -> ClusterLoadAssignment:
    """Endpoints of `cluster`: one `host:port` per port, in one locality."""
    return ClusterLoadAssignment(
        cluster_name=cluster,
        endpoints=[
            LocalityLbEndpoints(
                lb_endpoints=[LbEndpoint(endpoint=Endpoint(address=socket_address(p, host))) for p in ports]
            )
        ],
    )


def http_listener(name: str, port: int, route_config: str, host: str = LOOPBACK) -> Listener:
    """A listener on host:port (0: Envoy picks) whose HCM takes `route_config` over RDS/ADS."""
    manager = HttpConnectionManager(
        stat_prefix=name,
        rds=Rds(config_source=ads_source(), route_config_name=route_config),
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=pack(Router()))],
    )
    hcm = Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(manager))
    return Listener(name=name, address=socket_address(port, host), filter_chains=[FilterChain(filters=[hcm])])


def route_configuration(name: str, cluster: str, domains: tuple[str, ...] = ("*",)) -> RouteConfiguration:
    """One virtual host sending every path (prefix "/") to `cluster`."""
    return RouteConfiguration(
        name=name,
        virtual_hosts=[
            VirtualHost(
                name=f"{name}-all",
                domains=list(domains),
                routes=[Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster=cluster))],
            )
        ],
    )


def snapshot(encoder: Encoder, *messages: betterproto2.Message) -> Snapshot:
    """Encode every message (once per content) into one Snapshot."""
    return Snapshot(encoder.encode(message) for message in messages)
