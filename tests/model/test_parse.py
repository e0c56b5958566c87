"""Manifests -> model objects: every kind, every version read, and the reason for each refusal."""

from __future__ import annotations

import re
from typing import Any

import pytest

from meshcp.model.core import (
    ContainerPort,
    EndpointSlice,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    ServicePort,
    SliceEndpoint,
    SlicePort,
)
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.meta import Meta, ObjectRef, frozen_map
from meshcp.model.parse import InvalidObject, parse_object, port_protocol, re2_incompatibility, ref_of
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
from meshcp.model.state import MeshObject

ACCESS = "access.smi-spec.io/v1alpha3"
SPECS = "specs.smi-spec.io/v1alpha4"
SPLIT = "split.smi-spec.io/v1alpha4"
CONFIG = "config.meshcp.dev/v1alpha1"


def manifest(
    api_version: str, kind: str, name: str = "x", namespace: str | None = "ns", **body: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


def meta(name: str = "x", namespace: str = "ns", **labels: str) -> Meta:
    return Meta(name=name, namespace=namespace, labels=frozen_map(labels))


def target(api_version: str = ACCESS, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "destination": {"kind": "ServiceAccount", "name": "store", "namespace": "ns"},
        "sources": [{"kind": "ServiceAccount", "name": "buyer", "namespace": "buyers"}],
        "rules": [{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["buy"]}],
    }
    body.update(spec)
    return manifest(api_version, "TrafficTarget", spec=body)


def routes(api_version: str = SPECS, **match: Any) -> dict[str, Any]:
    return manifest(api_version, "HTTPRouteGroup", spec={"matches": [{"name": "m", **match}]})


def split(api_version: str = SPLIT, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "service": "apex",
        "backends": [{"service": "v1", "weight": 75}, {"service": "v2", "weight": 25}],
    }
    body.update(spec)
    return manifest(api_version, "TrafficSplit", spec=body)


def service(*ports: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return manifest("v1", "Service", spec={"ports": list(ports), **spec})


def mesh_config(**spec: Any) -> dict[str, Any]:
    return manifest(CONFIG, "MeshConfig", "meshcp", None, spec=spec)


POD = manifest(
    "v1",
    "Pod",
    "web-0",
    spec={
        "serviceAccountName": "web",
        "hostNetwork": True,
        "containers": [
            {"name": "a", "ports": [{"containerPort": 8080, "name": "http"}]},
            {"name": "b", "ports": [{"containerPort": 9090}]},
        ],
    },
    status={
        "podIP": "10.244.1.5",
        "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
    },
)

SLICE = manifest(
    "discovery.k8s.io/v1",
    "EndpointSlice",
    "web-abc",
    addressType="IPv4",
    endpoints=[
        {"addresses": ["10.244.1.5"], "targetRef": {"kind": "Pod", "name": "web-0"}},
        {"addresses": ["10.244.1.6"], "conditions": {"ready": False}},
    ],
    ports=[{"name": "http", "port": 8080}],
)
SLICE["metadata"]["labels"] = {"kubernetes.io/service-name": "web"}

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

VALID: list[tuple[str, dict[str, Any], MeshObject]] = [
    (
        "namespace is cluster-scoped",
        manifest("v1", "Namespace", "shop", "ignored"),
        Namespace(Meta("shop")),
    ),
    (
        "service account defaults to namespace default",
        manifest("v1", "ServiceAccount", "web", None),
        ServiceAccount(Meta("web", "default")),
    ),
    (
        "service ports, selector, clusterIP",
        service(
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "grpc-api", "port": 81, "targetPort": "api"},
            {"name": "db", "port": 82, "targetPort": "9000", "appProtocol": "tcp", "protocol": "TCP"},
            {"port": 83},
            selector={"app": "web"},
            clusterIP="10.96.0.10",
        ),
        Service(
            meta(),
            (
                ServicePort(80, 8080, "http", "http"),
                ServicePort(81, "api", "grpc", "grpc-api"),
                ServicePort(82, 9000, "tcp", "db"),
                ServicePort(83, 83, "http", ""),
            ),
            frozen_map({"app": "web"}),
            "10.96.0.10",
        ),
    ),
    (
        "headless service without selector",
        service({"port": 53, "protocol": "UDP", "name": "dns"}, clusterIP="None", selector={}),
        Service(meta(), (ServicePort(53, 53, "http", "dns", "UDP"),), None, "None"),
    ),
    (
        "pod",
        POD,
        Pod(
            meta("web-0"),
            "web",
            "10.244.1.5",
            True,
            (ContainerPort(8080, "http"), ContainerPort(9090)),
            host_network=True,
        ),
    ),
    (
        "pod without account, address or readiness",
        manifest("v1", "Pod", "p", status={"conditions": [{"type": "Ready", "status": "False"}]}),
        Pod(meta("p"), "default", "", False),
    ),
    (
        "endpoint slice",
        SLICE,
        EndpointSlice(
            Meta("web-abc", "ns", frozen_map({"kubernetes.io/service-name": "web"})),
            "web",
            (SliceEndpoint(("10.244.1.5",), True, "web-0"), SliceEndpoint(("10.244.1.6",), False)),
            (SlicePort(8080, "http"),),
        ),
    ),
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
    ("mesh config defaults", mesh_config(), MeshConfig(Meta("meshcp"))),
    (
        "mesh config every field",
        mesh_config(
            meshName="blue",
            trustDomain="mesh.example.com",
            permissive=True,
            egressPassthrough=True,
            certValidity="1h30m",
            certProvider="vault",
            debounceWindow="50ms",
            debounceMax="2s",
            outboundIPRangeExclusions=["169.254.169.254/32", "10.0.0.1/8"],
            outboundPortExclusions=[5432],
            inboundPortExclusions=[9999, 8888],
            sidecarImage="envoyproxy/envoy:v1.40.1",
            sidecarLogLevel="debug",
        ),
        MeshConfig(
            Meta("meshcp"),
            mesh_name="blue",
            trust_domain="mesh.example.com",
            permissive=True,
            egress_passthrough=True,
            cert_validity_seconds=5400,
            cert_provider="vault",
            debounce_window=0.05,
            debounce_max=2.0,
            outbound_ip_exclusions=("169.254.169.254/32", "10.0.0.0/8"),
            outbound_port_exclusions=(5432,),
            inbound_port_exclusions=(9999, 8888),
            sidecar_image="envoyproxy/envoy:v1.40.1",
            sidecar_log_level="debug",
        ),
    ),
]


@pytest.mark.parametrize(
    ("manifest_", "expected"), [case[1:] for case in VALID], ids=[case[0] for case in VALID]
)
def test_valid(manifest_: dict[str, Any], expected: MeshObject) -> None:
    assert parse_object(manifest_) == expected


def with_labels(body: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    body["metadata"]["labels"] = labels
    return body


def slice_with(**changes: Any) -> dict[str, Any]:
    return {**SLICE, "metadata": dict(SLICE["metadata"]), **changes}


INVALID: list[tuple[str, Any, str]] = [
    # Envelope and metadata
    ("not a mapping", ["a", "list"], "a manifest must be a mapping, got a list"),
    ("no kind", {"apiVersion": "v1", "metadata": {"name": "x"}}, "kind: required"),
    ("no apiVersion", {"kind": "Service", "metadata": {"name": "x"}}, "apiVersion: required"),
    ("unknown kind", manifest("apps/v1", "Deployment"), "unsupported kind Deployment (apps/v1)"),
    (
        "unknown version",
        split("split.smi-spec.io/v1alpha1"),
        "unsupported apiVersion split.smi-spec.io/v1alpha1",
    ),
    ("no name", {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {}}, "metadata.name: required"),
    ("bad name", manifest("v1", "ServiceAccount", "Web_1"), "metadata.name: must be a DNS subdomain"),
    ("service name", manifest("v1", "Service", "1web"), "metadata.name: must be a DNS-1035 label"),
    ("namespace name", manifest("v1", "Namespace", "a.b", None), "metadata.name: must be a DNS label"),
    (
        "bad namespace",
        manifest("v1", "ServiceAccount", "a", "Shop"),
        "metadata.namespace: must be a DNS label",
    ),
    ("metadata a list", {"apiVersion": "v1", "kind": "Pod", "metadata": []}, "metadata: must be a mapping"),
    (
        "label not a string",
        with_labels(manifest("v1", "Pod", "p"), {"version": 1}),
        "metadata.labels.version: must be a string, got 1 (quote it to keep it text)",
    ),
    # Service
    ("port zero", service({"port": 0}), "spec.ports[0].port: must be a port number 1..65535, got 0"),
    (
        "port too big",
        service({"port": 70000}),
        "spec.ports[0].port: must be a port number 1..65535, got 70000",
    ),
    (
        "port a string",
        service({"port": "80"}),
        "spec.ports[0].port: must be a port number 1..65535, got '80'",
    ),
    ("port missing", service({"name": "http"}), "spec.ports[0].port: required"),
    (
        "targetPort range",
        service({"port": 80, "targetPort": 0}),
        "spec.ports[0].targetPort: must be a port number",
    ),
    (
        "targetPort name",
        service({"port": 80, "targetPort": "Web_Port"}),
        "spec.ports[0].targetPort: must be a port name",
    ),
    (
        "transport",
        service({"port": 80, "protocol": "HTTP"}),
        "spec.ports[0].protocol: must be TCP, UDP or SCTP",
    ),
    (
        "duplicate port",
        service({"port": 80}, {"port": 80}),
        "spec.ports[1].port: 80/TCP is also spec.ports[0]",
    ),
    (
        "duplicate port name",
        service({"port": 80, "name": "a"}, {"port": 81, "name": "a"}),
        "spec.ports[1].name",
    ),
    ("clusterIP", service({"port": 80}, clusterIP="10.96.0.300"), "spec.clusterIP: must be an IP address"),
    ("ports not a list", service(ports={"port": 80}), "spec.ports: must be a list, got a mapping"),
    # Pod
    ("podIP", {**POD, "status": {"podIP": "nope"}}, "status.podIP: must be an IP address, got 'nope'"),
    (
        "container port",
        {**POD, "spec": {"containers": [{"ports": [{"name": "http"}]}]}},
        "spec.containers[0].ports[0].containerPort: required",
    ),
    (
        "hostNetwork",
        {**POD, "spec": {"hostNetwork": "yes"}},
        "spec.hostNetwork: must be true or false, got 'yes'",
    ),
    # EndpointSlice
    (
        "slice without service label",
        with_labels(slice_with(), {}),
        "metadata.labels.kubernetes.io/service-name: required",
    ),
    (
        "slice address family",
        slice_with(endpoints=[{"addresses": ["fd00::1"]}]),
        "endpoints[0].addresses[0]: is an IPv6 address in a slice of addressType IPv4",
    ),
    (
        "slice empty addresses",
        slice_with(endpoints=[{"addresses": []}]),
        "endpoints[0].addresses: at least one",
    ),
    ("slice port", slice_with(ports=[{"port": 0}]), "ports[0].port: must be a port number"),
    (
        "slice ready",
        slice_with(endpoints=[{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}]),
        "ready",
    ),
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
        r"spec.matches[0].pathRegex: backreferences (\1) are not supported by RE2 (Envoy)",
    ),
    (
        "lookahead",
        routes(pathRegex="/(?!admin)"),
        "spec.matches[0].pathRegex: lookahead and lookbehind",
    ),
    (
        "lookbehind in a header",
        routes(headers={"cookie": "(?<=type=)insider"}),
        "spec.matches[0].headers.cookie: lookahead and lookbehind",
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
    # MeshConfig
    ("config typo", mesh_config(permisive=True), "spec.permisive: unknown field (known: meshName"),
    (
        "config duration",
        mesh_config(debounceWindow="100"),
        'spec.debounceWindow: must be a duration such as "100ms"',
    ),
    ("config duration number", mesh_config(certValidity=3600), "spec.certValidity: must be a duration"),
    ("config validity", mesh_config(certValidity="0s"), "spec.certValidity: must be at least 1s"),
    (
        "config debounce order",
        mesh_config(debounceWindow="2s", debounceMax="1s"),
        "spec.debounceMax: 1s must not be shorter than debounceWindow (2s)",
    ),
    (
        "config provider",
        mesh_config(certProvider="acme"),
        "spec.certProvider: must be one of internal, cfssl, vault",
    ),
    (
        "config cidr",
        mesh_config(outboundIPRangeExclusions=["10.0.0.0/33"]),
        "spec.outboundIPRangeExclusions[0]",
    ),
    (
        "config port",
        mesh_config(inboundPortExclusions=[0]),
        "spec.inboundPortExclusions[0]: must be a port number",
    ),
    ("config log level", mesh_config(sidecarLogLevel="loud"), "spec.sidecarLogLevel: must be one of trace"),
    (
        "config boolean",
        mesh_config(permissive="false"),
        "spec.permissive: must be true or false, got 'false'",
    ),
    (
        "config trust domain",
        mesh_config(trustDomain="Cluster Local"),
        "spec.trustDomain: must be a DNS subdomain",
    ),
]


@pytest.mark.parametrize(
    ("manifest_", "reason"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_invalid(manifest_: Any, reason: str) -> None:
    with pytest.raises(InvalidObject) as raised:
        parse_object(manifest_)
    assert raised.value.reason.startswith(reason) or reason in raised.value.reason, raised.value.reason
    assert raised.value.ref == ref_of(manifest_)


def test_invalid_object_names_the_object() -> None:
    with pytest.raises(InvalidObject, match=re.escape("Service shop/web: spec.ports[0].port: required")):
        parse_object(manifest("v1", "Service", "web", "shop", spec={"ports": [{}]}))


@pytest.mark.parametrize(
    ("app_protocol", "name", "protocol"),
    [
        ("", "http", "http"),
        ("", "http-web", "http"),
        ("", "grpc", "grpc"),
        ("", "grpc-api", "grpc"),
        ("", "tcp", "tcp"),
        ("", "tcp-db", "tcp"),
        ("", "tcp-server-first", "tcp-server-first"),
        ("", "tcp-server-first-mysql", "tcp-server-first"),
        ("", "tcp-server", "tcp"),
        ("", "mysql", "http"),
        ("", "https", "http"),
        ("", "", "http"),
        ("tcp", "http-web", "tcp"),
        ("GRPC", "", "grpc"),
        ("tcp-server-first", "http", "tcp-server-first"),
        ("kubernetes.io/h2c", "tcp-x", "tcp"),
    ],
)
def test_port_protocol(app_protocol: str, name: str, protocol: str) -> None:
    assert port_protocol(app_protocol, name) == protocol


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "/books-bought",
        ".*a-book.*new",
        r"^(.*?;)?(type=insider)(;.*)?$",
        r"/api/v[0-9]+/.*",
        r"\d{1,3}\.\d{1,3}",
        "a{2,}?",
        "(?i)get",
        "(?P<id>[a-z]+)",
        "[]a]",
        "[^]a]+",
        r"[\w.-]+",
        r"\bword\b",
        r"\x41\0",
        "a{1000}",
    ],
)
def test_re2_compatible_patterns(pattern: str) -> None:
    assert re2_incompatibility(pattern) is None
    re.compile(pattern)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(a)\1", "backreferences"),
        ("(?P<a>x)(?P=a)", "backreferences"),
        ("(?=x)", "lookahead"),
        ("(?!x)", "lookahead"),
        ("(?<=x)", "lookbehind"),
        ("(?<!x)", "lookbehind"),
        ("(?>a)", "atomic"),
        ("a*+", "possessive"),
        ("a{2}+", "possessive"),
        ("(a)?(?(1)b|c)", "conditional"),
        ("(?#note)a", "comments"),
        ("(?x)a b", "flag 'x'"),
        (r"a\Z", r"\Z"),
        (r"\u0041", r"\u"),
        ("a{,3}", "{0,n}"),
        ("a{1001}", "above 1000"),
        ("[[:alpha:]]", "inside a character class"),
        ("[a--b]", "ambiguous"),
        (r"[\b]", r"\b"),
    ],
)
def test_re2_incompatible_patterns(pattern: str, reason: str) -> None:
    problem = re2_incompatibility(pattern)
    assert problem is not None and reason in problem, problem


