"""Reading OSM's Egress as OSM's docs write it, and each refusal naming its field."""

from __future__ import annotations

from typing import Any

from meshcp.model.osm_policy import POLICY_API, Egress, EgressPort
from meshcp.model.smi import IdentitySubject
from tests.model.manifests import Invalid, Valid, manifest, meta, reading_tests


def egress(**spec: Any) -> dict[str, Any]:
    """OSM's egress demo: curl may call httpbin.org over HTTP on port 80."""
    body: dict[str, Any] = {
        "sources": [{"kind": "ServiceAccount", "name": "curl", "namespace": "curl"}],
        "hosts": ["httpbin.org"],
        "ports": [{"number": 80, "protocol": "http"}],
    }
    body.update(spec)
    return manifest(POLICY_API, "Egress", spec=body)


CURL = (IdentitySubject("curl", "curl"),)
VALID: Valid = [
    ("http host", egress(), Egress(meta(), CURL, (EgressPort(80, "http"),), ("httpbin.org",))),
    (
        "https and a wildcard, upper case folded",
        egress(hosts=["*.Example.COM.", "httpbin.org"], ports=[{"number": 443, "protocol": "https"}]),
        Egress(meta(), CURL, (EgressPort(443, "https"),), ("*.example.com", "httpbin.org")),
    ),
    (
        "tcp to CIDRs, a bare address as its /32, hosts ignored by TCP but kept",
        egress(
            hosts=[],
            ipAddresses=["203.0.113.0/24", "198.51.100.7"],
            ports=[{"number": 5432, "protocol": "tcp"}],
        ),
        Egress(meta(), CURL, (EgressPort(5432, "tcp"),), (), ("203.0.113.0/24", "198.51.100.7/32")),
    ),
    (
        "source namespace defaults to the Egress's; matches by HTTPRouteGroup",
        egress(
            sources=[{"kind": "ServiceAccount", "name": "curl"}],
            matches=[{"apiGroup": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup", "name": "get"}],
        ),
        Egress(
            meta(),
            (IdentitySubject("curl", "ns"),),
            (EgressPort(80, "http"),),
            ("httpbin.org",),
            (),
            ("get",),
        ),
    ),
]
INVALID: Invalid = [
    ("no sources", egress(sources=[]), "spec.sources: at least one source is required"),
    (
        "a Service as source",
        egress(sources=[{"kind": "Service", "name": "curl"}]),
        "spec.sources[0].kind: must be one of ServiceAccount",
    ),
    ("no ports", egress(ports=[]), "spec.ports: at least one port is required"),
    (
        "udp",
        egress(ports=[{"number": 53, "protocol": "udp"}]),
        "spec.ports[0].protocol: must be one of http, https, tcp",
    ),
    ("port 0", egress(ports=[{"number": 0, "protocol": "tcp"}]), "spec.ports[0].number:"),
    (
        "port twice",
        egress(ports=[{"number": 80, "protocol": "http"}, {"number": 80, "protocol": "tcp"}]),
        "spec.ports[1].number: port 80 is listed twice",
    ),
    ("bad host", egress(hosts=["http://x"]), "spec.hosts[0]: 'http://x' is not a host name"),
    (
        "bad CIDR",
        egress(ipAddresses=["10.0.0.0/33"]),
        "spec.ipAddresses[0]: '10.0.0.0/33' is not an IP address range",
    ),
    (
        "match of another kind",
        egress(matches=[{"kind": "UpstreamTrafficSetting", "name": "u"}]),
        "spec.matches[0].kind: must be one of HTTPRouteGroup",
    ),
    (
        "matches without an http port",
        egress(
            ports=[{"number": 443, "protocol": "https"}], matches=[{"kind": "HTTPRouteGroup", "name": "get"}]
        ),
        "spec.matches: HTTP route matches need an http port",
    ),
    ("http without hosts", egress(hosts=[]), "spec.hosts: an http port needs hosts"),
]

test_valid, test_invalid = reading_tests(VALID, INVALID)
