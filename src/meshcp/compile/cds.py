"""CDS: a proxy policy in, its clusters out.

Per upstream service port an EDS cluster with mTLS (the proxy's own certificate, the
mesh's trust bundle, the SANs of that service's identities), per local service port a
static cluster to the application, the egress passthrough cluster, and the cluster of
Envoy's own metrics.

An upstream cluster depends on its service only, not on the client: it names the
client's certificate and the trust bundle by names every proxy shares
(`naming.SERVICE_CERT`, `naming.ROOT_CERT`), so every client of a service is sent the
same bytes and the cluster is encoded once per service port.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from meshcp._proto.envoy.config.cluster.v3 import (
    CircuitBreakers,
    CircuitBreakersThresholds,
    Cluster,
    ClusterDiscoveryType,
    ClusterEdsClusterConfig,
    ClusterLbPolicy,
    OutlierDetection,
)
from meshcp._proto.envoy.config.core.v3 import (
    Http1ProtocolOptions,
    Http2ProtocolOptions,
)
from meshcp._proto.envoy.config.core.v3 import (
    HttpProtocolOptions as CommonHttpProtocolOptions,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    CommonTlsContextCombinedCertificateValidationContext,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    UpstreamTlsContext,
)
from meshcp._proto.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from meshcp._proto.envoy.type.matcher.v3 import StringMatcher
from meshcp.cache.encoding import pack
from meshcp.compile import naming
from meshcp.compile.common import sds
from meshcp.identity import Identity
from meshcp.model.osm_policy import ConnectionSettings
from meshcp.model.osm_policy import OutlierDetection as OsmOutlierDetection
from meshcp.policy.types import InboundPort, ProxyPolicy, ServiceKey, Upstream
from meshcp.sidecar.envoy_parts import (
    CONNECT_TIMEOUT,
    HTTP_OPTIONS,
    LOOPBACK,
    ads,
    http2_only,
    static_cluster,
    tls_socket,
)
from meshcp.sidecar.ports import ADMIN_PORT

#: A service's UpstreamTrafficSetting as its clusters read it: connection settings and
#: outlier detection (None when it has none of either).
ClusterSettings = tuple[ConnectionSettings | None, OsmOutlierDetection | None]
#: What an upstream cluster is compiled from, besides the trust domain: the service, the
#: port, whether HTTP/2 is needed end to end, the identities its endpoints may present,
#: and the service's own settings. Nothing of the client.
UpstreamSpec = tuple[ServiceKey, int, bool, tuple[Identity, ...], ClusterSettings | None]


def cluster_of(spec: UpstreamSpec, trust_domain: str) -> Cluster:
    service, port, http2, identities, settings = spec
    return upstream_cluster(service, port, http2, identities, trust_domain, settings=settings)


def upstream_cluster(
    service: ServiceKey,
    port: int,
    http2: bool,
    identities: Iterable[Identity],
    trust_domain: str,
    *,
    settings: ClusterSettings | None = None,
) -> Cluster:
    """An upstream service port over mTLS, the same for every client.

    The validation context combines the shared trust bundle (`naming.ROOT_CERT`, over SDS)
    with this service's SANs, which Envoy merges into one context: the server must chain
    to the mesh CA *and* present an identity of the service. Matching the SAN stops a pod
    of another identity from answering for the service even though the mesh CA signed its
    certificate. Each identity is accepted by its SPIFFE URI or its DNS SAN (CAs such as
    cfssl 1.2.0 cannot sign URI SANs).
    """
    cluster = Cluster(
        name=naming.cluster(service.namespace, service.name, port),
        type=ClusterDiscoveryType.EDS,
        eds_cluster_config=ClusterEdsClusterConfig(eds_config=ads()),
        connect_timeout=CONNECT_TIMEOUT,
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
        transport_socket=tls_socket(
            UpstreamTlsContext(
                common_tls_context=CommonTlsContext(
                    tls_certificate_sds_secret_configs=[sds(naming.SERVICE_CERT)],
                    combined_validation_context=CommonTlsContextCombinedCertificateValidationContext(
                        default_validation_context=CertificateValidationContext(
                            match_typed_subject_alt_names=server_sans(identities, trust_domain)
                        ),
                        validation_context_sds_secret_config=sds(naming.ROOT_CERT),
                    ),
                ),
                sni=naming.service_host(service.namespace, service.name),
            )
        ),
    )
    if http2:  # gRPC needs HTTP/2 end to end
        cluster.typed_extension_protocol_options = http2_only()
    if settings is not None:
        _apply_settings(cluster, http2, *settings)
    return cluster


def _apply_settings(
    cluster: Cluster, http2: bool, connection: ConnectionSettings | None, outlier: OsmOutlierDetection | None
) -> None:
    """An UpstreamTrafficSetting on the service's cluster: circuit breakers (default
    priority), connect timeout, requests per connection, outlier detection. What the
    setting leaves out keeps Envoy's default."""
    if connection is not None:
        if connection.connect_timeout is not None:
            cluster.connect_timeout = timedelta(seconds=connection.connect_timeout)
        thresholds = CircuitBreakersThresholds(
            max_connections=connection.max_connections,
            max_pending_requests=connection.max_pending_requests,
            max_requests=connection.max_requests,
            max_retries=connection.max_retries,
        )
        if thresholds != CircuitBreakersThresholds():
            cluster.circuit_breakers = CircuitBreakers(thresholds=[thresholds])
        if connection.max_requests_per_connection is not None:
            explicit = (
                HttpProtocolOptionsExplicitHttpConfig(http2_protocol_options=Http2ProtocolOptions())
                if http2
                else HttpProtocolOptionsExplicitHttpConfig(http_protocol_options=Http1ProtocolOptions())
            )
            options = HttpProtocolOptions(
                common_http_protocol_options=CommonHttpProtocolOptions(
                    max_requests_per_connection=connection.max_requests_per_connection
                ),
                explicit_http_config=explicit,
            )
            cluster.typed_extension_protocol_options = {HTTP_OPTIONS: pack(options)}
    if outlier is not None:
        cluster.outlier_detection = OutlierDetection(
            consecutive_5xx=outlier.consecutive_5xx,
            interval=_seconds(outlier.interval),
            base_ejection_time=_seconds(outlier.base_ejection_time),
            max_ejection_percent=outlier.max_ejection_percent,
        )


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def server_sans(identities: Iterable[Identity], trust_domain: str) -> list[SubjectAltNameMatcher]:
    """The SAN matchers of the identities a service's endpoints may present, in a stable
    order: each by its SPIFFE URI and by its DNS SAN."""
    matchers = []
    for identity in sorted(set(identities)):
        matchers.append(_san(SubjectAltNameMatcherSanType.URI, identity.spiffe_id(trust_domain)))
        matchers.append(_san(SubjectAltNameMatcherSanType.DNS, identity.dns_name(trust_domain)))
    return matchers


