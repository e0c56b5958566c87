"""CDS: a proxy policy in, its clusters out.

Per upstream service port an EDS cluster with mTLS (client certificate of this
identity, server SANs of that service), per local service port a static cluster to the
application, the egress passthrough cluster, and the cluster of Envoy's own metrics.
"""

from __future__ import annotations

from datetime import timedelta

from meshcp._proto.envoy.config.cluster.v3 import (
    Cluster,
    ClusterDiscoveryType,
    ClusterEdsClusterConfig,
    ClusterLbPolicy,
)
from meshcp._proto.envoy.config.core.v3 import Address, Http2ProtocolOptions, SocketAddress
from meshcp._proto.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import CommonTlsContext, UpstreamTlsContext
from meshcp._proto.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from meshcp._proto.google.protobuf import Any as AnyMessage
from meshcp.cache.encoding import pack
from meshcp.certs.identity import Identity
from meshcp.compile import naming
from meshcp.compile.common import ads, sds, tls_socket
from meshcp.policy.types import InboundPort, ProxyPolicy, ServiceKey, Upstream

CONNECT_TIMEOUT = timedelta(seconds=1)
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def upstream_cluster(identity: Identity, service: ServiceKey, port: int, http2: bool) -> Cluster:
    """An upstream service port, reached over mTLS as `identity`."""
    cluster = Cluster(
        name=naming.cluster(service.namespace, service.name, port),
        type=ClusterDiscoveryType.EDS,
        eds_cluster_config=ClusterEdsClusterConfig(eds_config=ads()),
        connect_timeout=CONNECT_TIMEOUT,
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
        transport_socket=tls_socket(
            UpstreamTlsContext(
                common_tls_context=CommonTlsContext(
                    tls_certificate_sds_secret_configs=[sds(naming.service_cert(identity))],
                    validation_context_sds_secret_config=sds(
                        naming.root_outbound(service.namespace, service.name)
                    ),
                ),
                sni=naming.service_host(service.namespace, service.name),
            )
        ),
    )
    if http2:  # gRPC needs HTTP/2 end to end
        cluster.typed_extension_protocol_options = _http2_only()
    return cluster


def _http2_only() -> dict[str, AnyMessage]:
    options = HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=Http2ProtocolOptions()
        )
    )
    return {HTTP_OPTIONS: pack(options)}


def _static(name: str, address: str, port: int) -> Cluster:
    return Cluster(
        name=name,
        type=ClusterDiscoveryType.STATIC,
        connect_timeout=CONNECT_TIMEOUT,
        load_assignment=ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(
                            endpoint=Endpoint(
                                address=Address(
                                    socket_address=SocketAddress(address=address, port_value=port)
                                )
                            )
                        )
                    ]
                )
            ],
        ),
    )


def local_cluster(port: InboundPort) -> Cluster:
    """The application behind this sidecar, on loopback at its target port."""
    cluster = _static(
        naming.local_cluster(port.service.namespace, port.service.name, port.port),
        "127.0.0.1",
        port.target_port,
    )
    if port.protocol == "grpc":
        cluster.typed_extension_protocol_options = _http2_only()
    return cluster


def passthrough_cluster() -> Cluster:
    """Egress to wherever the application was connecting (the original destination)."""
    return Cluster(
        name=naming.PASSTHROUGH_CLUSTER,
        type=ClusterDiscoveryType.ORIGINAL_DST,
        lb_policy=ClusterLbPolicy.CLUSTER_PROVIDED,
        connect_timeout=CONNECT_TIMEOUT,
    )


def metrics_cluster() -> Cluster:
    return _static(naming.METRICS_CLUSTER, "127.0.0.1", naming.ADMIN_PORT)


def upstream_clusters(policy: ProxyPolicy) -> list[Cluster]:
    """One cluster per upstream service port and per split backend port."""
    seen: dict[str, Cluster] = {}
    for upstream in policy.upstreams:
        keys = [upstream.service]
        if upstream.split is not None:
            keys += [backend for backend, _ in upstream.split.backends]
        for service in keys:
            name = naming.cluster(service.namespace, service.name, upstream.port)
            if name not in seen:
                seen[name] = upstream_cluster(policy.identity, service, upstream.port, _http2(upstream))
    return [seen[name] for name in sorted(seen)]


def _http2(upstream: Upstream) -> bool:
    return upstream.protocol == "grpc"


def local_clusters(policy: ProxyPolicy) -> list[Cluster]:
    """The clusters that do not depend on upstream services: the application's local
    ports, the egress passthrough and Envoy's own metrics."""
    out = [local_cluster(port) for port in policy.inbound]
    if policy.egress_passthrough:
        out.append(passthrough_cluster())
    out.append(metrics_cluster())
    return out


def clusters(policy: ProxyPolicy) -> list[Cluster]:
    """Every cluster of a proxy class, sorted by name."""
    out = upstream_clusters(policy) + local_clusters(policy)
    return sorted({c.name: c for c in out}.values(), key=lambda c: c.name)


def upstream_inputs(policy: ProxyPolicy) -> tuple[tuple[ServiceKey, int, bool], ...]:
    """Exactly what `upstream_clusters` reads besides the identity: each cluster's service,
    port and protocol. Weights, addresses and endpoints do not change a cluster."""
    inputs: set[tuple[ServiceKey, int, bool]] = set()
    for upstream in policy.upstreams:
        services = [upstream.service]
        if upstream.split is not None:
            services += [backend for backend, _ in upstream.split.backends]
        inputs.update((service, upstream.port, _http2(upstream)) for service in services)
    return tuple(sorted(inputs, key=lambda item: (str(item[0]), item[1], item[2])))
