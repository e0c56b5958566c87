"""Envoy pieces that the sidecar's static config and the compiled xDS resources build alike.

The bootstrap and the probe listeners are static, written into the pod. The compiled
clusters and listeners arrive over xDS. Both need the same pieces: a static cluster with
one address, endpoints, a plaintext listener with inline HTTP routes, a TLS transport
socket, HTTP/2-only upstream options and the ADS config source. Each piece is built here
once, so the two sides cannot drift apart.

The module sits in the sidecar package, not in compile: compile already depends on the
sidecar for its ports, and the sidecar must not depend on compile.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta

import betterproto2

from meshcp._proto.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from meshcp._proto.envoy.config.core.v3 import (
    Address,
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
    Http2ProtocolOptions,
    SocketAddress,
    TrafficDirection,
    TransportSocket,
)
from meshcp._proto.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from meshcp._proto.envoy.config.listener.v3 import Filter, FilterChain, Listener
from meshcp._proto.envoy.config.route.v3 import Route, RouteConfiguration, VirtualHost
from meshcp._proto.envoy.extensions.filters.http.router.v3 import Router
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
)
from meshcp._proto.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from meshcp._proto.google.protobuf import Any as AnyMessage
from meshcp.cache.encoding import pack

HCM = "envoy.filters.network.http_connection_manager"
TCP_PROXY = "envoy.filters.network.tcp_proxy"
ROUTER = "envoy.filters.http.router"
TLS_SOCKET = "envoy.transport_sockets.tls"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

#: Listeners bind every address of the pod: traffic arrives on the pod's IP.
ANY_ADDRESS = "0.0.0.0"
#: Where Envoy reaches the application and its own admin API. iptables never redirects
#: Envoy's traffic (its UID) or anything sent to loopback.
LOOPBACK = "127.0.0.1"
CONNECT_TIMEOUT = timedelta(seconds=1)


def ads() -> ConfigSource:
    """Fetch over the ADS stream the proxy already has."""
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def socket_address(host: str, port: int) -> Address:
    return Address(socket_address=SocketAddress(address=host, port_value=port))


def cluster_load_assignment(cluster_name: str, addresses: Iterable[tuple[str, int]]) -> ClusterLoadAssignment:
    """The endpoints `(host, port)` of a cluster in one locality, in the order given.
    Without any address there is no locality either."""
    endpoints = [LbEndpoint(endpoint=Endpoint(address=socket_address(h, p))) for h, p in addresses]
    return ClusterLoadAssignment(
        cluster_name=cluster_name,
        endpoints=[LocalityLbEndpoints(lb_endpoints=endpoints)] if endpoints else [],
    )


def static_cluster(
    name: str, host: str, port: int, kind: ClusterDiscoveryType = ClusterDiscoveryType.STATIC
) -> Cluster:
    """A cluster of one address, known when the config is written (STATIC), or a name
    that Envoy resolves itself (STRICT_DNS)."""
    return Cluster(
        name=name,
        type=kind,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=cluster_load_assignment(name, [(host, port)]),
    )


def http2_only() -> dict[str, AnyMessage]:
    """Upstream protocol options for HTTP/2 end to end (gRPC needs it)."""
    options = HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    )
    return {HTTP_OPTIONS: pack(options)}


def tls_socket(context: betterproto2.Message) -> TransportSocket:
    return TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


def network_filter(name: str, message: betterproto2.Message) -> Filter:
    return Filter(name=name, typed_config=pack(message))


def router_filter() -> HttpFilter:
    return HttpFilter(name=ROUTER, typed_config=pack(Router()))


def static_http_manager(name: str, routes: Sequence[Route]) -> HttpConnectionManager:
    """An HTTP connection manager whose routes are inline, not fetched over RDS. It answers
    any Host header, and `name` is its stat prefix, route config and virtual host."""
    return HttpConnectionManager(
        stat_prefix=name,
        codec_type=HttpConnectionManagerCodecType.AUTO,
        route_config=RouteConfiguration(
            name=name, virtual_hosts=[VirtualHost(name=name, domains=["*"], routes=list(routes))]
        ),
        http_filters=[router_filter()],
    )


def plaintext_listener(name: str, port: int, network: Filter) -> Listener:
    """An inbound listener without TLS on every address, with one filter chain. It is for
    those that must stay reachable without mTLS: kubelet's probes and Prometheus."""
    return Listener(
        name=name,
        address=socket_address(ANY_ADDRESS, port),
        traffic_direction=TrafficDirection.INBOUND,
        filter_chains=[FilterChain(filters=[network])],
    )
