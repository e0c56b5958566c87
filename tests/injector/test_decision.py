"""Which pod creations get a sidecar, which are left alone, and which are refused with the reason."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from meshcp.certs import Identity
from meshcp.injector.decision import Candidate, Deny, NamespaceInfo, Skip, pod_creation
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.policy.membership import INJECTION_ANNOTATION, PROXY_UUID_LABEL
from meshcp.sidecar.iptables import OUTBOUND_PORT_EXCLUSIONS
from tests.injector.injection import (
    MONITORED,
    candidate_for,
    decision_for,
    inject,
    to_review,
    with_annotations,
)
from tests.injector.reviews import MESH_NAMESPACE, bare_pod, deployment_pod, review


def test_namespace_comes_from_the_request_when_the_pod_has_none() -> None:
    pod = deployment_pod(namespace_in_object=False)
    candidate = candidate_for(review(pod, namespace=MESH_NAMESPACE))
    assert candidate.identity == Identity(MESH_NAMESPACE, "bookstore")
    assert candidate.creation.display_name == "bookstore/bookstore-v1-5c7f9d8b6-*"


@pytest.mark.parametrize(
    ("pod", "namespace", "reason"),
    [
        (deployment_pod(), NamespaceInfo(MESH_NAMESPACE), "not monitored by mesh meshcp"),
        (deployment_pod(), NamespaceInfo(MESH_NAMESPACE, {MESH_LABEL: "other"}), "not monitored"),
        (deployment_pod(), None, "not found"),
        ({**bare_pod(), "spec": {**bare_pod()["spec"], "hostNetwork": True}}, MONITORED, "host network"),
        (
            with_annotations(deployment_pod(), **{INJECTION_ANNOTATION: "disabled"}),
            MONITORED,
            "disabled by the pod annotation",
        ),
        (
            deployment_pod(),
            NamespaceInfo(MESH_NAMESPACE, {MESH_LABEL: "meshcp"}, {INJECTION_ANNOTATION: "disabled"}),
            "disabled by the namespace bookstore annotation",
        ),
        # The pod annotation cannot pull a pod into a namespace outside the mesh.
        (
            with_annotations(deployment_pod(), **{INJECTION_ANNOTATION: "enabled"}),
            NamespaceInfo("x"),
            "not monitored",
        ),
    ],
)
def test_skipped(pod: dict[str, Any], namespace: NamespaceInfo | None, reason: str) -> None:
    decision = decision_for(pod, namespace)
    assert isinstance(decision, Skip)
    assert reason in decision.reason


def test_pod_annotation_overrides_namespace_annotation() -> None:
    namespace = NamespaceInfo(MESH_NAMESPACE, {MESH_LABEL: "meshcp"}, {INJECTION_ANNOTATION: "disabled"})
    pod = with_annotations(deployment_pod(), **{INJECTION_ANNOTATION: "enabled"})
    assert isinstance(decision_for(pod, namespace), Candidate)


def test_system_namespaces_are_never_injected() -> None:
    namespace = NamespaceInfo("kube-system", {MESH_LABEL: "meshcp"})
    decision = decision_for(deployment_pod(), namespace, namespace="kube-system")
    assert isinstance(decision, Skip) and "system namespace" in decision.reason


def test_injection_is_idempotent() -> None:
    pod = deployment_pod()
    patched, _, _ = inject(pod)
    decision = decision_for(patched)
    assert isinstance(decision, Skip) and "already has a sidecar" in decision.reason
    # A proxy UUID label the pod was created with is not a sidecar: it is injected, and
    # the label replaced by the injector's own UUID.
    labelled = deployment_pod()
    claimed = str(uuid.uuid4())
    labelled["metadata"]["labels"][PROXY_UUID_LABEL] = claimed
    assert not isinstance(decision_for(labelled), Skip)
    relabelled, _, _ = inject(labelled)
    assert relabelled["metadata"]["labels"][PROXY_UUID_LABEL] not in ("", claimed)
    with_envoy = bare_pod()
    with_envoy["spec"]["containers"].append({"name": "envoy", "image": "envoyproxy/envoy:v1.40.0"})
    assert isinstance(decision_for(with_envoy), Skip)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"operation": "UPDATE"}, "operation UPDATE"),
        ({"subResource": "ephemeralcontainers"}, "subresource"),
        ({"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}}, "not a Pod but Deployment"),
        ({"object": None}, "no Pod object"),
        ({"object": {"metadata": {}, "spec": {"containers": []}}}, "not a valid Pod"),
    ],
)
def test_not_a_pod_creation(change: dict[str, Any], reason: str) -> None:
    document = review(deployment_pod())
    document["request"].update(change)
    creation = pod_creation(to_review(document))
    assert isinstance(creation, Skip)
    assert reason in creation.reason


@pytest.mark.parametrize(
    ("annotations", "words"),
    [
        ({INJECTION_ANNOTATION: "yes"}, [INJECTION_ANNOTATION, "'yes'", "'enabled' or 'disabled'"]),
        (
            {OUTBOUND_PORT_EXCLUSIONS: "80,smtp"},
            [OUTBOUND_PORT_EXCLUSIONS, "'80,smtp'", "'smtp' is not a port"],
        ),
    ],
)
def test_impossible_injection_is_refused_with_the_reason(
    annotations: dict[str, str], words: list[str]
) -> None:
    decision = decision_for(with_annotations(deployment_pod(), **annotations))
    assert isinstance(decision, Deny)
    for word in words:
        assert word in decision.message


def test_invalid_service_account_is_refused() -> None:
    pod = deployment_pod()
    pod["spec"]["serviceAccountName"] = "Book_Store"
    decision = decision_for(pod)
    assert isinstance(decision, Deny) and "Book_Store" in decision.message


# --- OSM's names, read as aliases of meshcp's ----------------------------------------------

OSM_LABEL = "openservicemesh.io/monitored-by"
OSM_INJECTION = "openservicemesh.io/sidecar-injection"


def test_osm_monitored_by_label_puts_the_namespace_in_the_mesh() -> None:
    decision = decision_for(deployment_pod(), NamespaceInfo(MESH_NAMESPACE, {OSM_LABEL: "meshcp"}))
    assert isinstance(decision, Candidate)
    assert decision.warnings == ()
    skipped = decision_for(deployment_pod(), NamespaceInfo(MESH_NAMESPACE, {OSM_LABEL: "osm"}))
    assert isinstance(skipped, Skip) and "not monitored by mesh meshcp" in skipped.reason


def test_meshcps_label_wins_over_osms_and_the_namespace_is_named() -> None:
    namespace = NamespaceInfo(MESH_NAMESPACE, {MESH_LABEL: "other", OSM_LABEL: "meshcp"})
    decision = decision_for(deployment_pod(), namespace)
    assert isinstance(decision, Skip) and "not monitored" in decision.reason
    assert decision.warnings == (
        f"namespace {MESH_NAMESPACE}: {MESH_LABEL}='other' and OSM's {OSM_LABEL}='meshcp' disagree: "
        f"meshcp's {MESH_LABEL} is used",
    )


@pytest.mark.parametrize(
    ("pod_annotations", "namespace_annotations", "injected", "warned"),
    [
        ({OSM_INJECTION: "disabled"}, {}, False, ""),
        ({}, {OSM_INJECTION: "disabled"}, False, ""),
        # The pod's OSM annotation overrides the namespace's, as meshcp's does.
        ({OSM_INJECTION: "enabled"}, {OSM_INJECTION: "disabled"}, True, ""),
        # Both on one object: meshcp's wins, the object is named.
        ({OSM_INJECTION: "disabled", INJECTION_ANNOTATION: "enabled"}, {}, True, "pod bookstore/"),
        (
            {},
            {OSM_INJECTION: "enabled", INJECTION_ANNOTATION: "disabled"},
            False,
            f"namespace {MESH_NAMESPACE}",
        ),
    ],
)
def test_osm_sidecar_injection_annotation(
    pod_annotations: dict[str, str], namespace_annotations: dict[str, str], injected: bool, warned: str
) -> None:
    namespace = NamespaceInfo(MESH_NAMESPACE, {MESH_LABEL: "meshcp"}, namespace_annotations)
    decision = decision_for(with_annotations(deployment_pod(), **pod_annotations), namespace)
    assert isinstance(decision, Candidate if injected else Skip), decision
    assert not isinstance(decision, Deny)
    if warned:
        (warning,) = decision.warnings
        assert warning.startswith(warned) and f"meshcp's {INJECTION_ANNOTATION} is used" in warning
    else:
        assert decision.warnings == ()
    if isinstance(decision, Skip):
        assert "openservicemesh.io" in decision.reason or INJECTION_ANNOTATION in decision.reason


def test_a_bad_osm_injection_value_is_refused_naming_osms_annotation() -> None:
    decision = decision_for(with_annotations(deployment_pod(), **{OSM_INJECTION: "yes"}))
    assert isinstance(decision, Deny)
    assert f"pod annotation {OSM_INJECTION}='yes'" in decision.message


def test_osm_exclusion_annotations_are_honoured_and_meshcps_win() -> None:
    pod = with_annotations(
        deployment_pod(),
        **{
            "openservicemesh.io/outbound-port-exclusion-list": "6379",
            "openservicemesh.io/inbound-port-exclusion-list": "9999",
            "openservicemesh.io/outbound-ip-range-exclusion-list": "169.254.169.254/32",
            "openservicemesh.io/outbound-ip-range-inclusion-list": "10.0.0.0/8",
            # meshcp's own name on the same pod wins over OSM's.
            OUTBOUND_PORT_EXCLUSIONS: "5432",
        },
    )
    decision = decision_for(pod)
    assert isinstance(decision, Candidate)
    redirection = decision.redirection
    assert redirection.outbound_port_exclusions == (5432,)
    assert redirection.inbound_port_exclusions == (9999,)
    assert [str(n) for n in redirection.outbound_ip_exclusions] == ["169.254.169.254/32"]
    assert [str(n) for n in redirection.outbound_ip_inclusions] == ["10.0.0.0/8"]
    (warning,) = decision.warnings
    assert (
        warning.startswith("pod bookstore/") and "openservicemesh.io/outbound-port-exclusion-list" in warning
    )


def test_a_bad_osm_exclusion_is_refused_naming_osms_annotation() -> None:
    pod = with_annotations(deployment_pod(), **{"openservicemesh.io/outbound-port-exclusion-list": "http"})
    decision = decision_for(pod)
    assert isinstance(decision, Deny)
    assert "openservicemesh.io/outbound-port-exclusion-list: 'http' is not a port" in decision.message
