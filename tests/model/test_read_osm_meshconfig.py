"""Reading OSM's MeshConfig (v1alpha2, v1alpha3): each mapped field becomes meshcp's
setting, each unsupported field is reported once by its path, bad values name their field,
and meshcp's own MeshConfig wins field by field, reported naming both objects."""

from __future__ import annotations

from typing import Any

import pytest

from meshcp.model.meshconfig import MeshConfig
from meshcp.model.meta import ObjectRef
from meshcp.model.osm_meshconfig import OSM_CONFIG_VERSIONS, OsmMeshConfig, effective
from meshcp.model.parse import InvalidObject, parse_object
from meshcp.model.state import MeshState
from meshcp.policy.analysis import analyze
from meshcp.policy.build import build_policies

OSM_REF = ObjectRef("MeshConfig", "osm-system", "osm-mesh-config")


def osm_config(version: str = "v1alpha2", name: str = "osm-mesh-config", **sections: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"config.openservicemesh.io/{version}",
        "kind": "MeshConfig",
        "metadata": {"name": name, "namespace": "osm-system"},
        "spec": sections,
    }


def read(manifest: dict[str, Any]) -> OsmMeshConfig:
    obj = parse_object(manifest)
    assert isinstance(obj, OsmMeshConfig)
    return obj


#: Every mapped field: (section, field, value) → (MeshConfig attribute, value).
MAPPED = [
    ("traffic", "enablePermissiveTrafficPolicyMode", True, "permissive", True),
    ("traffic", "enableEgress", True, "egress_passthrough", True),
    ("traffic", "outboundIPRangeExclusionList", ["10.1.2.3/8"], "outbound_ip_exclusions", ("10.0.0.0/8",)),
    (
        "traffic",
        "outboundIPRangeInclusionList",
        ["10.96.0.0/12"],
        "outbound_ip_inclusions",
        ("10.96.0.0/12",),
    ),
    ("traffic", "outboundPortExclusionList", [6379, 25], "outbound_port_exclusions", (6379, 25)),
    ("traffic", "inboundPortExclusionList", [9999], "inbound_port_exclusions", (9999,)),
    ("certificate", "serviceCertValidityDuration", "1h", "cert_validity_seconds", 3600),
    ("sidecar", "logLevel", "error", "sidecar_log_level", "error"),
    ("sidecar", "envoyImage", "envoyproxy/envoy:v1.40.1", "sidecar_image", "envoyproxy/envoy:v1.40.1"),
    ("sidecar", "resources", {"limits": {"memory": "256Mi"}}, "sidecar_limits", (("memory", "256Mi"),)),
]


@pytest.mark.parametrize("version", ["v1alpha2", "v1alpha3"])
@pytest.mark.parametrize(("section", "key", "value", "attribute", "expected"), MAPPED)
def test_each_mapped_field_becomes_meshcps_setting(
    version: str, section: str, key: str, value: Any, attribute: str, expected: Any
) -> None:
    manifest = osm_config(version)
    manifest["spec"] = {section: {key: value}}
    config = read(manifest)
    assert config.ref == OSM_REF
    assert getattr(config.settings, attribute) == expected
    assert config.settings.is_set(attribute)
    assert config.source(attribute) == f"spec.{section}.{key}"
    assert config.unsupported == ()
    # Alone in the mesh, it is the mesh's setting.
    assert getattr(MeshState({config.ref: config}).mesh_config, attribute) == expected


def test_both_versions_are_read_and_others_refused() -> None:
    assert OSM_CONFIG_VERSIONS == (
        "config.openservicemesh.io/v1alpha2",
        "config.openservicemesh.io/v1alpha3",
    )
    with pytest.raises(InvalidObject) as refused:
        parse_object(osm_config("v1alpha1"))
    assert "unsupported apiVersion config.openservicemesh.io/v1alpha1 for MeshConfig" in refused.value.reason
    assert "config.meshcp.dev/v1alpha1" in refused.value.reason


def test_an_unset_field_keeps_meshcps_default() -> None:
    config = read(osm_config(traffic={"enableEgress": True}))
    assert config.settings.explicit == frozenset({"egress_passthrough"})
    assert MeshState({config.ref: config}).mesh_config.permissive is False


#: OSM's installer writes every field; these values ask for nothing meshcp does not do.
OSM_DEFAULTS: dict[str, Any] = {
    "sidecar": {
        "enablePrivilegedInitContainer": False,
        "maxDataPlaneConnections": 0,
        "configResyncInterval": "0s",
        "tlsMinProtocolVersion": "TLSv1_2",
        "tlsMaxProtocolVersion": "TLSv1_3",
        "localProxyMode": "Localhost",
    },
    "traffic": {
        "networkInterfaceExclusionList": [],
        "inboundExternalAuthorization": {"enable": False, "statPrefix": "inboundExtAuthz", "timeout": "1s"},
    },
    "observability": {"enableDebugServer": False, "tracing": {"enable": False, "port": 9411}},
    "featureFlags": {
        "enableWASMStats": True,
        "enableEgressPolicy": True,
        "enableMulticlusterMode": False,
        "enableSnapshotCacheMode": False,
        "enableAsyncProxyServiceMapping": False,
        "enableIngressBackendPolicy": True,
        "enableEnvoyActiveHealthChecks": False,
        "enableRetryPolicy": True,
    },
}


@pytest.mark.parametrize("version", ["v1alpha2", "v1alpha3"])
def test_fields_whose_value_asks_for_nothing_are_not_reported(version: str) -> None:
    assert read(osm_config(version, **OSM_DEFAULTS)).unsupported == ()


