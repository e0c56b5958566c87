"""CDS: a proxy policy in, its clusters out.

Per upstream service port an EDS cluster with mTLS (client certificate of this
identity, server SANs of that service), per local service port a static cluster to the
application, the egress passthrough cluster, and the cluster of Envoy's own metrics.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshcp._proto.envoy.config.cluster.v3 import (
    Cluster,
    ClusterDiscoveryType,
    ClusterEdsClusterConfig,
    ClusterLbPolicy,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import CommonTlsContext, UpstreamTlsContext
from meshcp.compile import naming
from meshcp.compile.common import sds
from meshcp.identity import Identity
from meshcp.policy.types import InboundPort, ProxyPolicy, ServiceKey, Upstream
from meshcp.sidecar.envoy_parts import CONNECT_TIMEOUT, LOOPBACK, ads, http2_only, static_cluster, tls_socket
from meshcp.sidecar.ports import ADMIN_PORT

#: The client certificate secret name in an upstream cluster template: no identity's name
#: contains a NUL, so it occurs nowhere else in the encoding.
TEMPLATE_SECRET = "\0client-certificate\0"


def upstream_cluster(identity: Identity, service: ServiceKey, port: int, http2: bool) -> Cluster:
    """An upstream service port, reached over mTLS as `identity`."""
    return _upstream_cluster(naming.service_cert(identity), service, port, http2)


def upstream_template(service: ServiceKey, port: int, http2: bool) -> tuple[Cluster, bytes]:
    """The upstream cluster of a service port for any identity: the cluster with
    `TEMPLATE_SECRET` as the client certificate's secret name, and that marker's bytes.

    Every identity has a cluster per mesh service port (a denied request must reach the
    destination to get its 403), and they differ only in that name: the encoder fills
    the template per identity with `template_value(identity)`.
    """
    return _upstream_cluster(TEMPLATE_SECRET, service, port, http2), TEMPLATE_SECRET.encode()


def template_value(identity: Identity) -> bytes:
    """What fills the open field of an upstream template for `identity`."""
    return naming.service_cert(identity).encode()


def _upstream_cluster(client_secret: str, service: ServiceKey, port: int, http2: bool) -> Cluster:
    cluster = Cluster(
        name=naming.cluster(service.namespace, service.name, port),
        type=ClusterDiscoveryType.EDS,
        eds_cluster_config=ClusterEdsClusterConfig(eds_config=ads()),
        connect_timeout=CONNECT_TIMEOUT,
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
        transport_socket=tls_socket(
            UpstreamTlsContext(
                common_tls_context=CommonTlsContext(
                    tls_certificate_sds_secret_configs=[sds(client_secret)],
                    validation_context_sds_secret_config=sds(
                        naming.root_outbound(service.namespace, service.name)
                    ),
                ),
                sni=naming.service_host(service.namespace, service.name),
            )
        ),
    )
    if http2:  # gRPC needs HTTP/2 end to end
        cluster.typed_extension_protocol_options = http2_only()
    return cluster


def local_cluster(port: InboundPort) -> Cluster:
    """The application behind this sidecar, on loopback at its target port."""
    name = naming.local_cluster(port.service.namespace, port.service.name, port.port)
    cluster = static_cluster(name, LOOPBACK, port.target_port)
    if port.protocol == "grpc":
        cluster.typed_extension_protocol_options = http2_only()
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
    """Envoy's own admin API, for the Prometheus listener's one route."""
    return static_cluster(naming.METRICS_CLUSTER, LOOPBACK, ADMIN_PORT)


def upstream_clusters(policy: ProxyPolicy) -> list[Cluster]:
    """One cluster per upstream service port and per split backend port."""
    return [
        upstream_cluster(policy.identity, service, port, http2)
        for service, port, http2 in upstream_specs(policy.upstreams)
    ]


def upstream_specs(upstreams: Iterable[Upstream]) -> tuple[tuple[ServiceKey, int, bool], ...]:
    """Exactly what `upstream_clusters` reads besides the identity: (service, port, http2)
    per cluster, in cluster name order. Weights, addresses and endpoints do not change a
    cluster. A split backend port also served as an upstream of its own takes the
    protocol of whichever comes first."""
    seen: dict[str, tuple[ServiceKey, int, bool]] = {}
    for upstream in upstreams:
        services = [upstream.service]
        if upstream.split is not None:
            services += [backend for backend, _ in upstream.split.backends]
        for service in services:
            name = naming.cluster(service.namespace, service.name, upstream.port)
            if name not in seen:
                seen[name] = (service, upstream.port, _http2(upstream))
    return tuple(seen[name] for name in sorted(seen))


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


def local_inputs(policy: ProxyPolicy) -> tuple[tuple[ServiceKey, int, int, str], ...]:
    """What `local_clusters` reads of the inbound ports: not who may call them, so a
    TrafficTarget change leaves the local clusters alone."""
    return tuple((p.service, p.port, p.target_port, p.protocol) for p in policy.inbound)


def clusters(policy: ProxyPolicy) -> list[Cluster]:
    """Every cluster of a proxy class, sorted by name."""
    out = upstream_clusters(policy) + local_clusters(policy)
    return sorted({c.name: c for c in out}.values(), key=lambda c: c.name)
