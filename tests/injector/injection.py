"""Running the pure injection on test pods: the request read, the decision taken, the patch
applied as the API server does (PyPI jsonpatch) and the result validated against the
Kubernetes schema."""

from __future__ import annotations

import json
import uuid
from typing import Any

from meshcp.certs import ProxyIdentity
from meshcp.injector.decision import Candidate, Deny, NamespaceInfo, PodCreation, Skip, decide, pod_creation
from meshcp.injector.pod_patch import sidecar_patch
from meshcp.injector.review import Review, parse_review
from meshcp.injector.template import SidecarTemplate
from meshcp.model.meshconfig import MESH_LABEL, MeshConfig
from tests.injector.reviews import MESH_NAMESPACE, apply_and_validate, review

MESH = MeshConfig(sidecar_image="envoyproxy/envoy:v1.40.0", sidecar_log_level="warning")
MONITORED = NamespaceInfo(MESH_NAMESPACE, {MESH_LABEL: "meshcp"})
TEMPLATE = SidecarTemplate(
    xds_host="meshcp-controller.meshcp-system.svc",
    xds_port=15128,
    resources={"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
)


def to_review(document: dict[str, Any]) -> Review:
    return parse_review(json.dumps(document).encode())


def candidate_for(document: dict[str, Any], namespace: NamespaceInfo = MONITORED) -> Candidate:
    creation = pod_creation(to_review(document))
    assert isinstance(creation, PodCreation), creation
    decision = decide(creation, namespace, MESH)
    assert isinstance(decision, Candidate), decision
    return decision


def decision_for(
    pod: dict[str, Any], info: NamespaceInfo | None = MONITORED, **kwargs: Any
) -> Skip | Deny | Candidate:
    creation = pod_creation(to_review(review(pod, **kwargs)))
    if isinstance(creation, Skip):
        return creation
    return decide(creation, info, MESH)


def new_proxy(candidate: Candidate) -> ProxyIdentity:
    return ProxyIdentity(str(uuid.uuid4()), candidate.identity)


def inject(pod: dict[str, Any]) -> tuple[dict[str, Any], ProxyIdentity, tuple[str, ...]]:
    """The pod after injection (validated), its proxy, and the warnings."""
    candidate = candidate_for(review(pod))
    proxy = new_proxy(candidate)
    patch = sidecar_patch(candidate, proxy, TEMPLATE, MESH)
    return apply_and_validate(pod, patch.operations), proxy, patch.warnings


def with_annotations(pod: dict[str, Any], **annotations: str) -> dict[str, Any]:
    pod["metadata"].setdefault("annotations", {}).update(annotations)
    return pod