def test_unsupported_fields_are_reported_once_by_path() -> None:
    manifest = osm_config(
        sidecar={"logLevel": "debug", "enablePrivilegedInitContainer": True, "localProxyMode": "PodIP"},
        traffic={"enableEgress": False, "inboundExternalAuthorization": {"enable": True, "port": 9191}},
        observability={"tracing": {"enable": True, "address": "jaeger.tracing"}},
        certificate={"certKeyBitSize": 2048},
        featureFlags={"enableRetryPolicy": False, "enableWASMStats": True},
        clusterSetID="x",
    )
    config = read(manifest)
    paths = [path for path, _ in config.unsupported]
    assert paths == [
        "spec.sidecar.enablePrivilegedInitContainer",
        "spec.sidecar.localProxyMode",
        "spec.traffic.inboundExternalAuthorization",
        "spec.observability.tracing",
        "spec.certificate.certKeyBitSize",
        "spec.featureFlags.enableRetryPolicy",
        "spec.clusterSetID",
    ]
    # The mapped fields still apply.
    assert config.settings.sidecar_log_level == "debug"
    # The round reports each once, on the OSM MeshConfig, by path; analyze gives each a code
    # and its field, and the same problems again in the next round are the same problems.
    state = MeshState({config.ref: config})
    problems = [p for p in build_policies(state).problems if p.ref == OSM_REF]
    assert len(problems) == len(paths)
    for path, problem in zip(paths, problems, strict=True):
        assert problem.reason.startswith(f"{path}: not supported by meshcp, ignored (")
    assert build_policies(state).problems == build_policies(state).problems
    findings = [f for f in analyze(state) if f.ref == OSM_REF]
    assert sorted((f.code, f.field) for f in findings) == sorted(("MCP0210", path) for path in paths)


@pytest.mark.parametrize(
    ("sections", "field", "problem"),
    [
        (
            {"traffic": {"enablePermissiveTrafficPolicyMode": "yes"}},
            "spec.traffic.enablePermissiveTrafficPolicyMode",
            "true or false",
        ),
        (
            {"traffic": {"outboundPortExclusionList": [70000]}},
            "spec.traffic.outboundPortExclusionList[0]",
            "port number",
        ),
        (
            {"traffic": {"outboundIPRangeExclusionList": ["10.0.0.0/33"]}},
            "spec.traffic.outboundIPRangeExclusionList[0]",
            "CIDR",
        ),
        (
            {"certificate": {"serviceCertValidityDuration": "a day"}},
            "spec.certificate.serviceCertValidityDuration",
            "duration",
        ),
        ({"sidecar": {"logLevel": "loud"}}, "spec.sidecar.logLevel", "must be one of"),
        (
            {"sidecar": {"resources": {"limits": {"cpu": "lots"}}}},
            "spec.sidecar.resources.limits.cpu",
            "quantity",
        ),
        ({"traffic": ["enableEgress"]}, "spec.traffic", "mapping"),
    ],
)
def test_bad_values_are_refused_naming_the_field(sections: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(InvalidObject) as refused:
        parse_object(osm_config(**sections))
    assert refused.value.ref == OSM_REF
    assert refused.value.reason.startswith(f"{field}: ")
    assert problem in refused.value.reason


def meshcp_config(**spec: Any) -> MeshConfig:
    obj = parse_object(
        {
            "apiVersion": "config.meshcp.dev/v1alpha1",
            "kind": "MeshConfig",
            "metadata": {"name": "meshcp"},
            "spec": spec,
        }
    )
    assert isinstance(obj, MeshConfig)
    return obj


def test_meshcps_meshconfig_wins_field_by_field_and_the_conflict_names_both() -> None:
    osm = read(
        osm_config(
            traffic={
                "enablePermissiveTrafficPolicyMode": True,
                "enableEgress": True,
                "outboundPortExclusionList": [25],
            },
            sidecar={"logLevel": "error"},
        )
    )
    own = meshcp_config(permissive=False, egressPassthrough=True, sidecarLogLevel="debug")
    mesh = effective((own,), (osm,))
    assert mesh.permissive is False  # both set it: meshcp's
    assert mesh.sidecar_log_level == "debug"  # both set it: meshcp's
    assert mesh.outbound_port_exclusions == (25,)  # only OSM's sets it
    assert mesh.egress_passthrough is True  # both agree
    assert mesh.ref == own.ref
    assert mesh.is_set("outbound_port_exclusions") and mesh.is_set("permissive")
    state = MeshState({own.ref: own, osm.ref: osm})
    assert state.mesh_config == mesh
    reasons = sorted(p.reason for p in build_policies(state).problems if p.ref == OSM_REF)
    assert reasons == [
        "spec.sidecar.logLevel: error is overridden by MeshConfig meshcp sidecarLogLevel: debug "
        "(meshcp's MeshConfig wins where both set a setting)",
        "spec.traffic.enablePermissiveTrafficPolicyMode: true is overridden by MeshConfig meshcp "
        "permissive: false (meshcp's MeshConfig wins where both set a setting)",
    ]
    assert sorted(f.code for f in analyze(state) if f.ref == OSM_REF) == ["MCP0211", "MCP0211"]


def test_several_osm_meshconfigs_the_first_is_used_the_others_reported() -> None:
    first = read(osm_config(name="a", traffic={"enableEgress": True}))
    second = read(osm_config(name="b", traffic={"enableEgress": False}))
    state = MeshState({first.ref: first, second.ref: second})
    assert state.mesh_config.egress_passthrough is True
    assert state.mesh_config.ref == first.ref
    problems = [p for p in build_policies(state).problems if p.ref == second.ref]
    assert [p.reason for p in problems] == [
        "not used: MeshConfig osm-system/a is the OSM MeshConfig read (the first by namespace/name)"
    ]
    assert [f.code for f in analyze(state) if f.ref == second.ref] == ["MCP0212"]
