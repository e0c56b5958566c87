"""OSM's Egress in the outbound listener: the filter chains of what a class may reach
outside the mesh.

Per rule (one port, one protocol, of one client identity's Egresses):

- http: a chain on the destination port (and the allowed address ranges) running an HTTP
  connection manager with its routes inline, one virtual host per allowed host (routes
  per HTTPRouteGroup match, or every request), and a catch-all host answering 403;
- https: a chain on the port and ranges that also matches TLS with the allowed SNI names
  (the TLS inspector reads them, only on https ports), proxied as TCP;
- tcp: a chain on the port and ranges, proxied as TCP.

Every allowed connection goes to the original destination (`passthrough-outbound`, an
ORIGINAL_DST cluster): the application resolved the name and connected, the chains decide
whether it may. Routes are inline, not RDS: they are as much the class's as the chain
that holds them, and the listener is already keyed by the rules (one encode per distinct
set of rules, shared by every class allowed the same). Nothing here names an identity.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshcp._proto.envoy.config.core.v3 import CidrRange
from meshcp._proto.envoy.config.listener.v3 import (
    Filter,
    FilterChain,
    FilterChainMatch,
    ListenerFilter,
    ListenerFilterChainMatchPredicate,
    ListenerFilterChainMatchPredicateMatchSet,
)
from meshcp._proto.envoy.config.route.v3 import Route, RouteAction, RouteConfiguration, VirtualHost
from meshcp._proto.envoy.extensions.filters.listener.tls_inspector.v3 import TlsInspector
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
)
from meshcp._proto.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
from meshcp._proto.envoy.type.v3 import Int32Range
from meshcp.cache.encoding import pack
from meshcp.compile import naming
from meshcp.compile.http_routes import denied_virtual_host, route_match
from meshcp.policy.types import EgressHost, EgressRule
from meshcp.sidecar.envoy_parts import HCM, TCP_PROXY, network_filter, router_filter

TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"


def egress_chains(rules: Iterable[EgressRule], taken: set[tuple[int, str]]) -> list[FilterChain]:
    """The chains of `rules`. `taken`: the (port, address) pairs the mesh's own chains
    match; an Egress range that is exactly one of them is left to the mesh (Envoy refuses
    two chains with one match), and a rule left with no range at all has no chain."""
    chains = []
    for rule in rules:
        ranges = [r for r in rule.ip_ranges if (rule.port, r.split("/")[0]) not in taken or not _single(r)]
        if rule.ip_ranges and not ranges:
            continue
        name = f"egress:{rule.protocol}.{rule.port}"
        match = FilterChainMatch(destination_port=rule.port, prefix_ranges=[_cidr(r) for r in ranges])
        if rule.protocol == "http":
            filters = [_http_manager(rule)]
        else:
            if rule.protocol == "https":
                match.transport_protocol = "tls"
                match.server_names = list(rule.sni)
            filters = [_tcp_proxy(name)]
        chains.append(FilterChain(name=name, filter_chain_match=match, filters=filters))
    return chains


def tls_inspector(rules: Iterable[EgressRule]) -> ListenerFilter | None:
    """The TLS inspector, for SNI, on the https ports only: elsewhere it would wait for a
    client hello that a server-speaks-first protocol (SMTP, MySQL) never sends."""
    ports = sorted({rule.port for rule in rules if rule.protocol == "https"})
    if not ports:
        return None
    on = [
        ListenerFilterChainMatchPredicate(destination_port_range=Int32Range(start=p, end=p + 1))
        for p in ports
    ]
    https = (
        on[0]
        if len(on) == 1
        else ListenerFilterChainMatchPredicate(or_match=ListenerFilterChainMatchPredicateMatchSet(rules=on))
    )
    return ListenerFilter(
        name=TLS_INSPECTOR,
        typed_config=pack(TlsInspector()),
        filter_disabled=ListenerFilterChainMatchPredicate(not_match=https),
    )


def _single(cidr: str) -> bool:
    return cidr.endswith(("/32", "/128"))


def _cidr(text: str) -> CidrRange:
    address, _, length = text.partition("/")
    return CidrRange(address_prefix=address, prefix_len=int(length))


def _tcp_proxy(name: str) -> Filter:
    return network_filter(TCP_PROXY, TcpProxy(stat_prefix=name, cluster=naming.PASSTHROUGH_CLUSTER))


def _http_manager(rule: EgressRule) -> Filter:
    routes = RouteConfiguration(
        name=f"egress.{rule.port}",
        virtual_hosts=[*(_virtual_host(host) for host in rule.hosts), denied_virtual_host()],
        validate_clusters=False,
    )
    return network_filter(
        HCM,
        HttpConnectionManager(
            stat_prefix=f"egress.{rule.port}",
            codec_type=HttpConnectionManagerCodecType.AUTO,
            route_config=routes,
            http_filters=[router_filter()],
            normalize_path=True,
            merge_slashes=True,
            strip_any_host_port=True,
            strip_trailing_host_dot=True,
        ),
    )


def _virtual_host(host: EgressHost) -> VirtualHost:
    """The host's allowed requests; with `matches`, the others get the catch-all's 403."""
    action = RouteAction(cluster=naming.PASSTHROUGH_CLUSTER)
    matches = (None,) if host.matches is None else host.matches
    routes = [Route(match=route_match(m), route=action) for m in matches]
    if host.matches is not None:
        routes += denied_virtual_host().routes
    return VirtualHost(name=f"egress|{host.name}", domains=[host.name], routes=routes)
