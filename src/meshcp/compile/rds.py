"""RDS: outbound routes per port (by Host to each service, splits by weight) and inbound
routes per local port (to the application, with per-route RBAC)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import timedelta

from meshcp._proto.envoy.config.route.v3 import (
    RetryPolicy,
    RetryPolicyRetryBackOff,
    Route,
    RouteAction,
    RouteConfiguration,
    VirtualHost,
    WeightedCluster,
    WeightedClusterClusterWeight,
)
from meshcp._proto.envoy.extensions.filters.http.rbac.v3 import Rbac as HttpRbac
from meshcp._proto.envoy.extensions.filters.http.rbac.v3 import RbacPerRoute
from meshcp.cache.encoding import canonical_bytes, pack
from meshcp.compile import naming
from meshcp.compile.http_routes import denied_virtual_host, route_match
from meshcp.compile.ratelimit import host_limit, limited_routes
from meshcp.compile.rbac import http_rbac
from meshcp.model.osm_policy import RetryPolicy as OsmRetryPolicy
from meshcp.policy.types import InboundPort, ProxyPolicy, ServiceKey, Upstream

RBAC_FILTER = "envoy.filters.http.rbac"
#: The group and match of the catch-all route in per-route stats: no HTTPRouteGroup (a DNS
#: name) is called "*".
ANY_ROUTE = "*"
_NOT_IN_STAT_TOKEN = re.compile(r"[^A-Za-z0-9_*-]")
NO_TIMEOUT = timedelta(0)  # gRPC streams and long polls must not be cut


def domains(service: ServiceKey, port: int, addresses: tuple[str, ...], client_namespace: str) -> list[str]:
    """Every name a client may use for a service; short names only in its own namespace
    (two namespaces may both have a `bookstore`)."""
    names = [f"{service.name}.{service.namespace}", f"{service.name}.{service.namespace}.svc"]
    names.append(naming.service_host(service.namespace, service.name))
    if service.namespace == client_namespace:
        names.insert(0, service.name)
    names += [a for a in addresses if a]
    return [variant for name in names for variant in (name, f"{name}:{port}")]


def route_stat_prefix(group: str, match: str) -> str:
    """`<group>/<match>`, the `stat_prefix` of an outbound route with per-route stats.

    Envoy counts the route's requests as `vhost.<virtual host>.route.<prefix>.<stat>`,
    where the virtual host is the upstream cluster's name (`<ns>/<svc>|<port>`); the
    sidecar's tags (`sidecar.bootstrap`) take the destination, `route_group` and
    `route_match` from that name. Envoy's tags split stat names at '.', so in the prefix
    every character but letters, digits, '-', '_' and '*' becomes '_' (a group
    `books.v1` is counted as `books_v1`).
    """
    return f"{_NOT_IN_STAT_TOKEN.sub('_', group)}/{_NOT_IN_STAT_TOKEN.sub('_', match)}"


def _action(upstream: Upstream, weighted: bool) -> RouteAction:
    timeout = NO_TIMEOUT if upstream.protocol == "grpc" else None
    if weighted and upstream.split is not None:
        clusters = [
            WeightedClusterClusterWeight(
                name=naming.cluster(b.namespace, b.name, upstream.port), weight=weight
            )
            for b, weight in upstream.split.backends
        ]
        return RouteAction(weighted_clusters=WeightedCluster(clusters=clusters), timeout=timeout)
    service = upstream.service
    return RouteAction(
        cluster=naming.cluster(service.namespace, service.name, upstream.port), timeout=timeout
    )


def outbound_virtual_host(upstream: Upstream, client_namespace: str) -> VirtualHost:
    """The routes of one upstream: a split's matches (weighted), then, with per-route stats,
    one route per counted HTTPRouteGroup match, then the catch-all. The counting routes
    act as the catch-all does, so they change no routing, only where Envoy counts."""
    service = upstream.service
    split = upstream.split
    split_matches = split.matches if split is not None else ()
    stats = upstream.route_stats
    weighted_rest = split is not None and not split_matches
    routes = [Route(match=route_match(m), route=_action(upstream, weighted=True)) for m in split_matches]
    if stats is not None:
        groups = {s.match: s.group for s in stats}
        for route, match in zip(routes, split_matches, strict=True):
            route.stat_prefix = route_stat_prefix(groups.get(match, ANY_ROUTE), match.name)
        routes += [
            Route(
                match=route_match(s.match),
                route=_action(upstream, weighted=weighted_rest),
                stat_prefix=route_stat_prefix(s.group, s.match.name),
            )
            for s in stats
            if s.match not in split_matches  # the split's own route takes (and counts) it
        ]
    routes.append(
        Route(
            match=route_match(None),
            route=_action(upstream, weighted=weighted_rest),
            stat_prefix=route_stat_prefix(ANY_ROUTE, ANY_ROUTE) if stats is not None else "",
        )
    )
    return VirtualHost(
        name=naming.cluster(service.namespace, service.name, upstream.port),
        domains=domains(service, upstream.port, upstream.addresses, client_namespace),
        routes=routes,
        retry_policy=retry_policy(upstream.retry) if upstream.retry is not None else None,
    )


def retry_policy(retry: OsmRetryPolicy) -> RetryPolicy:
    """An OSM Retry on every route of the virtual host. Unset fields keep Envoy's
    defaults (one retry, the route's timeout per try, a 25ms backoff base)."""
    return RetryPolicy(
        retry_on=retry.retry_on,
        num_retries=retry.num_retries,
        per_try_timeout=_seconds(retry.per_try_timeout),
        retry_back_off=(
            RetryPolicyRetryBackOff(base_interval=_seconds(retry.backoff_base_interval))
            if retry.backoff_base_interval is not None
            else None
        ),
    )


def _seconds(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)


def outbound_ports(upstreams: Iterable[Upstream]) -> list[tuple[int, list[Upstream]]]:
    """The HTTP upstreams by port, each list in virtual host order: `rds-outbound.<port>`."""
    by_port: dict[int, list[Upstream]] = defaultdict(list)
    for upstream in upstreams:
        if upstream.is_http:
            by_port[upstream.port].append(upstream)
    return [(port, sorted(ups, key=lambda u: str(u.service))) for port, ups in sorted(by_port.items())]


def outbound_route(port: int, virtual_hosts: list[VirtualHost]) -> RouteConfiguration:
    return RouteConfiguration(
        name=naming.outbound_routes(port), virtual_hosts=virtual_hosts, validate_clusters=False
    )


def route_ports(matched: Iterable[Upstream]) -> tuple[int, ...]:
    """The ports of `rds-outbound.<port>`: every HTTP port the outbound listener matches
    (its chains name these route configurations, and wait for them)."""
    return tuple(sorted({u.port for u in matched if u.is_http}))


def outbound_routes(policy: ProxyPolicy) -> list[RouteConfiguration]:
    """`rds-outbound.<port>` for every HTTP port the outbound listener matches: a virtual
    host per upstream on that port and, with pruning, the 403 for every other host."""
    namespace = policy.identity.namespace
    by_port = dict(outbound_ports(policy.upstreams))
    return [
        outbound_route(
            port,
            [outbound_virtual_host(u, namespace) for u in by_port.get(port, [])]
            + ([denied_virtual_host()] if policy.pruned else []),
        )
        for port in route_ports(policy.matched_upstreams)
    ]


#: The virtual host standing for all of them in an outbound route template.
TEMPLATE_HOST = "\0virtual-hosts\0"


def outbound_route_template(port: int, denied: bool = False) -> tuple[RouteConfiguration, bytes]:
    """`rds-outbound.<port>` with one marker virtual host, and the marker's bytes.

    Each client namespace has its own outbound routes (short names resolve within it),
    and each holds a virtual host per mesh service: the encoder fills the template with
    the encoded hosts (`outbound_host_variants`) instead of encoding S hosts N times.
    """
    marker = VirtualHost(name=TEMPLATE_HOST)
    hosts = [marker, denied_virtual_host()] if denied else [marker]
    return outbound_route(port, hosts), canonical_bytes(marker)


def outbound_host_variants(upstream: Upstream) -> tuple[VirtualHost, VirtualHost]:
    """The virtual host of `upstream` for clients in its own namespace (with the short
    names) and for every other client."""
    return (
        outbound_virtual_host(upstream, upstream.service.namespace),
        outbound_virtual_host(upstream, ""),  # "" is no namespace: never the service's own
    )


def inbound_virtual_host(port: InboundPort, trust_domain: str, only: bool) -> VirtualHost:
    """One route to the application; the RBAC on it decides who may call what.

    With an UpstreamTrafficSetting's local rate limits: the service's limit on the virtual
    host, and before the catch-all one route per `httpRoutes` path (an RE2 regex matching
    the whole path) with its own limit, which replaces the virtual host's for the requests
    it matches. Those routes act as the catch-all does (same cluster, same RBAC)."""
    service = port.service
    name = naming.local_cluster(service.namespace, service.name, port.port)
    rbac = pack(RbacPerRoute(rbac=_http_filter_config(port, trust_domain)))
    action = RouteAction(cluster=name, timeout=NO_TIMEOUT if port.protocol == "grpc" else None)
    return VirtualHost(
        name=name,
        domains=["*"] if only else domains(service, port.port, (), service.namespace),
        routes=limited_routes(port, action, f"inbound.{name}", {RBAC_FILTER: rbac}),
        typed_per_filter_config=host_limit(port, f"inbound.{name}"),
    )


def _http_filter_config(port: InboundPort, trust_domain: str) -> HttpRbac:
    return HttpRbac(rules=http_rbac(port.http_rules, trust_domain))


def inbound_routes(policy: ProxyPolicy) -> list[RouteConfiguration]:
    """`rds-inbound.<port>` for every local HTTP service port."""
    by_port: dict[int, list[InboundPort]] = defaultdict(list)
    for port in policy.inbound:
        if port.is_http:
            by_port[port.port].append(port)
    return [
        RouteConfiguration(
            name=naming.inbound_routes(number),
            virtual_hosts=[
                inbound_virtual_host(p, policy.trust_domain, only=len(ports) == 1)
                for p in sorted(ports, key=lambda p: str(p.service))
            ],
            validate_clusters=False,
        )
        for number, ports in sorted(by_port.items())
    ]


def routes(policy: ProxyPolicy) -> list[RouteConfiguration]:
    return outbound_routes(policy) + inbound_routes(policy)
