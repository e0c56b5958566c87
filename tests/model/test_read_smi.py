"""Reading the SMI kinds in every version meshcp accepts, and each refusal."""

from __future__ import annotations

from meshcp.model.meta import frozen_map
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
from tests.model.manifests import SPECS, Invalid, Valid, manifest, meta, reading_tests, routes, split, target

STORE_TARGET = TrafficTarget(
    meta=meta(),
    destination=IdentitySubject("store", "ns"),
    sources=(IdentitySubject("buyer", "buyers"),),
    rules=(TargetRule("HTTPRouteGroup", "routes", ("buy",)),),
)
HEADER_MATCH = HTTPRouteGroup(
    meta(),
    (HTTPMatch("m", "/books", ("GET",), frozen_map({"client-app": "buyer", "user-agent": ".*curl.*"})),),
)

VALID: Valid = [
    ("traffic target v1alpha3", target(), STORE_TARGET),
    ("traffic target v1alpha2 without port", target("access.smi-spec.io/v1alpha2"), STORE_TARGET),
    (
        "traffic target namespaces default to its own, matches optional",
        target(
            destination={"kind": "ServiceAccount", "name": "store"},
            sources=[{"kind": "ServiceAccount", "name": "admin"}],
            rules=[{"kind": "TCPRoute", "name": "db"}, {"kind": "HTTPRouteGroup", "name": "routes"}],
        ),
        TrafficTarget(
            meta(),
            IdentitySubject("store", "ns"),
            (IdentitySubject("admin", "ns"),),
            (TargetRule("TCPRoute", "db"), TargetRule("HTTPRouteGroup", "routes")),
        ),
    ),
    (
        "headers as a map",
        routes(
            pathRegex="/books", methods=["GET"], headers={"User-Agent": ".*curl.*", "client-app": "buyer"}
        ),
        HEADER_MATCH,
    ),
    (
        "headers as a list of one-key maps",
        routes(
            pathRegex="/books", methods=["GET"], headers=[{"user-agent": ".*curl.*"}, {"client-app": "buyer"}]
        ),
        HEADER_MATCH,
    ),
    (
        "route group v1alpha3, methods deduplicated",
        routes(
            "specs.smi-spec.io/v1alpha3",
            pathRegex="/books",
            methods=["GET", "GET"],
            headers=HEADER_MATCH.matches[0].headers,
        ),
        HEADER_MATCH,
    ),
    (
        "regexes at Envoy's program size limit (100, the path counted as a prefix)",
        routes(pathRegex="x{94}", headers={"x-id": "x{96}"}),
        HTTPRouteGroup(meta(), (HTTPMatch("m", path_regex="x{94}", headers=frozen_map({"x-id": "x{96}"})),)),
    ),
    (
        "match without path, methods or headers",
        routes(),
        HTTPRouteGroup(meta(), (HTTPMatch("m"),)),
    ),
    (
        "tcp route ports",
        manifest(SPECS, "TCPRoute", spec={"matches": {"ports": [3306, 6446]}}),
        TCPRoute(meta(), (3306, 6446)),
    ),
    ("tcp route v1alpha3", manifest("specs.smi-spec.io/v1alpha3", "TCPRoute", spec={}), TCPRoute(meta())),
    (
        "udp route",
        manifest(SPECS, "UDPRoute", spec={"matches": {"ports": [53]}}),
        UDPRoute(meta(), (53,)),
    ),
    (
        "split with int, float and zero weights and matches",
        split(
            backends=[
                {"service": "v1", "weight": 3},
                {"service": "v2", "weight": 0.5},
                {"service": "v3", "weight": 0},
            ],
            matches=[{"kind": "HTTPRouteGroup", "name": "ab"}, {"kind": "TCPRoute", "name": "db"}],
        ),
        TrafficSplit(
            meta(),
            "apex",
            (SplitBackend("v1", 3), SplitBackend("v2", 0.5), SplitBackend("v3", 0)),
            (SplitMatch("HTTPRouteGroup", "ab"), SplitMatch("TCPRoute", "db")),
        ),
    ),
    (
        "split v1alpha2; OSM's <service>.<namespace> form",
        split("split.smi-spec.io/v1alpha2", service="apex.ns"),
        TrafficSplit(meta(), "apex", (SplitBackend("v1", 75), SplitBackend("v2", 25))),
    ),
    (
        "split v1alpha3 with an HTTPRouteGroup match",
        split("split.smi-spec.io/v1alpha3", matches=[{"kind": "HTTPRouteGroup", "name": "ab"}]),
        TrafficSplit(
            meta(),
            "apex",
            (SplitBackend("v1", 75), SplitBackend("v2", 25)),
            (SplitMatch("HTTPRouteGroup", "ab"),),
        ),
    ),
]

