"""Proxyless gRPC: a proxy policy in the shape gRPC's own xDS client accepts.

gRPC (C-core, Java, Go) reads a subset of Envoy's API and rejects what it does not
know, so a proxyless node gets resources of their own shape, from the same policy as a
sidecar of the same identity (docs/proxyless-grpc.md):

- per upstream service port, `api_listener` Listeners named as clients may dial it
  (`svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`, each with `:port`, and
  without it for the service's default port), an HCM whose only HTTP filter is the
  router, and its routes over RDS: one virtual host whose domains are those names;
- with pruning, the same names of each mesh service port the client may not reach, whose
  HCM aborts every call with PERMISSION_DENIED (the fault filter before the router) on
  one shared route configuration to one empty cluster: the sidecar's local 403;
- per upstream cluster, EDS with ROUND_ROBIN and mTLS through certificate-provider
  instances (gRPC has no SDS) and the SANs of the service's identities;
- per endpoint set, a ClusterLoadAssignment with one weighted locality (gRPC ignores a
  locality without a weight);
- for servers, `grpc/server?xds.resource.listening_address=<addr>:<port>` Listeners on
  the wildcard addresses: mTLS required, and RBAC from the TrafficTargets before the
  router (gRPC supports only the RBAC, fault and router filters, router last).

Nothing here names a secret: the certificate provider instance is the bootstrap's
(`sidecar.grpc_bootstrap.CERTIFICATE_PROVIDER`), so the resources are identity-free like the sidecar's.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import betterproto2

from meshcp._proto.envoy.config.cluster.v3 import (
    Cluster,
    ClusterDiscoveryType,
    ClusterEdsClusterConfig,
    ClusterLbPolicy,
)
from meshcp._proto.envoy.config.core.v3 import Locality
from meshcp._proto.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    LbEndpoint,
    LocalityLbEndpoints,
)
from meshcp._proto.envoy.config.endpoint.v3 import (
    Endpoint as EnvoyEndpoint,
)
from meshcp._proto.envoy.config.listener.v3 import ApiListener, Filter, FilterChain, Listener
from meshcp._proto.envoy.config.route.v3 import (
    NonForwardingAction,
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
    WeightedCluster,
    WeightedClusterClusterWeight,
)
from meshcp._proto.envoy.extensions.filters.http.fault.v3 import FaultAbort, HttpFault
from meshcp._proto.envoy.extensions.filters.http.rbac.v3 import Rbac as HttpRbac
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpFilter,
    Rds,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateProviderPluginInstance,
    CertificateValidationContext,
    CommonTlsContext,
    DownstreamTlsContext,
    UpstreamTlsContext,
)
from meshcp._proto.envoy.type.matcher.v3 import StringMatcher
from meshcp._proto.envoy.type.v3 import FractionalPercent, FractionalPercentDenominatorType
from meshcp.cache.encoding import pack
from meshcp.compile import naming
from meshcp.compile.cds import UpstreamSpec, upstream_specs
from meshcp.compile.common import principal_names
from meshcp.compile.http_routes import route_match
from meshcp.compile.rbac import http_rbac
from meshcp.identity import Identity
from meshcp.policy.types import Endpoint, InboundPort, ProxyPolicy, ServiceKey, SplitRoute, Upstream
from meshcp.sidecar.envoy_parts import HCM, ads, router_filter, socket_address, tls_socket
from meshcp.sidecar.grpc_bootstrap import CERTIFICATE_PROVIDER, SERVER_LISTENER_TEMPLATE

#: The wildcard addresses a proxyless server's listeners are served for, whichever pod of
#: the class it is; a server bound to its pod's IP gets listeners of that IP too.
SERVER_ADDRESSES = ("0.0.0.0", "[::]")
HTTP_RBAC = "envoy.filters.http.rbac"
#: Prefix of every proxyless route configuration (clusters and assignments keep the
#: sidecar's names: the same service port is the same thing to both).
ROUTE_PREFIX = "grpc-routes:"
HTTP_FAULT = "envoy.filters.http.fault"
#: The one route configuration of every denied listener (no cluster name has no `/`).
DENIED_ROUTE = f"{ROUTE_PREFIX}denied"
#: gRPC resolves a route's cluster before any call, so the denied route names one that
#: exists, with no endpoints: the fault filter answers before a pick would need one.
DENIED_CLUSTER = "grpc-denied"
#: gRPC's status code PERMISSION_DENIED, what the destination's RBAC would answer.
PERMISSION_DENIED = 7


def grpc_upstreams(upstreams: Iterable[Upstream]) -> tuple[Upstream, ...]:
    """The upstreams gRPC can call: HTTP/2 services (gRPC or HTTP ports)."""
    return tuple(u for u in upstreams if u.is_http)


def default_ports(upstreams: Iterable[Upstream]) -> dict[ServiceKey, int]:
    """The port a target without `:port` means, per service: its lowest gRPC port, else
    its lowest HTTP port."""
    found: dict[ServiceKey, tuple[bool, int]] = {}
    for upstream in upstreams:
        if not upstream.is_http:
            continue
        rank = (upstream.protocol != "grpc", upstream.port)
        held = found.get(upstream.service)
        if held is None or rank < held:
            found[upstream.service] = rank
    return {service: rank[1] for service, rank in found.items()}


def target_names(upstream: Upstream, client_namespace: str, default: bool) -> list[str]:
    """The names a client in `client_namespace` may dial the upstream by (`xds:///NAME`):
    the short name only in its own namespace, each with `:port`, and without it when this
    is the service's default port."""
    service = upstream.service
    hosts = [naming.service_host(service.namespace, service.name)]
    hosts += [f"{service.name}.{service.namespace}.svc", f"{service.name}.{service.namespace}"]
    if service.namespace == client_namespace:
        hosts.append(service.name)
    names = [f"{host}:{upstream.port}" for host in hosts]
    if default:
        names += hosts
    return sorted(names)


