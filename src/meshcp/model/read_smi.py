"""Readers of the SMI kinds: TrafficTarget, HTTPRouteGroup, TCPRoute, UDPRoute, TrafficSplit.

Every version meshcp accepts is read into the one model of each kind; what an older version
cannot say (or says in a way that would be lost) is refused with the version to use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from meshcp.model.fields import Field, describe
from meshcp.model.meta import Meta, frozen_map
from meshcp.model.names import dns_1035_label, dns_label, dns_subdomain
from meshcp.model.regex import read_regex
from meshcp.model.smi import (
    HTTPMatch,
    HTTPRouteGroup,
    IdentitySubject,
    SplitBackend,
    SplitMatch,
    TargetRule,
    TCPRoute,
    TrafficSplit,
    TrafficTarget,
    UDPRoute,
)

#: HTTP methods an HTTPRouteGroup may name (the SMI enum); "*" is every method.
HTTP_METHODS = ("*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_RULE_KINDS = ("HTTPRouteGroup", "TCPRoute", "UDPRoute")
_SPLIT_MATCH_KINDS = {"v1alpha3": ("HTTPRouteGroup",), "v1alpha4": ("HTTPRouteGroup", "TCPRoute")}
_HEADER_NAME = re.compile(r":?[!#$%&'*+.^_`|~0-9a-z-]+")


def read_traffic_target(root: Field, meta: Meta, version: str) -> TrafficTarget:
    spec = root.field("spec")
    destination_node = spec.field("destination")
    if not destination_node.present:
        destination_node.fail("required")
    if version.endswith("/v1alpha2") and destination_node.field("port").present:
        destination_node.field("port").fail(
            "a destination port (access.smi-spec.io/v1alpha2) cannot be kept: use "
            "access.smi-spec.io/v1alpha3 with a TCPRoute rule listing the port"
        )
    destination = _subject(destination_node, meta.namespace)
    if destination.namespace != meta.namespace:
        destination_node.field("namespace").fail(
            f"must be the TrafficTarget's own namespace {meta.namespace!r}: only the destination's "
            "owner may grant access to it"
        )
    sources = tuple(_subject(node, meta.namespace) for node in spec.field("sources").items())
    if not sources:
        spec.field("sources").fail("at least one source is required")
    route_kinds = ("HTTPRouteGroup", "TCPRoute") if version.endswith("/v1alpha2") else _RULE_KINDS
    rules = tuple(_rule(node, route_kinds) for node in spec.field("rules").items())
    if not rules:
        spec.field("rules").fail("at least one rule is required")
    return TrafficTarget(meta=meta, destination=destination, sources=sources, rules=rules)


def _subject(node: Field, default_namespace: str) -> IdentitySubject:
    node.mapping()
    kind = node.field("kind").string()
    if kind and kind != "ServiceAccount":
        node.field("kind").fail(f"only ServiceAccount identities are supported, got {describe(kind)}")
    name = dns_subdomain(node.field("name"))
    namespace = dns_label(node.field("namespace"), required=False) or default_namespace
    return IdentitySubject(name=name, namespace=namespace)


def _rule(node: Field, kinds: tuple[str, ...]) -> TargetRule:
    kind = node.field("kind").one_of(kinds)
    name = dns_subdomain(node.field("name"))
    matches = tuple(match.string(required=True) for match in node.field("matches").items())
    if matches and kind != "HTTPRouteGroup":
        node.field("matches").fail(f"only HTTPRouteGroup rules name matches; a {kind} rule covers its ports")
    return TargetRule(kind=kind, name=name, matches=matches)


def read_http_route_group(root: Field, meta: Meta, version: str) -> HTTPRouteGroup:
    matches: list[HTTPMatch] = []
    names: set[str] = set()
    for node in root.field("spec").field("matches").items():
        match = _http_match(node)
        if match.name in names:
            node.field("name").fail(f"{match.name!r} names two matches")
        names.add(match.name)
        matches.append(match)
    return HTTPRouteGroup(meta=meta, matches=tuple(matches))


def _http_match(node: Field) -> HTTPMatch:
    methods: list[str] = []
    for method in node.field("methods").items():
        value = method.one_of(HTTP_METHODS)
        if value not in methods:
            methods.append(value)
    return HTTPMatch(
        name=node.field("name").string(required=True),
        path_regex=read_regex(node.field("pathRegex"), prefix=True),
        methods=tuple(methods),
        headers=_headers(node.field("headers")),
    )


def _headers(node: Field) -> Mapping[str, str] | None:
    """Header name -> full-match regex, from `{name: regex}` (the SMI schema) or from
    `[{name: regex}, ...]` (what OSM's demos and many users write)."""
    pairs: list[tuple[str, Field]] = []
    if isinstance(node.value, list):
        for item in node.items():
            entry = item.mapping()
            if len(entry) != 1:
                item.fail(f"each list entry must be a single 'name: regex' pair, got {len(entry)} keys")
            pairs.extend((key, item.field(key)) for key in entry)
    else:
        pairs.extend((key, node.field(key)) for key in node.mapping())
    headers: dict[str, str] = {}
    for name, value in pairs:
        lowered = name.lower()
        if not _HEADER_NAME.fullmatch(lowered):
            value.fail("is not a valid HTTP header name")
        if lowered in headers:
            value.fail(f"header {lowered!r} is given twice")
        headers[lowered] = read_regex(value)
    return frozen_map(headers) if headers else None


def read_tcp_route(root: Field, meta: Meta, version: str) -> TCPRoute:
    return TCPRoute(meta=meta, ports=_route_ports(root, version))


def read_udp_route(root: Field, meta: Meta, version: str) -> UDPRoute:
    return UDPRoute(meta=meta, ports=_route_ports(root, version))


def _route_ports(root: Field, version: str) -> tuple[int, ...]:
    matches = root.field("spec").field("matches")
    if version.endswith("/v1alpha3"):
        if matches.present:
            matches.fail(f"{version} routes have no matches: use specs.smi-spec.io/v1alpha4 to list ports")
        return ()
    ports: list[int] = []
    for node in matches.field("ports").items():
        port = node.port()
        if port in ports:
            node.fail(f"port {port} is listed twice")
        ports.append(port)
    return tuple(ports)


def read_traffic_split(root: Field, meta: Meta, version: str) -> TrafficSplit:
    spec = root.field("spec")
    service = _split_service(spec.field("service"), meta.namespace)
    backends: list[SplitBackend] = []
    for node in spec.field("backends").items():
        backend = SplitBackend(
            service=_split_service(node.field("service"), meta.namespace),
            weight=_weight(node.field("weight")),
        )
        if any(other.service == backend.service for other in backends):
            node.field("service").fail(f"{backend.service!r} is listed twice")
        backends.append(backend)
    if not backends:
        spec.field("backends").fail("at least one backend is required")
    matches_node = spec.field("matches")
    match_kinds = _SPLIT_MATCH_KINDS.get(version.rsplit("/", 1)[-1], ())
    if matches_node.present and not match_kinds:
        matches_node.fail(f"{version} has no matches: use split.smi-spec.io/v1alpha4")
    matches = tuple(
        SplitMatch(kind=node.field("kind").one_of(match_kinds), name=dns_subdomain(node.field("name")))
        for node in matches_node.items()
    )
    return TrafficSplit(meta=meta, service=service, backends=tuple(backends), matches=matches)


def _split_service(node: Field, namespace: str) -> str:
    """A Service of the split's namespace. OSM's demos write `<name>.<namespace>`; that form
    is accepted (and normalized) when it names the split's own namespace."""
    value = node.string(required=True)
    name, _, other = value.partition(".")
    if other:
        if other != namespace:
            node.fail(f"{value!r} is in another namespace; a TrafficSplit only splits Services of its own")
        value = name
    dns_1035_label(Field(value, node.path))
    return value


def _weight(node: Field) -> float:
    value = node.value
    if value is None:
        node.fail("required")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        node.fail(f"must be a number, got {describe(value)}")
    if value < 0:
        node.fail(f"must not be negative, got {value}")
    return value