INVALID: Invalid = [
    # TrafficTarget
    ("target without destination", target(destination=None), "spec.destination: required"),
    (
        "target for another namespace",
        target(destination={"kind": "ServiceAccount", "name": "store", "namespace": "other"}),
        "spec.destination.namespace: must be the TrafficTarget's own namespace 'ns'",
    ),
    (
        "target destination kind",
        target(destination={"kind": "Deployment", "name": "store"}),
        "spec.destination.kind: only ServiceAccount identities are supported, got 'Deployment'",
    ),
    ("target without sources", target(sources=[]), "spec.sources: at least one source is required"),
    ("target without rules", target(rules=None), "spec.rules: at least one rule is required"),
    (
        "target rule kind",
        target(rules=[{"kind": "GRPCRoute", "name": "r"}]),
        "spec.rules[0].kind: must be one of HTTPRouteGroup, TCPRoute, UDPRoute, got 'GRPCRoute'",
    ),
    (
        "target rule matches on a TCPRoute",
        target(rules=[{"kind": "TCPRoute", "name": "db", "matches": ["x"]}]),
        "spec.rules[0].matches: only HTTPRouteGroup rules name matches",
    ),
    (
        "v1alpha2 destination port is not lossless",
        target(
            "access.smi-spec.io/v1alpha2",
            destination={"kind": "ServiceAccount", "name": "store", "namespace": "ns", "port": 8080},
        ),
        "spec.destination.port: a destination port (access.smi-spec.io/v1alpha2) cannot be kept",
    ),
    (
        "v1alpha2 has no UDPRoute",
        target("access.smi-spec.io/v1alpha2", rules=[{"kind": "UDPRoute", "name": "dns"}]),
        "spec.rules[0].kind: must be one of HTTPRouteGroup, TCPRoute, got 'UDPRoute'",
    ),
    # HTTPRouteGroup
    ("match without name", routes(name=""), "spec.matches[0].name: required"),
    (
        "regex syntax",
        routes(pathRegex="/books(["),
        "spec.matches[0].pathRegex: invalid regular expression '/books(['",
    ),
    (
        "backreference",
        routes(pathRegex=r"/(a)\1"),
        r"spec.matches[0].pathRegex: invalid regular expression '/(a)\\1' (RE2, Envoy's engine): "
        r"invalid escape sequence: \1",
    ),
    (
        "lookahead",
        routes(pathRegex="/(?!admin)"),
        "spec.matches[0].pathRegex: invalid regular expression '/(?!admin)' (RE2, Envoy's engine): "
        "invalid perl operator: (?!",
    ),
    (
        "lookbehind in a header",
        routes(headers={"cookie": "(?<=type=)insider"}),
        "spec.matches[0].headers.cookie: invalid regular expression '(?<=type=)insider' (RE2, Envoy's "
        "engine): invalid perl operator: (?<=",
    ),
    (
        "path regex over Envoy's program size limit once sent as a prefix",
        routes(pathRegex="x{95}"),
        "spec.matches[0].pathRegex: regular expression 'x{95}' is too large for Envoy: its RE2 program "
        "size is 101 as a prefix, over Envoy's limit of 100 (re2.max_program_size.error_level); every "
        "proxy would refuse it",
    ),
    (
        "header regex over Envoy's program size limit",
        routes(headers={"x-id": "x{97}"}),
        "spec.matches[0].headers.x-id: regular expression 'x{97}' is too large for Envoy: its RE2 "
        "program size is 101, over Envoy's limit of 100",
    ),
    ("method", routes(methods=["get"]), "spec.matches[0].methods[0]: must be one of *, GET, HEAD"),
    (
        "duplicate match names",
        manifest(SPECS, "HTTPRouteGroup", spec={"matches": [{"name": "a"}, {"name": "a"}]}),
        "spec.matches[1].name: 'a' names two matches",
    ),
    (
        "header list entry with two keys",
        routes(headers=[{"a": "1", "b": "2"}]),
        "spec.matches[0].headers[0]: each list entry must be a single 'name: regex' pair, got 2 keys",
    ),
    (
        "header twice",
        routes(headers=[{"a": "1"}, {"A": "2"}]),
        "spec.matches[0].headers[1].A: header 'a' is given twice",
    ),
    (
        "header name",
        routes(headers={"bad name": "x"}),
        "spec.matches[0].headers.bad name: is not a valid HTTP header",
    ),
    (
        "header value type",
        routes(headers={"x-version": 2}),
        "spec.matches[0].headers.x-version: must be a string",
    ),
    # TCPRoute / UDPRoute
    (
        "tcp route port",
        manifest(SPECS, "TCPRoute", spec={"matches": {"ports": [0]}}),
        "spec.matches.ports[0]",
    ),
    (
        "tcp route port twice",
        manifest(SPECS, "TCPRoute", spec={"matches": {"ports": [1, 1]}}),
        "listed twice",
    ),
    (
        "tcp route v1alpha3 has no ports",
        manifest("specs.smi-spec.io/v1alpha3", "TCPRoute", spec={"matches": {"ports": [1]}}),
        "spec.matches: specs.smi-spec.io/v1alpha3 routes have no matches",
    ),
    (
        "udp route matches a list",
        manifest(SPECS, "UDPRoute", spec={"matches": [{"ports": [53]}]}),
        "spec.matches: must be a mapping, got a list",
    ),
    # TrafficSplit
    (
        "negative weight",
        split(backends=[{"service": "v1", "weight": -1}]),
        "spec.backends[0].weight: must not be negative, got -1",
    ),
    (
        "string weight",
        split(backends=[{"service": "v1", "weight": "50m"}]),
        "spec.backends[0].weight: must be a number, got '50m'",
    ),
    (
        "boolean weight",
        split(backends=[{"service": "v1", "weight": True}]),
        "spec.backends[0].weight: must be a number, got true",
    ),
    ("missing weight", split(backends=[{"service": "v1"}]), "spec.backends[0].weight: required"),
    ("no backends", split(backends=[]), "spec.backends: at least one backend is required"),
    ("no service", split(service=None), "spec.service: required"),
    ("service elsewhere", split(service="apex.other"), "spec.service: 'apex.other' is in another namespace"),
    (
        "backend twice",
        split(backends=[{"service": "v1", "weight": 1}] * 2),
        "spec.backends[1].service: 'v1' is listed twice",
    ),
    (
        "v1alpha2 has no matches",
        split("split.smi-spec.io/v1alpha2", matches=[{"kind": "HTTPRouteGroup", "name": "ab"}]),
        "spec.matches: split.smi-spec.io/v1alpha2 has no matches",
    ),
    (
        "v1alpha3 matches only route groups",
        split("split.smi-spec.io/v1alpha3", matches=[{"kind": "TCPRoute", "name": "db"}]),
        "spec.matches[0].kind: must be one of HTTPRouteGroup, got 'TCPRoute'",
    ),
]


test_valid, test_invalid = reading_tests(VALID, INVALID)