@pytest.mark.parametrize(
    ("value", "ref"),
    [
        (manifest("v1", "Service", "web", None), ObjectRef("Service", "default", "web")),
        (manifest("v1", "Namespace", "shop", "x"), ObjectRef("Namespace", "", "shop")),
        (manifest(CONFIG, "MeshConfig", "meshcp", "x"), ObjectRef("MeshConfig", "", "meshcp")),
        (manifest("apps/v1", "Deployment", "web", None), ObjectRef("Deployment", "", "web")),
        ({"kind": 3, "metadata": "x"}, ObjectRef("", "", "")),
        ("text", ObjectRef("", "", "")),
    ],
)
def test_ref_of(value: object, ref: ObjectRef) -> None:
    assert ref_of(value) == ref


def test_mesh_config_sidecar_resources() -> None:
    manifest = {
        "apiVersion": "config.meshcp.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "meshcp"},
        "spec": {"sidecarResources": {"requests": {"memory": "64Mi", "cpu": "100m"}, "limits": {"cpu": "1"}}},
    }
    config = parse_object(manifest)
    assert isinstance(config, MeshConfig)
    assert config.sidecar_resources() == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "1"},
    }
    manifest["spec"] = {"sidecarResources": {"limits": {"memory": "lots"}}}
    with pytest.raises(
        InvalidObject, match=r"spec.sidecarResources.limits.memory: must be a Kubernetes quantity"
    ):
        parse_object(manifest)
    manifest["spec"] = {"sidecarResources": {"requestz": {}}}
    with pytest.raises(InvalidObject, match=r"spec.sidecarResources.requestz: unknown field"):
        parse_object(manifest)
