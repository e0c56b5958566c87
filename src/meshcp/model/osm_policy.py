"""OSM's traffic policies (`policy.openservicemesh.io/v1alpha1`): Retry, UpstreamTrafficSetting, Egress,
IngressBackend.

Read from OSM's manifests unchanged, so a mesh moving from OSM keeps its objects. Durations
are in seconds; every optional setting OSM leaves unset is None here (Envoy's default then
applies), never a made-up default.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcp.model.meta import Meta, ObjectRef
from meshcp.model.smi import IdentitySubject

POLICY_API = "policy.openservicemesh.io/v1alpha1"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Envoy's retry policy as OSM names it: `retry_on` is Envoy's comma-separated list."""

    retry_on: str
    per_try_timeout: float | None = None
    num_retries: int | None = None
    backoff_base_interval: float | None = None


@dataclass(frozen=True, slots=True)
class ServiceName:
    """A Service named by a policy: namespace and name."""

    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Retry:
    """Requests from `source` (a ServiceAccount) to `destinations` (Services) are retried."""

    meta: Meta
    source: IdentitySubject
    destinations: tuple[ServiceName, ...]
    policy: RetryPolicy

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Retry", self.meta.namespace, self.meta.name)


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """`connectionSettings.tcp` and `.http`: the upstream cluster's circuit breakers, connect
    timeout and requests per connection. None: not set (Envoy's default)."""

    max_connections: int | None = None
    connect_timeout: float | None = None
    max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_pending_requests: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive health checking of the upstream's endpoints (meshcp's addition, see
    docs/osm-policies.md): eject an endpoint after `consecutive_5xx` errors in a row."""

    consecutive_5xx: int | None = None
    interval: float | None = None
    base_ejection_time: float | None = None
    max_ejection_percent: int | None = None


@dataclass(frozen=True, slots=True)
class TcpRateLimit:
    """`rateLimit.local.tcp`: `connections` per `unit` seconds, plus `burst`."""

    connections: int
    unit: int
    burst: int = 0


@dataclass(frozen=True, slots=True)
class HttpRateLimit:
    """`rateLimit.local.http` (or a route's): `requests` per `unit` seconds plus `burst`;
    requests over the limit get `status` and `headers`."""

    requests: int
    unit: int
    burst: int = 0
    status: int = 429
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RouteRateLimit:
    """`httpRoutes[]`: requests whose path matches `path` (an RE2 regex, in full) share
    their own limit."""

    path: str
    limit: HttpRateLimit


@dataclass(frozen=True, slots=True)
class UpstreamTrafficSetting:
    """Settings of the traffic to one Service (`host`), of the setting's own namespace."""

    meta: Meta
    service: str
    connection: ConnectionSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tcp_rate_limit: TcpRateLimit | None = None
    http_rate_limit: HttpRateLimit | None = None
    http_routes: tuple[RouteRateLimit, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("UpstreamTrafficSetting", self.meta.namespace, self.meta.name)


#: The protocols of an Egress port, as OSM names them.
EGRESS_PROTOCOLS = ("http", "https", "tcp")


@dataclass(frozen=True, slots=True)
class EgressPort:
    """`ports[]`: a destination port and what is spoken on it."""

    number: int
    protocol: str  # one of EGRESS_PROTOCOLS


@dataclass(frozen=True, slots=True)
class Egress:
    """Traffic from `sources` (ServiceAccounts) to destinations outside the mesh is allowed:
    on `ports`, to `hosts` (HTTP by Host, HTTPS by SNI; ignored for TCP) and to
    `ip_addresses` (CIDRs; empty: any address); HTTP requests only as `matches` (the names
    of HTTPRouteGroups of the Egress's namespace; empty: every request)."""

    meta: Meta
    sources: tuple[IdentitySubject, ...]
    ports: tuple[EgressPort, ...]
    hosts: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    matches: tuple[str, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("Egress", self.meta.namespace, self.meta.name)


#: The protocols of an IngressBackend's backend port, as OSM names them.
INGRESS_PROTOCOLS = ("http", "https")
#: The kinds of an IngressBackend's sources, as OSM names them.
INGRESS_SOURCE_KINDS = ("Service", "IPRange", "AuthenticatedPrincipal")


@dataclass(frozen=True, slots=True)
class IngressBackendPort:
    """`backends[]`: a Service of the IngressBackend's namespace and the port its pods
    listen on (OSM matched `port.number` against the Service port's targetPort: what
    reaches the pod), with what the ingress speaks to it there."""

    name: str
    port: int
    protocol: str  # one of INGRESS_PROTOCOLS
    #: https: accept a client without a certificate of the mesh's CA.
    skip_client_cert_validation: bool = False
    #: https: the SNI names the ingress may send (empty: any).
    sni_hosts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class IngressSource:
    """`sources[]`: `Service` (`namespace`/`name`: its endpoints' addresses), `IPRange`
    (`name` a CIDR, normalised) or `AuthenticatedPrincipal` (`name` the identity the
    ingress's certificate carries, as OSM wrote it: `<sa>.<namespace>.<trust domain>`)."""

    kind: str  # one of INGRESS_SOURCE_KINDS
    name: str
    namespace: str = ""


@dataclass(frozen=True, slots=True)
class IngressBackend:
    """Traffic from `sources`, outside the mesh, is admitted to `backends` on their pods'
    inbound side without a meshed client. `matches`: the names of OSM's `matches` (which
    OSM never applied); kept to be reported, not used."""

    meta: Meta
    backends: tuple[IngressBackendPort, ...]
    sources: tuple[IngressSource, ...]
    matches: tuple[str, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("IngressBackend", self.meta.namespace, self.meta.name)