def route_name(upstream: Upstream) -> str:
    return f"{ROUTE_PREFIX}{naming.cluster(upstream.service.namespace, upstream.service.name, upstream.port)}"


def client_listener(name: str, route_config: str) -> Listener:
    """An `api_listener` Listener: the HCM gRPC reads (RDS over ADS, the router only)."""
    manager = HttpConnectionManager(
        rds=Rds(config_source=ads(), route_config_name=route_config),
        http_filters=[router_filter()],
    )
    return Listener(name=name, api_listener=ApiListener(api_listener=pack(manager)))


def denied_listener(name: str) -> Listener:
    """An `api_listener` whose every call gets PERMISSION_DENIED from gRPC itself: the
    fault filter (gRFC A33: abort with a gRPC status, 100%) before the router."""
    abort = FaultAbort(
        grpc_status=PERMISSION_DENIED,
        percentage=FractionalPercent(numerator=100, denominator=FractionalPercentDenominatorType.HUNDRED),
    )
    fault = HttpFilter(name=HTTP_FAULT, typed_config=pack(HttpFault(abort=abort)))
    manager = HttpConnectionManager(
        rds=Rds(config_source=ads(), route_config_name=DENIED_ROUTE),
        http_filters=[fault, router_filter()],
    )
    return Listener(name=name, api_listener=ApiListener(api_listener=pack(manager)))


def client_listeners(
    upstreams: Sequence[Upstream], client_namespace: str, denied: Sequence[Upstream] = ()
) -> list[Listener]:
    """Every api_listener of a client: the names of each upstream port, and those of each
    `denied` port that no upstream port already has, sorted."""
    defaults = default_ports(upstreams)
    listeners = [
        client_listener(name, route_name(upstream))
        for upstream in grpc_upstreams(upstreams)
        for name in target_names(upstream, client_namespace, defaults.get(upstream.service) == upstream.port)
    ]
    taken = {listener.name for listener in listeners}
    denied_defaults = default_ports(denied)
    denied_names = {
        name
        for upstream in grpc_upstreams(denied)
        for name in target_names(
            upstream, client_namespace, denied_defaults.get(upstream.service) == upstream.port
        )
    }
    listeners += [denied_listener(name) for name in sorted(denied_names - taken)]
    return sorted(listeners, key=lambda listener: listener.name)


