"""Reading MeshConfig: every field, its defaults, and each refusal."""

from __future__ import annotations

import pytest

from meshcp.model.meshconfig import MeshConfig
from meshcp.model.meta import Meta
from meshcp.model.parse import InvalidObject, parse_object
from tests.model.manifests import Invalid, Valid, mesh_config, reading_tests

VALID: Valid = [
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
            explicit=frozenset(
                {
                    "mesh_name",
                    "trust_domain",
                    "permissive",
                    "egress_passthrough",
                    "cert_validity_seconds",
                    "cert_provider",
                    "debounce_window",
                    "debounce_max",
                    "outbound_ip_exclusions",
                    "outbound_port_exclusions",
                    "inbound_port_exclusions",
                    "sidecar_image",
                    "sidecar_log_level",
                }
            ),
        ),
    ),
    (
        "mesh config: what was set, even to its default, is told from what was not",
        mesh_config(certProvider="internal", observability={"enablePerRouteStats": False}),
        MeshConfig(Meta("meshcp"), explicit=frozenset({"cert_provider", "per_route_stats"})),
    ),
]

INVALID: Invalid = [
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
        "spec.certProvider: must be one of internal, cfssl, vault, cert-manager",
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


test_valid, test_invalid = reading_tests(VALID, INVALID)


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


def test_mesh_config_observability() -> None:
    manifest = {
        "apiVersion": "config.meshcp.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "meshcp"},
        "spec": {"observability": {"enablePerRouteStats": True}},
    }
    config = parse_object(manifest)
    assert isinstance(config, MeshConfig) and config.per_route_stats
    manifest["spec"] = {"observability": {}}
    config = parse_object(manifest)
    assert isinstance(config, MeshConfig) and not config.per_route_stats
    manifest["spec"] = {"observability": {"enablePerRouteStats": "yes"}}
    with pytest.raises(InvalidObject, match=r"spec.observability.enablePerRouteStats: must be true or false"):
        parse_object(manifest)
    # OSM's tracing is not meshcp's: refused, not silently ignored.
    manifest["spec"] = {"observability": {"tracing": {"enable": True}}}
    with pytest.raises(InvalidObject, match=r"spec.observability.tracing: unknown field"):
        parse_object(manifest)