def _san(kind: SubjectAltNameMatcherSanType, value: str) -> SubjectAltNameMatcher:
    return SubjectAltNameMatcher(san_type=kind, matcher=StringMatcher(exact=value))


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
    return [cluster_of(spec, policy.trust_domain) for spec in upstream_specs(policy.upstreams)]


def upstream_specs(upstreams: Iterable[Upstream]) -> tuple[UpstreamSpec, ...]:
    """Exactly what `upstream_clusters` reads besides the trust domain, per cluster in
    cluster name order. Weights, addresses and endpoints do not change a cluster. A split
    backend port also served as an upstream of its own takes the protocol of whichever
    comes first; a backend's identities are those of its own upstream (its pods)."""
    upstreams = tuple(upstreams)
    backends: dict[ServiceKey, Upstream] | None = None  # for split backends
    seen: dict[str, UpstreamSpec] = {}
    for upstream in upstreams:
        http2 = _http2(upstream)
        name = naming.cluster(upstream.service.namespace, upstream.service.name, upstream.port)
        if name not in seen:
            seen[name] = (upstream.service, upstream.port, http2, upstream.identities, _settings(upstream))
        if upstream.split is None:
            continue
        if backends is None:
            backends = {u.service: u for u in upstreams}
        for backend, _ in upstream.split.backends:
            name = naming.cluster(backend.namespace, backend.name, upstream.port)
            if name not in seen:
                own = backends.get(backend)
                identities = own.identities if own is not None else ()
                seen[name] = (backend, upstream.port, http2, identities, _settings(own))
    return tuple(seen[name] for name in sorted(seen))


def _settings(upstream: Upstream | None) -> ClusterSettings | None:
    """The service's own settings (a split backend's are its own, not its apex's)."""
    if upstream is None or (upstream.connection is None and upstream.outlier_detection is None):
        return None
    return (upstream.connection, upstream.outlier_detection)


def _http2(upstream: Upstream) -> bool:
    return upstream.protocol == "grpc"


def local_clusters(policy: ProxyPolicy) -> list[Cluster]:
    """The clusters that do not depend on upstream services: the application's local
    ports, the original destination (egress passthrough, OSM Egress) and Envoy's own
    metrics."""
    out = [local_cluster(port) for port in policy.inbound]
    if needs_passthrough(policy):
        out.append(passthrough_cluster())
    out.append(metrics_cluster())
    return out


def needs_passthrough(policy: ProxyPolicy) -> bool:
    """Whether the class sends anything to original destinations: egress passthrough, or
    an OSM Egress allowing it somewhere outside the mesh."""
    return policy.egress_passthrough or bool(policy.egress)


def local_inputs(policy: ProxyPolicy) -> tuple[tuple[ServiceKey, int, int, str], ...]:
    """What `local_clusters` reads of the inbound ports: not who may call them, so a
    TrafficTarget change leaves the local clusters alone."""
    return tuple((p.service, p.port, p.target_port, p.protocol) for p in policy.inbound)


def clusters(policy: ProxyPolicy) -> list[Cluster]:
    """Every cluster of a proxy class, sorted by name."""
    out = upstream_clusters(policy) + local_clusters(policy)
    return sorted({c.name: c for c in out}.values(), key=lambda c: c.name)