def denied_upstreams(policy: ProxyPolicy) -> tuple[Upstream, ...]:
    """With pruning, the mesh's gRPC-callable service ports this class may not reach."""
    if policy.listener_upstreams is None:
        return ()
    reachable = {(u.service, u.port) for u in policy.upstreams}
    return tuple(u for u in grpc_upstreams(policy.listener_upstreams) if (u.service, u.port) not in reachable)


def denied_route_configuration() -> RouteConfiguration:
    """The route of every denied listener: any authority, to the empty cluster (gRPC
    accepts only routes to clusters; the fault filter answers first)."""
    return RouteConfiguration(
        name=DENIED_ROUTE,
        virtual_hosts=[
            VirtualHost(
                name="denied",
                domains=["*"],
                routes=[Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster=DENIED_CLUSTER))],
            )
        ],
    )


def denied_cluster() -> Cluster:
    """The denied route's cluster: EDS with an empty assignment, so gRPC's config is
    complete without waiting for a cluster that does not exist."""
    return Cluster(
        name=DENIED_CLUSTER,
        type=ClusterDiscoveryType.EDS,
        eds_cluster_config=ClusterEdsClusterConfig(eds_config=ads()),
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
    )


def denied_resources(denied: Sequence[Upstream]) -> list[betterproto2.Message]:
    """The route, cluster and (empty) assignment shared by the denied listeners; none
    when nothing is denied."""
    if not grpc_upstreams(denied):
        return []
    return [
        denied_route_configuration(),
        denied_cluster(),
        ClusterLoadAssignment(cluster_name=DENIED_CLUSTER),
    ]


def route_configuration(upstream: Upstream, default: bool) -> RouteConfiguration:
    """One virtual host whose domains are every name of the port (the authority gRPC
    sends is the name dialled, port included); a split's matches first, then the rest."""
    domains = target_names(upstream, upstream.service.namespace, default)
    return RouteConfiguration(
        name=route_name(upstream),
        virtual_hosts=[VirtualHost(name=route_name(upstream), domains=domains, routes=_routes(upstream))],
    )


def route_configurations(upstreams: Sequence[Upstream]) -> list[RouteConfiguration]:
    defaults = default_ports(upstreams)
    return [
        route_configuration(upstream, defaults.get(upstream.service) == upstream.port)
        for upstream in grpc_upstreams(upstreams)
    ]


def _routes(upstream: Upstream) -> list[Route]:
    service, split = upstream.service, upstream.split
    apex = RouteAction(cluster=naming.cluster(service.namespace, service.name, upstream.port))
    if split is None:
        return [Route(match=RouteMatch(prefix="/"), route=apex)]
    weighted = RouteAction(weighted_clusters=_weighted(split, upstream.port))
    if not split.matches:
        return [Route(match=RouteMatch(prefix="/"), route=weighted)]
    routes = [Route(match=route_match(match), route=weighted) for match in split.matches]
    routes.append(Route(match=RouteMatch(prefix="/"), route=apex))
    return routes


def _weighted(split: SplitRoute, port: int) -> WeightedCluster:
    """Backends by weight; zero-weight backends are left out (the policy guarantees a
    positive sum)."""
    return WeightedCluster(
        clusters=[
            WeightedClusterClusterWeight(name=naming.cluster(b.namespace, b.name, port), weight=weight)
            for b, weight in split.backends
            if weight > 0
        ]
    )


def _provider() -> CertificateProviderPluginInstance:
    return CertificateProviderPluginInstance(instance_name=CERTIFICATE_PROVIDER)


