"""Readers of OSM's Retry, UpstreamTrafficSetting, Egress and IngressBackend
(`policy.openservicemesh.io/v1alpha1`).

Field names and meanings are OSM's; what OSM's schema bounds (a status code in 400..599, a
unit of second, minute or hour) is checked here so a bad value is reported with its field
instead of being NACKed by every Envoy that receives it.
"""

from __future__ import annotations

import ipaddress
import re

from meshcp.model.durations import parse_duration
from meshcp.model.fields import Field, describe
from meshcp.model.meta import Meta
from meshcp.model.names import dns_1035_label, dns_label, dns_subdomain
from meshcp.model.osm_policy import (
    EGRESS_PROTOCOLS,
    INGRESS_PROTOCOLS,
    INGRESS_SOURCE_KINDS,
    ConnectionSettings,
    Egress,
    EgressPort,
    HttpRateLimit,
    IngressBackend,
    IngressBackendPort,
    IngressSource,
    OutlierDetection,
    Retry,
    RetryPolicy,
    RouteRateLimit,
    ServiceName,
    TcpRateLimit,
    UpstreamTrafficSetting,
)
from meshcp.model.regex import read_regex
from meshcp.model.smi import IdentitySubject

#: Envoy's `retry_on` conditions (HTTP and gRPC): anything else Envoy ignores silently.
RETRY_ON = (
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)
UNITS = {"second": 1, "minute": 60, "hour": 3600}
#: The error statuses Envoy can answer a rate-limited request with (its StatusCode enum):
#: any other would be NACKed by every proxy that receives it.
ERROR_STATUSES = (
    *range(400, 418),
    *(421, 422, 423, 424, 426, 428, 429, 431),
    *range(500, 509),
    510,
    511,
)
_UINT32 = 2**32 - 1
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_CLUSTER_SUFFIX = ".svc.cluster.local"
#: A host name as Envoy matches it by Host and SNI: DNS labels, optionally `*.` first.
_HOST = re.compile(r"(\*\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
_ROUTE_GROUP_APIS = ("specs.smi-spec.io", "specs.smi-spec.io/v1alpha4")
#: An AuthenticatedPrincipal: a SPIFFE ID, or the DNS name OSM wrote (`<sa>.<ns>.<domain>`).
_SPIFFE = re.compile(r"spiffe://[^/\s]+/ns/[^/\s]+/sa/[^/\s]+")


def read_retry(root: Field, meta: Meta, version: str) -> Retry:
    spec = root.field("spec")
    source_node = spec.field("source")
    if not source_node.present:
        source_node.fail("required")
    source_node.field("kind").one_of(("ServiceAccount",))
    source = IdentitySubject(
        name=dns_subdomain(source_node.field("name")),
        namespace=dns_label(source_node.field("namespace"), required=False) or meta.namespace,
    )
    destinations: list[ServiceName] = []
    for node in spec.field("destinations").items():
        node.field("kind").one_of(("Service",))
        destination = ServiceName(
            namespace=dns_label(node.field("namespace"), required=False) or meta.namespace,
            name=dns_1035_label(node.field("name")),
        )
        if destination in destinations:
            node.fail(f"{destination.namespace}/{destination.name} is listed twice")
        destinations.append(destination)
    if not destinations:
        spec.field("destinations").fail("at least one destination is required")
    return Retry(meta, source, tuple(destinations), _retry_policy(spec.field("retryPolicy")))


def _retry_policy(node: Field) -> RetryPolicy:
    if not node.present:
        node.fail("required")
    retry_on = node.field("retryOn").string(required=True)
    for condition in retry_on.split(","):
        if condition.strip() not in RETRY_ON:
            node.field("retryOn").fail(
                f"{describe(condition.strip())} is not a retry condition (one of {', '.join(RETRY_ON)})"
            )
    return RetryPolicy(
        retry_on=",".join(condition.strip() for condition in retry_on.split(",")),
        per_try_timeout=_duration(node.field("perTryTimeout"), positive=True),
        num_retries=_uint(node.field("numRetries")),
        backoff_base_interval=_duration(node.field("retryBackoffBaseInterval"), positive=True),
    )


def read_upstream_traffic_setting(root: Field, meta: Meta, version: str) -> UpstreamTrafficSetting:
    spec = root.field("spec")
    service = _host(spec.field("host"), meta.namespace)
    connection = spec.field("connectionSettings")
    rate_limit = spec.field("rateLimit")
    if rate_limit.field("global").present:
        rate_limit.field("global").fail(
            "global rate limiting is not supported (meshcp has no rate limit service)"
        )
    local = rate_limit.field("local")
    tcp_limit = local.field("tcp")
    http_limit = local.field("http")
    routes: list[RouteRateLimit] = []
    for node in spec.field("httpRoutes").items():
        path = read_regex(node.field("path"))
        if not path:
            node.field("path").fail("required")
        route_limit = node.field("rateLimit")
        if route_limit.field("global").present:
            route_limit.field("global").fail("global rate limiting is not supported")
        if not route_limit.field("local").present:
            node.field("rateLimit").fail("a route needs rateLimit.local (its only setting)")
        if any(route.path == path for route in routes):
            node.field("path").fail(f"{path!r} is listed twice")
        routes.append(RouteRateLimit(path, _http_rate_limit(route_limit.field("local"))))
    return UpstreamTrafficSetting(
        meta=meta,
        service=service,
        connection=_connection(connection) if connection.present else None,
        outlier_detection=_outlier(spec.field("outlierDetection")),
        tcp_rate_limit=_tcp_rate_limit(tcp_limit) if tcp_limit.present else None,
        http_rate_limit=_http_rate_limit(http_limit) if http_limit.present else None,
        http_routes=tuple(routes),
    )


def _host(node: Field, namespace: str) -> str:
    """The Service `host` names: `<name>` or its FQDN `<name>.<namespace>.svc.cluster.local`
    (also `<name>.<namespace>` and `<name>.<namespace>.svc`), in the setting's namespace as
    OSM matches it: a service's settings belong to the service's owner."""
    value = node.string(required=True)
    name, _, rest = value.partition(".")
    if rest:
        other = rest.removesuffix(_CLUSTER_SUFFIX).removesuffix(".svc")
        if other != namespace:
            node.fail(
                f"{value!r} is not a Service of this namespace ({namespace!r}): an UpstreamTrafficSetting "
                f"names a Service of its own namespace, as {name}.{namespace}.svc.cluster.local or {name}"
            )
    dns_1035_label(Field(name, node.path))
    return name


def _connection(node: Field) -> ConnectionSettings:
    tcp, http = node.field("tcp"), node.field("http")
    return ConnectionSettings(
        max_connections=_uint(tcp.field("maxConnections")),
        connect_timeout=_duration(tcp.field("connectTimeout"), positive=True),
        max_requests=_uint(http.field("maxRequests")),
        max_requests_per_connection=_uint(http.field("maxRequestsPerConnection")),
        max_pending_requests=_uint(http.field("maxPendingRequests")),
        max_retries=_uint(http.field("maxRetries")),
    )


def _outlier(node: Field) -> OutlierDetection | None:
    if not node.present:
        return None
    node.mapping()
    percent = _uint(node.field("maxEjectionPercent"))
    if percent is not None and percent > 100:
        node.field("maxEjectionPercent").fail(f"must be a percentage 0..100, got {percent}")
    return OutlierDetection(
        consecutive_5xx=_uint(node.field("consecutive5xx")),
        interval=_duration(node.field("interval"), positive=True),
        base_ejection_time=_duration(node.field("baseEjectionTime"), positive=True),
        max_ejection_percent=percent,
    )


def _tcp_rate_limit(node: Field) -> TcpRateLimit:
    return TcpRateLimit(
        connections=_count(node.field("connections")),
        unit=UNITS[node.field("unit").one_of(tuple(UNITS))],
        burst=_uint(node.field("burst")) or 0,
    )


def _http_rate_limit(node: Field) -> HttpRateLimit:
    status = _uint(node.field("responseStatusCode"))
    if status is not None and not 400 <= status <= 599:
        node.field("responseStatusCode").fail(f"must be an HTTP error status 400..599, got {status}")
    if status is not None and status not in ERROR_STATUSES:
        node.field("responseStatusCode").fail(
            f"{status} is not a status Envoy can send (it knows {_ranges()})"
        )
    headers: list[tuple[str, str]] = []
    for item in node.field("responseHeadersToAdd").items():
        name = item.field("name").string(required=True)
        if not _HEADER_NAME.fullmatch(name):
            item.field("name").fail("is not a valid HTTP header name")
        headers.append((name, item.field("value").string(required=True)))
    return HttpRateLimit(
        requests=_count(node.field("requests")),
        unit=UNITS[node.field("unit").one_of(tuple(UNITS))],
        burst=_uint(node.field("burst")) or 0,
        status=status or 429,
        headers=tuple(headers),
    )


def _uint(node: Field) -> int | None:
    """An optional uint32."""
    value = node.value
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT32:
        node.fail(f"must be an integer 0..{_UINT32}, got {describe(value)}")
    return value


def _count(node: Field) -> int:
    """A required uint32 of at least 1 (a rate of zero would refuse everything)."""
    value = _uint(node)
    if value is None:
        node.fail("required")
    if value < 1:
        node.fail(f"must be at least 1, got {value}")
    return value


def _duration(node: Field, *, positive: bool) -> float | None:
    """An optional duration (`1s`, `250ms`), as Kubernetes' metav1.Duration is written."""
    value = node.value
    if value is None:
        return None
    if not isinstance(value, str):
        node.fail(f'must be a duration such as "250ms" or "1s", got {describe(value)}')
    try:
        seconds = parse_duration(value)
    except ValueError as error:
        node.fail(str(error))
    if positive and seconds < 0.001:
        node.fail(f"must be at least 1ms, got {describe(value)}")
    return seconds


def _ranges() -> str:
    """`ERROR_STATUSES` as runs: 400-417, 421-424, ..."""
    runs: list[list[int]] = []
    for status in ERROR_STATUSES:
        if runs and runs[-1][-1] == status - 1:
            runs[-1].append(status)
        else:
            runs.append([status])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def read_egress(root: Field, meta: Meta, version: str) -> Egress:
    """OSM's Egress. `matches` name HTTPRouteGroups of the Egress's namespace (OSM's
    TypedLocalObjectReference); OSM's other match kind, an UpstreamTrafficSetting, is
    refused (its settings are the service's in meshcp, not an egress host's)."""
    spec = root.field("spec")
    sources: list[IdentitySubject] = []
    for node in spec.field("sources").items():
        node.field("kind").one_of(("ServiceAccount",))
        source = IdentitySubject(
            name=dns_subdomain(node.field("name")),
            namespace=dns_label(node.field("namespace"), required=False) or meta.namespace,
        )
        if source not in sources:
            sources.append(source)
    if not sources:
        spec.field("sources").fail("at least one source is required")
    ports: list[EgressPort] = []
    for node in spec.field("ports").items():
        port = EgressPort(node.field("number").port(), node.field("protocol").one_of(EGRESS_PROTOCOLS))
        if any(p.number == port.number for p in ports):
            node.field("number").fail(f"port {port.number} is listed twice")
        ports.append(port)
    if not ports:
        spec.field("ports").fail("at least one port is required")
    hosts: list[str] = []
    for node in spec.field("hosts").items():
        host = node.string(required=True).lower().rstrip(".")
        if len(host) > 253 or not _HOST.fullmatch(host):
            node.fail(f"{describe(host)} is not a host name (DNS labels, optionally starting with '*.')")
        if host not in hosts:
            hosts.append(host)
    addresses: list[str] = []
    for node in spec.field("ipAddresses").items():
        text = node.string(required=True)
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            node.fail(f"{describe(text)} is not an IP address range (CIDR, such as 203.0.113.0/24)")
        if str(network) not in addresses:
            addresses.append(str(network))
    matches: list[str] = []
    for node in spec.field("matches").items():
        node.field("kind").one_of(("HTTPRouteGroup",))
        api = node.field("apiGroup").string()
        if api and api not in _ROUTE_GROUP_APIS:
            node.field("apiGroup").fail(
                f"must be specs.smi-spec.io for an HTTPRouteGroup, got {describe(api)}"
            )
        name = dns_subdomain(node.field("name"))
        if name not in matches:
            matches.append(name)
    if matches and not any(p.protocol == "http" for p in ports):
        spec.field("matches").fail("HTTP route matches need an http port")
    if not hosts and any(p.protocol == "http" for p in ports):
        spec.field("hosts").fail("an http port needs hosts (requests are allowed by their Host)")
    return Egress(meta, tuple(sources), tuple(ports), tuple(hosts), tuple(addresses), tuple(matches))


def read_ingress_backend(root: Field, meta: Meta, version: str) -> IngressBackend:
    """OSM's IngressBackend. Each backend names a Service of the object's namespace and the
    port its pods listen on; sources are the ingress's addresses (its Service's endpoints,
    CIDRs) or, with https, the identity of the certificate it presents. What could never
    match is refused here: a principal over plain HTTP (no certificate to read it from) or
    without client certificate validation (nothing vouches for it), SNI names on http."""
    spec = root.field("spec")
    backends: list[IngressBackendPort] = []
    for node in spec.field("backends").items():
        port = node.field("port")
        if not port.present:
            port.fail("required")
        backend = IngressBackendPort(
            name=dns_1035_label(node.field("name")),
            port=port.field("number").port(),
            protocol=port.field("protocol").one_of(INGRESS_PROTOCOLS),
        )
        tls = node.field("tls")
        skip = tls.field("skipClientCertValidation").boolean(False)
        sni: list[str] = []
        for item in tls.field("sniHosts").items():
            host = item.string(required=True).lower().rstrip(".")
            if len(host) > 253 or not _HOST.fullmatch(host):
                item.fail(f"{describe(host)} is not a host name (DNS labels, optionally starting with '*.')")
            if host not in sni:
                sni.append(host)
        if sni and backend.protocol != "https":
            tls.field("sniHosts").fail("SNI names need protocol https (plain HTTP carries no SNI)")
        if any((b.name, b.port) == (backend.name, backend.port) for b in backends):
            node.fail(f"backend {backend.name} port {backend.port} is listed twice")
        backends.append(IngressBackendPort(backend.name, backend.port, backend.protocol, skip, tuple(sni)))
    if not backends:
        spec.field("backends").fail("at least one backend is required")
    sources: list[IngressSource] = []
    for node in spec.field("sources").items():
        source = _ingress_source(node, meta.namespace, backends)
        if source not in sources:
            sources.append(source)
    if not sources:
        spec.field("sources").fail("at least one source is required")
    matches = tuple(dns_subdomain(node.field("name")) for node in spec.field("matches").items())
    return IngressBackend(meta, tuple(backends), tuple(sources), matches)


def _ingress_source(node: Field, namespace: str, backends: list[IngressBackendPort]) -> IngressSource:
    kind = node.field("kind").one_of(INGRESS_SOURCE_KINDS)
    if kind == "Service":
        return IngressSource(
            kind,
            dns_1035_label(node.field("name")),
            dns_label(node.field("namespace"), required=False) or namespace,
        )
    text = node.field("name").string(required=True)
    if kind == "IPRange":
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            node.field("name").fail(f"{describe(text)} is not an IP address range (CIDR, such as 10.0.0.0/8)")
        return IngressSource(kind, str(network))
    if not (_SPIFFE.fullmatch(text) or (len(text) <= 253 and _HOST.fullmatch(text) and "*" not in text)):
        node.field("name").fail(
            f"{describe(text)} is not an identity (<serviceaccount>.<namespace>.<trust domain>, "
            "or spiffe://<trust domain>/ns/<namespace>/sa/<serviceaccount>)"
        )
    for backend in backends:
        if backend.protocol != "https":
            node.fail(
                f"an AuthenticatedPrincipal needs https backends: backend {backend.name} port "
                f"{backend.port} is http, which carries no certificate to check it against"
            )
        if backend.skip_client_cert_validation:
            node.fail(
                f"an AuthenticatedPrincipal needs the client certificate validated: backend "
                f"{backend.name} port {backend.port} sets tls.skipClientCertValidation"
            )
    return IngressSource(kind, text)
