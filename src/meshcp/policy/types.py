"""The policy data: plain, hashable, sorted, so equal meshes give equal policies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from meshcp.identity import Identity
from meshcp.model.meta import ObjectRef
from meshcp.model.osm_policy import (
    ConnectionSettings,
    HttpRateLimit,
    OutlierDetection,
    RetryPolicy,
    RouteRateLimit,
    TcpRateLimit,
)
from meshcp.model.smi import HTTPMatch

#: How a build step reports an object it skips (or applies only in part), and why.
Report = Callable[[ObjectRef, str], None]

#: Every authenticated mesh identity (permissive mode).
ANY_IDENTITY: frozenset[Identity] = frozenset()


@dataclass(frozen=True, slots=True)
class ServiceKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int


@dataclass(frozen=True, slots=True)
class SplitRoute:
    """Traffic of an apex port, sent by weight to backend services (same port)."""

    backends: tuple[tuple[ServiceKey, int], ...]  # (backend, integer weight); weights sum > 0
    #: HTTP matches the split applies to; empty: all traffic of the port.
    matches: tuple[HTTPMatch, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteStat:
    """An HTTPRouteGroup match an outbound virtual host counts requests of (per-route
    stats): the group's name (in the service's namespace) and the match."""

    group: str
    match: HTTPMatch


@dataclass(frozen=True, slots=True)
class Upstream:
    """One port of a meshed service, as clients see it."""

    service: ServiceKey
    port: int
    protocol: str  # http | grpc | tcp | tcp-server-first
    #: Destination addresses the outbound listener matches (ClusterIP, or pod IPs if headless).
    addresses: tuple[str, ...]
    #: Identities of the pods behind the service: the SANs clients accept from it.
    identities: tuple[Identity, ...]
    split: SplitRoute | None = None
    #: Per-route stats (MeshConfig `observability.enablePerRouteStats`): the HTTPRouteGroup
    #: matches of the TrafficTargets to `identities` and of the split, each counted on a
    #: route of its own. None: off (no route carries a stat prefix).
    route_stats: tuple[RouteStat, ...] | None = None
    #: The service's UpstreamTrafficSetting: its clusters' circuit breakers, connect
    #: timeout and outlier detection (the same for every client).
    connection: ConnectionSettings | None = None
    outlier_detection: OutlierDetection | None = None
    #: The client identity's Retry for this service (HTTP ports only): set per class.
    retry: RetryPolicy | None = None
    #: The hash, computed once: every class holding this upstream keys memos by it.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (self.service, self.port, self.protocol, self.addresses, self.identities, self.split)
        settings = (self.connection, self.outlier_detection, self.retry)
        object.__setattr__(self, "_hash", hash((*fields, self.route_stats, *settings)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def is_http(self) -> bool:
        return self.protocol in ("http", "grpc")


@dataclass(frozen=True, slots=True)
class LocalRateLimits:
    """What a service's UpstreamTrafficSetting limits on the inbound side of its pods:
    connections (every port), requests (HTTP ports) and requests per path."""

    tcp: TcpRateLimit | None = None
    http: HttpRateLimit | None = None
    routes: tuple[RouteRateLimit, ...] = ()


@dataclass(frozen=True, slots=True)
class HttpRule:
    """Requests matching `match` (None: every request) from `sources` are allowed."""

    match: HTTPMatch | None
    sources: frozenset[Identity]  # ANY_IDENTITY (empty) in permissive mode
    any_source: bool = False


@dataclass(frozen=True, slots=True)
class InboundPort:
    """One port of a local service, as this proxy serves it."""

    service: ServiceKey
    port: int  # the service port
    target_port: int  # where the application listens (and the original destination port)
    protocol: str
    http_rules: tuple[HttpRule, ...] = ()
    #: TCP ports: who may connect. HTTP ports use http_rules.
    tcp_sources: frozenset[Identity] = frozenset()
    any_source: bool = False
    #: Out of the repr (which `build.class_key` hashes): a function of `service`, so it
    #: tells no two ports of one round apart, and class keys stay as they were without it.
    rate_limits: LocalRateLimits | None = field(default=None, repr=False)
    #: The hash, computed once: memo keys hold every class's inbound ports.
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (self.service, self.port, self.target_port, self.protocol, self.http_rules)
        object.__setattr__(
            self, "_hash", hash((*fields, self.tcp_sources, self.any_source, self.rate_limits))
        )

    def __hash__(self) -> int:
        return self._hash

    @property
    def is_http(self) -> bool:
        return self.protocol in ("http", "grpc")


@dataclass(frozen=True, slots=True)
class EgressHost:
    """An HTTP host an Egress allows, and its requests (`matches` None: every request)."""

    name: str
    matches: tuple[HTTPMatch, ...] | None = None


@dataclass(frozen=True, slots=True)
class EgressRule:
    """What one client identity may reach outside the mesh on one port (OSM's Egresses
    naming it, combined per port and protocol): `ip_ranges` (CIDRs; empty: any address),
    for http the `hosts` by Host (with their requests), for https `sni` (empty: any TLS).
    Nothing of the identity is in it: classes allowed the same share one listener."""

    port: int
    protocol: str  # http, https or tcp
    ip_ranges: tuple[str, ...] = ()
    hosts: tuple[EgressHost, ...] = ()
    sni: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IngressRule:
    """Traffic from outside the mesh that an OSM IngressBackend admits to one local service
    port of this class's pods, on the port the application listens on.

    `source_ranges`: the CIDRs the ingress connects from (its Service's endpoints, its
    IPRanges); None when the IngressBackend names no address at all (any address), empty
    when it names some that resolve to none (nobody, until they do). https only:
    `principals`, the identities the ingress's certificate may carry, likewise (None: any
    the mesh's CA signed); `validate_client` False admits a client without a mesh certificate;
    `sni_hosts` restricts the SNI (empty: any name but the mesh's own)."""

    service: ServiceKey
    port: int  # the service port: names the local cluster
    target_port: int  # where the application listens: the chain's destination port
    protocol: str  # http | https
    source_ranges: tuple[str, ...] | None = None
    principals: tuple[Identity, ...] | None = None
    validate_client: bool = True
    sni_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProxyPolicy:
    """Everything the proxies of one class get: identity, inbound ports, upstreams."""

    identity: Identity
    inbound: tuple[InboundPort, ...]
    #: The services this class gets clusters, endpoints, routes and trust for.
    upstreams: tuple[Upstream, ...]
    egress_passthrough: bool
    trust_domain: str
    #: With pruning (MeshConfig `pruneUnreachableUpstreams`): every mesh service, which the
    #: outbound listener still matches so that requests to the pruned ones get 403 from
    #: this proxy; only what the listener reads (service, port, protocol, addresses: no
    #: identities, split or route stats). None: no pruning, the listener matches `upstreams`.
    listener_upstreams: tuple[Upstream, ...] | None = None
    #: OSM Egresses naming this identity: what it may reach outside the mesh, by port.
    egress: tuple[EgressRule, ...] = ()
    #: OSM IngressBackends naming this class's services: who outside the mesh may reach
    #: which local port (a function of `inbound`, so classes stay as they were).
    ingress: tuple[IngressRule, ...] = ()

    @property
    def matched_upstreams(self) -> tuple[Upstream, ...]:
        """What the outbound listener has a filter chain for."""
        return self.upstreams if self.listener_upstreams is None else self.listener_upstreams

    @property
    def pruned(self) -> bool:
        return self.listener_upstreams is not None
