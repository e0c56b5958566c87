"""Reading OSM's IngressBackend as OSM's docs write it, and each refusal naming its field."""

from __future__ import annotations

from typing import Any

from meshcp.model.osm_policy import POLICY_API, IngressBackend, IngressBackendPort, IngressSource
from tests.model.manifests import Invalid, Valid, manifest, meta, reading_tests

NGINX = {"kind": "Service", "name": "ingress-nginx-controller", "namespace": "ingress-nginx"}
PRINCIPAL = {"kind": "AuthenticatedPrincipal", "name": "ingress-nginx.ingress-nginx.cluster.local"}


def backend(**spec: Any) -> dict[str, Any]:
    """OSM's ingress demo: ingress-nginx may call bookstore over HTTP on 14001."""
    body: dict[str, Any] = {
        "backends": [{"name": "bookstore", "port": {"number": 14001, "protocol": "http"}}],
        "sources": [NGINX],
    }
    body.update(spec)
    return manifest(POLICY_API, "IngressBackend", spec=body)


def https(**tls: Any) -> list[dict[str, Any]]:
    return [{"name": "bookstore", "port": {"number": 14001, "protocol": "https"}, "tls": tls}]


SPIFFE = "spiffe://cluster.local/ns/ingress-nginx/sa/ingress-nginx"
STORE = IngressBackendPort("bookstore", 14001, "http")
SERVICE = IngressSource("Service", "ingress-nginx-controller", "ingress-nginx")
VALID: Valid = [
    ("http from a Service", backend(), IngressBackend(meta(), (STORE,), (SERVICE,))),
    (
        "https with SNI names (folded) and a principal; an IP range normalised; Service namespace defaulted",
        backend(
            backends=https(sniHosts=["Bookstore.Example.COM."]),
            sources=[
                PRINCIPAL,
                {"kind": "IPRange", "name": "10.0.0.7/8"},
                {"kind": "Service", "name": "edge"},
            ],
        ),
        IngressBackend(
            meta(),
            (IngressBackendPort("bookstore", 14001, "https", False, ("bookstore.example.com",)),),
            (
                IngressSource("AuthenticatedPrincipal", "ingress-nginx.ingress-nginx.cluster.local"),
                IngressSource("IPRange", "10.0.0.0/8"),
                IngressSource("Service", "edge", "ns"),
            ),
        ),
    ),
    (
        "https without client certificate validation",
        backend(backends=https(skipClientCertValidation=True), sources=[NGINX]),
        IngressBackend(meta(), (IngressBackendPort("bookstore", 14001, "https", True),), (SERVICE,)),
    ),
    (
        "a SPIFFE ID is a principal too",
        backend(backends=https(), sources=[{"kind": "AuthenticatedPrincipal", "name": SPIFFE}]),
        IngressBackend(
            meta(),
            (IngressBackendPort("bookstore", 14001, "https"),),
            (IngressSource("AuthenticatedPrincipal", SPIFFE),),
        ),
    ),
    (
        "matches are kept (to be reported: OSM never applied them)",
        backend(matches=[{"apiGroup": "specs.smi-spec.io", "kind": "HTTPRouteGroup", "name": "get"}]),
        IngressBackend(meta(), (STORE,), (SERVICE,), ("get",)),
    ),
]
INVALID: Invalid = [
    ("no backends", backend(backends=[]), "spec.backends: at least one backend is required"),
    ("no sources", backend(sources=[]), "spec.sources: at least one source is required"),
    (
        "grpc",
        backend(backends=[{"name": "bookstore", "port": {"number": 14001, "protocol": "grpc"}}]),
        "spec.backends[0].port.protocol: must be one of http, https",
    ),
    ("no port", backend(backends=[{"name": "bookstore"}]), "spec.backends[0].port: required"),
    (
        "port 0",
        backend(backends=[{"name": "bookstore", "port": {"number": 0, "protocol": "http"}}]),
        "spec.backends[0].port.number:",
    ),
    (
        "no backend name",
        backend(backends=[{"port": {"number": 80, "protocol": "http"}}]),
        "spec.backends[0].name:",
    ),
    (
        "a backend twice",
        backend(backends=[*https(), *https()]),
        "spec.backends[1]: backend bookstore port 14001 is listed twice",
    ),
    (
        "SNI on http",
        backend(
            backends=[
                {"name": "b", "port": {"number": 80, "protocol": "http"}, "tls": {"sniHosts": ["b.test"]}}
            ]
        ),
        "spec.backends[0].tls.sniHosts: SNI names need protocol https",
    ),
    ("bad SNI", backend(backends=https(sniHosts=["http://x"])), "spec.backends[0].tls.sniHosts[0]:"),
    (
        "bad CIDR",
        backend(sources=[{"kind": "IPRange", "name": "10.0.0.0/33"}]),
        "spec.sources[0].name: '10.0.0.0/33' is not an IP address range",
    ),
    (
        "unknown kind",
        backend(sources=[{"kind": "ServiceAccount", "name": "x"}]),
        "spec.sources[0].kind: must be one of Service, IPRange, AuthenticatedPrincipal",
    ),
    (
        "a Service without a name",
        backend(sources=[{"kind": "Service", "namespace": "x"}]),
        "spec.sources[0].name:",
    ),
    (
        "a principal with http",
        backend(sources=[PRINCIPAL]),
        "spec.sources[0]: an AuthenticatedPrincipal needs https backends: backend bookstore port 14001",
    ),
    (
        "a principal without client certificate validation",
        backend(backends=https(skipClientCertValidation=True), sources=[PRINCIPAL]),
        "spec.sources[0]: an AuthenticatedPrincipal needs the client certificate validated",
    ),
    (
        "a principal that is no identity",
        backend(backends=https(), sources=[{"kind": "AuthenticatedPrincipal", "name": "CN=nginx"}]),
        "spec.sources[0].name: 'CN=nginx' is not an identity",
    ),
    (
        "skipClientCertValidation not a boolean",
        backend(backends=https(skipClientCertValidation="yes")),
        "spec.backends[0].tls.skipClientCertValidation: must be true or false",
    ),
]

test_valid, test_invalid = reading_tests(VALID, INVALID)
