"""OSM's MeshConfig and OSM's names in the controller's policy: OSM's permissive mode opens
every inbound port, OSM's monitored-by label and sidecar-injection annotation decide
membership where meshcp's are absent, and an object whose two names disagree keeps meshcp's
and is reported once, by name."""

from __future__ import annotations

from meshcp.model.core import Namespace
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.model.meta import Meta, ObjectRef, frozen_map
from meshcp.model.parse import parse_object
from meshcp.model.state import MeshState
from meshcp.policy.analysis import analyze
from meshcp.policy.build import build_policies
from meshcp.policy.membership import INJECTION_ANNOTATION, is_meshed
from tests.policy.mesh import Bookstore, pod

OSM_LABEL = "openservicemesh.io/monitored-by"
OSM_INJECTION = "openservicemesh.io/sidecar-injection"


def osm_permissive(value: bool) -> object:
    return parse_object(
        {
            "apiVersion": "config.openservicemesh.io/v1alpha2",
            "kind": "MeshConfig",
            "metadata": {"name": "osm-mesh-config", "namespace": "osm-system"},
            "spec": {"traffic": {"enablePermissiveTrafficPolicyMode": value}},
        }
    )


def open_ports(state: MeshState) -> set[str]:
    return {
        f"{port.service.namespace}/{port.service.name}:{port.port}"
        for policy in build_policies(state).classes.values()
        for port in policy.inbound
        if port.any_source or any(rule.any_source for rule in port.http_rules)
    }


def test_osm_permissive_mode_opens_every_inbound_port() -> None:
    state = Bookstore().state()
    assert open_ports(state) == set()
    permissive = state.with_changes([osm_permissive(True)])  # type: ignore[list-item]
    assert permissive.mesh_config.permissive is True
    assert open_ports(permissive) == {
        "bookstore/bookstore:14001",
        "bookstore/bookstore-v1:14001",
        "bookstore/bookstore-v2:14001",
        "bookstore/warehouse:5432",
        "bookstore/warehouse:8080",
    }
    assert open_ports(permissive.with_changes([osm_permissive(False)])) == set()  # type: ignore[list-item]


def ns(name: str, labels: dict[str, str], annotations: dict[str, str] | None = None) -> Namespace:
    return Namespace(Meta(name, labels=frozen_map(labels), annotations=frozen_map(annotations or {})))


def test_osm_monitored_by_label_puts_a_namespace_in_the_mesh() -> None:
    state = MeshState().with_changes(
        [
            ns("osm-only", {OSM_LABEL: "meshcp"}),
            ns("osm-other-mesh", {OSM_LABEL: "osm"}),
            ns("meshcp-only", {MESH_LABEL: "meshcp"}),
            # Both: meshcp's label wins, whichever says yes.
            ns("meshcp-says-no", {MESH_LABEL: "other", OSM_LABEL: "meshcp"}),
            ns("meshcp-says-yes", {MESH_LABEL: "meshcp", OSM_LABEL: "other"}),
            ns("agree", {MESH_LABEL: "meshcp", OSM_LABEL: "meshcp"}),
        ]
    )
    assert state.meshed_namespaces == frozenset({"osm-only", "meshcp-only", "meshcp-says-yes", "agree"})
    problems = build_policies(state).problems
    assert sorted((p.ref.name, p.reason) for p in problems) == [
        (
            "meshcp-says-no",
            f"{MESH_LABEL}='other' and OSM's {OSM_LABEL}='meshcp' disagree: meshcp's {MESH_LABEL} is used",
        ),
        (
            "meshcp-says-yes",
            f"{MESH_LABEL}='meshcp' and OSM's {OSM_LABEL}='other' disagree: meshcp's {MESH_LABEL} is used",
        ),
    ]
    codes = {(f.ref.name, f.code) for f in analyze(state) if f.code == "MCP0213"}
    assert codes == {("meshcp-says-no", "MCP0213"), ("meshcp-says-yes", "MCP0213")}


def annotated(name: str, **annotations: str) -> object:
    base = pod("shop", name, "web", "10.0.0.1")
    return base.__class__(
        Meta(name, "shop", labels=base.meta.labels, annotations=frozen_map(annotations)),
        base.service_account,
        base.ip,
        base.ready,
    )


def test_osm_sidecar_injection_annotation_takes_a_pod_out_unless_meshcps_says_otherwise() -> None:
    meshed = frozenset({"shop"})
    osm_off = annotated("osm-off", **{OSM_INJECTION: "disabled"})
    both = annotated("both", **{OSM_INJECTION: "disabled", INJECTION_ANNOTATION: "enabled"})
    meshcp_off = annotated("meshcp-off", **{OSM_INJECTION: "enabled", INJECTION_ANNOTATION: "disabled"})
    plain = annotated("plain")
    assert [is_meshed(p, meshed) for p in (osm_off, both, meshcp_off, plain)] == [  # type: ignore[arg-type]
        False,
        True,
        False,
        True,
    ]
    state = MeshState().with_changes([ns("shop", {MESH_LABEL: "meshcp"}), osm_off, both, meshcp_off, plain])  # type: ignore[list-item]
    reported = sorted((p.ref, p.reason) for p in build_policies(state).problems if p.ref.kind == "Pod")
    assert reported == [
        (
            ObjectRef("Pod", "shop", "both"),
            f"{INJECTION_ANNOTATION}='enabled' and OSM's {OSM_INJECTION}='disabled' disagree: "
            f"meshcp's {INJECTION_ANNOTATION} is used",
        ),
        (
            ObjectRef("Pod", "shop", "meshcp-off"),
            f"{INJECTION_ANNOTATION}='disabled' and OSM's {OSM_INJECTION}='enabled' disagree: "
            f"meshcp's {INJECTION_ANNOTATION} is used",
        ),
    ]
    assert sorted(build_policies(state).pod_classes) == [("shop", "both"), ("shop", "plain")]
