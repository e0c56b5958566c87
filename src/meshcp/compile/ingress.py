"""OSM's IngressBackend in the inbound listener: the chains that admit traffic from outside
the mesh to a local service port, beside the mesh's own chain on the same port.

Per rule (one port the application listens on, one IngressBackend):

- http: a chain on the port for plain text (`transport_protocol: raw_buffer`). Mesh
  clients always speak mTLS, so they never land here, and the mesh's chain (TLS, matched
  by the service's SNI name) never sees plain text: both kinds of client share the port.
- https: a chain on the port for TLS with the IngressBackend's SNI names (none: any name
  but the mesh's own, whose chain names it and so is the more specific match; with names,
  another name lands on the mesh's chain without SNI, `lds._without_sni`). TLS ends
  here with the pod's own certificate (`service-cert`); the client must present a
  certificate of the mesh's CA (`root-cert`) unless `skipClientCertValidation`.

Both run an HTTP connection manager whose one route, inline, goes to the service's local
cluster, behind the RBAC filter: the connection's peer address must be in the source
ranges (`direct_remote_ip`, the socket's own peer, which neither X-Forwarded-For nor a
PROXY header can change), and for https the certificate's identity one of the principals;
any other request gets 403. The service's local rate limits (UpstreamTrafficSetting)
apply as on the mesh's chain: its pods accept that many, whoever sends. Nothing here is
shared with other classes' listeners: it is the class's inbound listener, keyed by its
rules (`runtime.reconcile`).
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta

from meshcp._proto.envoy.config.core.v3 import CidrRange
from meshcp._proto.envoy.config.listener.v3 import Filter, FilterChain, FilterChainMatch
from meshcp._proto.envoy.config.rbac.v3 import Permission, Policy, Principal, PrincipalSet, Rbac, RbacAction
from meshcp._proto.envoy.config.route.v3 import (
    RouteAction,
    RouteConfiguration,
    VirtualHost,
)
from meshcp._proto.envoy.extensions.filters.http.rbac.v3 import Rbac as HttpRbac
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpConnectionManagerCodecType,
    HttpFilter,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import CommonTlsContext, DownstreamTlsContext
from meshcp.cache.encoding import pack
from meshcp.compile import naming
from meshcp.compile.common import principals, sds
from meshcp.compile.ratelimit import (
    NETWORK_LOCAL_RATE_LIMIT,
    host_limit,
    http_filter,
    limited_routes,
    limits_requests,
    network_limit,
)
from meshcp.policy.types import InboundPort, IngressRule
from meshcp.sidecar.envoy_parts import HCM, network_filter, router_filter, tls_socket

HTTP_RBAC = "envoy.filters.http.rbac"
NO_TIMEOUT = timedelta(0)  # gRPC streams must not be cut (as on the mesh's chain)


def chain_name(rule: IngressRule) -> str:
    """`ingress:<ns>/<svc>|<port>|local`: the local cluster it admits traffic to."""
    return f"ingress:{naming.local_cluster(rule.service.namespace, rule.service.name, rule.port)}"


def ingress_chain(rule: IngressRule, port: InboundPort, trust_domain: str) -> FilterChain:
    """The chain of `rule`; `port`: the class's inbound port it admits to (its protocol and
    the service's local rate limits)."""
    name = naming.local_cluster(rule.service.namespace, rule.service.name, rule.port)
    https = rule.protocol == "https"
    match = FilterChainMatch(
        destination_port=rule.target_port,
        transport_protocol="tls" if https else "raw_buffer",
        server_names=list(rule.sni_hosts),
    )
    filters = [_manager(rule, port, name, trust_domain)]
    limits = port.rate_limits
    if limits is not None and limits.tcp is not None:
        limit = network_limit(f"ingress.{name}.rate_limit", limits.tcp)
        filters.insert(0, network_filter(NETWORK_LOCAL_RATE_LIMIT, limit))
    return FilterChain(
        name=chain_name(rule),
        filter_chain_match=match,
        transport_socket=tls_socket(_tls(rule)) if https else None,
        filters=filters,
    )


def _tls(rule: IngressRule) -> DownstreamTlsContext:
    return DownstreamTlsContext(
        common_tls_context=CommonTlsContext(
            tls_certificate_sds_secret_configs=[sds(naming.SERVICE_CERT)],
            validation_context_sds_secret_config=sds(naming.ROOT_CERT) if rule.validate_client else None,
            alpn_protocols=["h2", "http/1.1"],
        ),
        require_client_certificate=rule.validate_client,
    )


def rbac(rule: IngressRule, trust_domain: str) -> Rbac:
    """Who is admitted: a peer address in the ranges (when the rule has any) and, for
    https, a certificate of one of the principals (when it names some). Ranges or
    principals that resolve to nothing admit nobody: the policy is left out and every
    request denied."""
    if rule.source_ranges == () or rule.principals == ():
        return Rbac(action=RbacAction.ALLOW)
    ids: list[Principal] = []
    if rule.source_ranges is not None:
        ids.append(_any_of([Principal(direct_remote_ip=_cidr(r)) for r in rule.source_ranges]))
    if rule.principals is not None:
        ids.append(_any_of(principals(rule.principals, trust_domain)))
    if not ids:
        admitted = Principal(any=True)
    else:
        admitted = ids[0] if len(ids) == 1 else Principal(and_ids=PrincipalSet(ids=ids))
    policy = Policy(permissions=[Permission(any=True)], principals=[admitted])
    return Rbac(action=RbacAction.ALLOW, policies={"ingress": policy})


def _any_of(ids: list[Principal]) -> Principal:
    return ids[0] if len(ids) == 1 else Principal(or_ids=PrincipalSet(ids=ids))


def _cidr(text: str) -> CidrRange:
    network = ipaddress.ip_network(text)
    return CidrRange(address_prefix=str(network.network_address), prefix_len=network.prefixlen)


def _manager(rule: IngressRule, port: InboundPort, cluster: str, trust_domain: str) -> Filter:
    stat_prefix = f"ingress.{rule.target_port}"
    http_filters = [HttpFilter(name=HTTP_RBAC, typed_config=pack(HttpRbac(rules=rbac(rule, trust_domain))))]
    if limits_requests(port):
        http_filters.append(http_filter(f"{stat_prefix}.rate_limit"))
    http_filters.append(router_filter())
    routes = RouteConfiguration(
        name=f"ingress.{rule.target_port}",
        virtual_hosts=[_virtual_host(port, cluster)],
        validate_clusters=False,
    )
    return network_filter(
        HCM,
        HttpConnectionManager(
            stat_prefix=stat_prefix,
            codec_type=HttpConnectionManagerCodecType.AUTO,
            route_config=routes,
            http_filters=http_filters,
            normalize_path=True,
            merge_slashes=True,
            strip_any_host_port=True,
            strip_trailing_host_dot=True,
        ),
    )


def _virtual_host(port: InboundPort, cluster: str) -> VirtualHost:
    """Every request to the application; with the service's local rate limits, its limit
    on the host and each `httpRoutes` path's on a route of its own, as on `rds-inbound`."""
    action = RouteAction(cluster=cluster, timeout=NO_TIMEOUT if port.protocol == "grpc" else None)
    return VirtualHost(
        name=f"ingress|{cluster}",
        domains=["*"],
        routes=limited_routes(port, action, f"ingress.{cluster}", {}),
        typed_per_filter_config=host_limit(port, f"ingress.{cluster}"),
    )
