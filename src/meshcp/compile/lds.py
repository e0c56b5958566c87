"""LDS: the outbound, inbound and Prometheus listeners of a proxy class.

Outbound (15001, traffic redirected from the application): one filter chain per upstream
service port matching the original destination (ClusterIP/32, or pod IPs of a headless
service) and port; HTTP goes through `rds-outbound.<port>`, TCP straight to the cluster.
Inbound (15003, traffic redirected to the pod): one chain per local service port,
matching its target port and SNI (and per target port one without SNI, for proxyless
gRPC clients), mTLS required (the proxy's own `service-cert`, callers
checked against the mesh's `root-cert`: names every proxy shares); HTTP via
`rds-inbound.<port>` and HTTP RBAC, TCP via network RBAC; beside them, the chains of OSM
IngressBackends (`compile.ingress`). Prometheus (15010): Envoy's own stats.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshcp._proto.envoy.config.core.v3 import CidrRange, TrafficDirection
from meshcp._proto.envoy.config.listener.v3 import (
    Filter,
    FilterChain,
    FilterChainMatch,
    Listener,
    ListenerFilter,
)
from meshcp._proto.envoy.config.rbac.v3 import Rbac, RbacAction
from meshcp._proto.envoy.config.route.v3 import Route, RouteAction, RouteMatch
from meshcp._proto.envoy.extensions.filters.http.rbac.v3 import Rbac as HttpRbac
from meshcp._proto.envoy.extensions.filters.listener.original_dst.v3 import OriginalDst
from meshcp._proto.envoy.extensions.filters.listener.tls_inspector.v3 import TlsInspector
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
    Rds,
)
from meshcp._proto.envoy.extensions.filters.network.rbac.v3 import Rbac as NetworkRbac
from meshcp._proto.envoy.extensions.filters.network.tcp_proxy.v3 import (
    TcpProxy,
    TcpProxyWeightedCluster,
    TcpProxyWeightedClusterClusterWeight,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import CommonTlsContext, DownstreamTlsContext
from meshcp.cache.encoding import pack
from meshcp.compile import naming
from meshcp.compile.common import sds
from meshcp.compile.egress import egress_chains, tls_inspector
from meshcp.compile.ingress import ingress_chain
from meshcp.compile.ratelimit import NETWORK_LOCAL_RATE_LIMIT, http_filter, limits_requests, network_limit
from meshcp.compile.rbac import tcp_rbac
from meshcp.policy.types import InboundPort, ProxyPolicy, Upstream
from meshcp.sidecar.envoy_parts import (
    ANY_ADDRESS,
    HCM,
    TCP_PROXY,
    ads,
    network_filter,
    plaintext_listener,
    router_filter,
    socket_address,
    static_http_manager,
    tls_socket,
)
from meshcp.sidecar.ports import INBOUND_PORT, OUTBOUND_PORT, PROMETHEUS_PATH, PROMETHEUS_PORT

NETWORK_RBAC = "envoy.filters.network.rbac"
HTTP_RBAC = "envoy.filters.http.rbac"


def _hcm(stat_prefix: str, route_config_name: str, *, rbac: bool, rate_limit: bool = False) -> Filter:
    """`rate_limit`: with the local rate limit filter, after RBAC (a denied request spends
    no token); the limits themselves are on the routes (`compile.ratelimit`)."""
    http_filters = []
    if rbac:  # deny by default; each route's RbacPerRoute says who may call it
        http_filters.append(
            HttpFilter(name=HTTP_RBAC, typed_config=pack(HttpRbac(rules=Rbac(action=RbacAction.ALLOW))))
        )
    if rate_limit:
        http_filters.append(http_filter(f"{stat_prefix}.rate_limit"))
    http_filters.append(router_filter())
    return network_filter(
        HCM,
        HttpConnectionManager(
            stat_prefix=stat_prefix,
            codec_type=HttpConnectionManagerCodecType.AUTO,
            rds=Rds(config_source=ads(), route_config_name=route_config_name),
            http_filters=http_filters,
            normalize_path=True,
            merge_slashes=True,
            strip_any_host_port=True,
            strip_trailing_host_dot=True,
        ),
    )


def _tcp_proxy(stat_prefix: str, upstream: Upstream) -> Filter:
    split = upstream.split
    if split is not None:
        return network_filter(
            TCP_PROXY,
            TcpProxy(
                stat_prefix=stat_prefix,
                weighted_clusters=TcpProxyWeightedCluster(
                    clusters=[
                        TcpProxyWeightedClusterClusterWeight(
                            name=naming.cluster(b.namespace, b.name, upstream.port), weight=weight
                        )
                        for b, weight in split.backends
                    ]
                ),
            ),
        )
    service = upstream.service
    return network_filter(
        TCP_PROXY,
        TcpProxy(
            stat_prefix=stat_prefix, cluster=naming.cluster(service.namespace, service.name, upstream.port)
        ),
    )


def _ranges(addresses: Iterable[str]) -> list[CidrRange]:
    return [CidrRange(address_prefix=a, prefix_len=128 if ":" in a else 32) for a in addresses]


def _tcp_chain(upstream: Upstream, addresses: list[str]) -> FilterChain:
    """A TCP service port: its own chain, to its own cluster (with pruning, a service this
    class may not reach has no cluster, and the connection is closed)."""
    name = naming.cluster(upstream.service.namespace, upstream.service.name, upstream.port)
    match = FilterChainMatch(destination_port=upstream.port, prefix_ranges=_ranges(addresses))
    return FilterChain(
        name=f"outbound:{name}", filter_chain_match=match, filters=[_tcp_proxy(f"outbound.{name}", upstream)]
    )


def _denied_filters(stat_prefix: str) -> list[Filter]:
    """Close the connection: the RBAC filter denies; Envoy requires a terminal filter after
    it, which is never reached."""
    return [
        network_filter(
            NETWORK_RBAC, NetworkRbac(stat_prefix=f"{stat_prefix}.", rules=Rbac(action=RbacAction.ALLOW))
        ),
        network_filter(TCP_PROXY, TcpProxy(stat_prefix=stat_prefix, cluster=naming.PASSTHROUGH_CLUSTER)),
    ]


def outbound_chains(policy: ProxyPolicy) -> list[FilterChain]:
    """The outbound listener's chains: one per HTTP port, one per TCP service port.

    Every HTTP service port shares one chain per port (`outbound:http.<port>`) matching all
    their addresses: they all run the same HTTP connection manager on
    `rds-outbound.<port>`, whose virtual hosts tell the services apart by Host and end, with
    pruning, in a 403 for the services this class may not reach. A service costs the
    listener an address, not a chain (at 1,000 services most of the listener's bytes).

    The listener depends on what it matches alone (with pruning, every mesh service), not
    on what the class may reach, so classes share it. An address already matched on a
    port (a pod IP behind two headless services) is matched once, by the first service in
    name order: Envoy refuses two chains with the same match.
    """
    taken: set[tuple[int, str]] = set()
    http: dict[int, list[str]] = {}
    chains: list[FilterChain] = []
    ordered = sorted(policy.matched_upstreams, key=lambda u: (u.service.namespace, u.service.name, u.port))
    for upstream in ordered:
        fresh = [a for a in upstream.addresses if (upstream.port, a) not in taken]
        taken.update((upstream.port, a) for a in fresh)
        if upstream.is_http:
            http.setdefault(upstream.port, []).extend(fresh)
        elif fresh:  # a headless service without ready pods has nothing to match
            chains.append(_tcp_chain(upstream, fresh))
    for port, addresses in sorted(http.items()):
        if addresses:
            match = FilterChainMatch(destination_port=port, prefix_ranges=_ranges(addresses))
            manager = _hcm(f"outbound.{port}", naming.outbound_routes(port), rbac=False)
            chains.append(
                FilterChain(name=f"outbound:http.{port}", filter_chain_match=match, filters=[manager])
            )
    if policy.egress:  # OSM Egresses: the identity's way out of the mesh (`compile.egress`)
        chains += egress_chains(policy.egress, taken)
    return chains


def outbound_listener(policy: ProxyPolicy) -> Listener:
    """`outbound_chains`, and what an unmatched destination gets: egress passthrough, or
    nothing (Envoy needs at least one chain, so a proxy with nowhere to go gets a default
    chain that closes every connection; without passthrough, a destination no chain
    matches, mesh service or Egress, is closed)."""
    chains = outbound_chains(policy)
    default = None
    if policy.egress_passthrough:
        default = FilterChain(
            name="outbound:passthrough",
            filters=[
                network_filter(
                    TCP_PROXY, TcpProxy(stat_prefix="passthrough", cluster=naming.PASSTHROUGH_CLUSTER)
                )
            ],
        )
    elif not chains:
        default = FilterChain(name="outbound:denied", filters=_denied_filters("outbound.denied"))
    return Listener(
        name=naming.OUTBOUND_LISTENER,
        address=socket_address(ANY_ADDRESS, OUTBOUND_PORT),
        traffic_direction=TrafficDirection.OUTBOUND,
        listener_filters=[
            ListenerFilter(name="envoy.filters.listener.original_dst", typed_config=pack(OriginalDst())),
            *filter(None, [tls_inspector(policy.egress)]),
        ],
        filter_chains=sorted(chains, key=lambda c: c.name),
        default_filter_chain=default,
    )


def _inbound_chain(port: InboundPort, policy: ProxyPolicy) -> FilterChain:
    service = port.service
    name = naming.local_cluster(service.namespace, service.name, port.port)
    tls = DownstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificate_sds_secret_configs=[sds(naming.SERVICE_CERT)],
            validation_context_sds_secret_config=sds(naming.ROOT_CERT),
            alpn_protocols=["h2", "http/1.1"] if port.is_http else [],
        ),
        require_client_certificate=True,
    )
    if port.is_http:
        manager = _hcm(
            f"inbound.{port.port}",
            naming.inbound_routes(port.port),
            rbac=True,
            rate_limit=limits_requests(port),
        )
        filters = [manager]
    else:
        rules = tcp_rbac(port.tcp_sources, port.any_source, policy.trust_domain)
        filters = [
            network_filter(NETWORK_RBAC, NetworkRbac(stat_prefix=f"inbound.{name}.", rules=rules)),
            network_filter(TCP_PROXY, TcpProxy(stat_prefix=f"inbound.{name}", cluster=name)),
        ]
    limits = port.rate_limits
    if limits is not None and limits.tcp is not None:  # every connection to the port, HTTP or not
        limit = network_filter(
            NETWORK_LOCAL_RATE_LIMIT, network_limit(f"inbound.{name}.rate_limit", limits.tcp)
        )
        filters.insert(len(filters) - 1, limit)
    return FilterChain(
        name=f"inbound:{name}",
        filter_chain_match=FilterChainMatch(
            destination_port=port.target_port,
            server_names=[naming.service_host(service.namespace, service.name)],
            transport_protocol="tls",
        ),
        transport_socket=tls_socket(tls),
        filters=filters,
    )


def _without_sni(mesh: list[FilterChain], others: list[FilterChain]) -> list[FilterChain]:
    """Per target port, a chain for mesh TLS that names no server: proxyless gRPC clients
    (grpcio sends no SNI) reach a sidecar through it.

    It is the port's SNI chain without `server_names`; Envoy prefers a chain naming the
    SNI a client sends, so sidecars keep landing on theirs (a client sending a name no
    chain has lands here, under the same mTLS and RBAC). Where several services share the
    target port, their chains must agree on everything but the SNI (HTTP services on one
    service port: one `rds-inbound.<port>`, whose virtual hosts pick the service, and its
    RBAC, by the request's authority); otherwise who the client calls is ambiguous and the
    port gets no SNI-less chain. Nor does it where an IngressBackend's https chain without
    SNI names already takes such connections (Envoy refuses two chains with one match)."""
    by_port: dict[int, list[FilterChain]] = {}
    for chain in mesh:
        assert chain.filter_chain_match is not None
        by_port.setdefault(chain.filter_chain_match.destination_port or 0, []).append(chain)
    taken = [c.filter_chain_match for c in others]
    out = []
    for port, chains in sorted(by_port.items()):
        first = chains[0]
        if any(c.filters != first.filters or c.transport_socket != first.transport_socket for c in chains):
            continue
        match = FilterChainMatch(destination_port=port, transport_protocol="tls")
        if match in taken:
            continue
        out.append(
            FilterChain(
                name=f"inbound-no-sni:{port}",
                filter_chain_match=match,
                transport_socket=first.transport_socket,
                filters=first.filters,
            )
        )
    return out


def inbound_chains(policy: ProxyPolicy) -> list[FilterChain]:
    """A chain per local service port (mTLS, by SNI) and per target port for mesh clients
    sending no SNI (`_without_sni`), and per port an OSM IngressBackend admits traffic from
    outside the mesh to (`compile.ingress`)."""
    mesh = [_inbound_chain(p, policy) for p in policy.inbound]
    others = []
    if policy.ingress:
        ports = {(p.service, p.port): p for p in policy.inbound}
        others = [
            ingress_chain(rule, ports[(rule.service, rule.port)], policy.trust_domain)
            for rule in policy.ingress
        ]
    return sorted(mesh + _without_sni(mesh, others) + others, key=lambda c: c.name)


def inbound_listener(policy: ProxyPolicy) -> Listener:
    return Listener(
        name=naming.INBOUND_LISTENER,
        address=socket_address(ANY_ADDRESS, INBOUND_PORT),
        traffic_direction=TrafficDirection.INBOUND,
        listener_filters=[
            ListenerFilter(name="envoy.filters.listener.original_dst", typed_config=pack(OriginalDst())),
            ListenerFilter(name="envoy.filters.listener.tls_inspector", typed_config=pack(TlsInspector())),
        ],
        filter_chains=inbound_chains(policy),
    )


def prometheus_listener() -> Listener:
    """Envoy's stats in Prometheus format, without exposing the admin API."""
    route = Route(match=RouteMatch(path=PROMETHEUS_PATH), route=RouteAction(cluster=naming.METRICS_CLUSTER))
    manager = static_http_manager("prometheus", [route])
    return plaintext_listener(naming.PROMETHEUS_LISTENER, PROMETHEUS_PORT, network_filter(HCM, manager))


def listeners(policy: ProxyPolicy) -> list[Listener]:
    out = [outbound_listener(policy), prometheus_listener()]
    if policy.inbound:
        out.append(inbound_listener(policy))
    return sorted(out, key=lambda listener: listener.name)