def _validation(identities: Iterable[Identity], trust_domain: str) -> CertificateValidationContext:
    """The mesh's trust bundle from the provider instance; with `identities`, the server
    must present one of them (by SPIFFE URI or DNS SAN). gRPC reads the older
    `match_subject_alt_names` (checked against URI and DNS SANs alike), which Envoy's API
    marks deprecated: the warning is for Envoy users, not for this resource."""
    names = sorted({name for identity in set(identities) for name in principal_names(identity, trust_domain)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return CertificateValidationContext(
            ca_certificate_provider_instance=_provider(),
            match_subject_alt_names=[StringMatcher(exact=name) for name in names],
        )


def cluster(spec: UpstreamSpec, trust_domain: str) -> Cluster:
    """An upstream service port for gRPC: EDS, round robin, mTLS with its SANs."""
    service, port, _, identities, _ = spec
    return Cluster(
        name=naming.cluster(service.namespace, service.name, port),
        type=ClusterDiscoveryType.EDS,
        eds_cluster_config=ClusterEdsClusterConfig(eds_config=ads()),
        lb_policy=ClusterLbPolicy.ROUND_ROBIN,
        transport_socket=tls_socket(
            UpstreamTlsContext(
                common_tls_context=CommonTlsContext(
                    tls_certificate_provider_instance=_provider(),
                    validation_context=_validation(identities, trust_domain),
                )
            )
        ),
    )


def cluster_specs(upstreams: Sequence[Upstream]) -> tuple[UpstreamSpec, ...]:
    """The clusters of the gRPC-callable upstreams (split backends included)."""
    return upstream_specs(grpc_upstreams(upstreams))


def load_assignment(service: ServiceKey, port: int, endpoints: Iterable[Endpoint]) -> ClusterLoadAssignment:
    """`<ns>/<svc>|<port>`'s endpoints in one locality of weight 1: gRPC's weighted-target
    balancer drops localities without a weight, and has no use for an empty one."""
    ordered = sorted(set(endpoints), key=lambda e: (e.address, e.port))
    localities = []
    if ordered:
        localities.append(
            LocalityLbEndpoints(
                locality=Locality(region="meshcp", zone=service.namespace),
                load_balancing_weight=1,
                lb_endpoints=[
                    LbEndpoint(endpoint=EnvoyEndpoint(address=socket_address(e.address, e.port)))
                    for e in ordered
                ],
            )
        )
    return ClusterLoadAssignment(
        cluster_name=naming.cluster(service.namespace, service.name, port), endpoints=localities
    )


def server_listener_name(address: str, port: int) -> str:
    return SERVER_LISTENER_TEMPLATE % f"{address}:{port}"


def server_listeners(policy: ProxyPolicy, pod_addresses: Iterable[str] = ()) -> list[Listener]:
    """The listeners of a proxyless server: per HTTP inbound port (its target port, where
    the application listens), one per wildcard address and per address of the class's
    proxyless pods (`pod_addresses`), mTLS required, RBAC from the TrafficTargets."""
    addresses = [*SERVER_ADDRESSES, *(f"[{a}]" if ":" in a else a for a in sorted(set(pod_addresses)))]
    listeners = []
    for port in policy.inbound:
        if not port.is_http:
            continue
        for address in addresses:
            listeners.append(_server_listener(port, address, policy.trust_domain))
    return sorted(listeners, key=lambda listener: listener.name)


def _server_listener(port: InboundPort, address: str, trust_domain: str) -> Listener:
    rbac = http_rbac(port.http_rules, trust_domain)
    manager = HttpConnectionManager(
        route_config=RouteConfiguration(
            name=f"grpc-inbound.{port.target_port}",
            virtual_hosts=[
                VirtualHost(
                    name="inbound",
                    domains=["*"],
                    routes=[Route(match=RouteMatch(prefix="/"), non_forwarding_action=NonForwardingAction())],
                )
            ],
        ),
        http_filters=[HttpFilter(name=HTTP_RBAC, typed_config=pack(HttpRbac(rules=rbac))), router_filter()],
    )
    tls = DownstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificate_provider_instance=_provider(),
            validation_context=_validation((), trust_domain),
        ),
        require_client_certificate=True,
    )
    host = address.strip("[]")
    return Listener(
        name=server_listener_name(address, port.target_port),
        address=socket_address(host, port.target_port),
        filter_chains=[
            FilterChain(
                filters=[Filter(name=HCM, typed_config=pack(manager))],
                transport_socket=tls_socket(tls),
            )
        ],
    )
