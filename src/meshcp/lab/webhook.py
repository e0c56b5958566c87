"""The API server's and the injector's part: each pod is sent through the webhook's own
decision and patch, as an AdmissionReview for its creation would be.

Using the injector's code rather than a copy of its rules means the lab shows what the
webhook would do to the same manifests in a cluster, refusals included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jsonpatch

from meshcp.identity import ProxyIdentity
from meshcp.injector.decision import Candidate, Deny, NamespaceInfo, Skip, decide, pod_creation
from meshcp.injector.pod_patch import proxyless_patch, sidecar_patch
from meshcp.injector.review import Review
from meshcp.injector.template import SidecarTemplate
from meshcp.lab import layout
from meshcp.lab.pods import PodProblem, Proxyless, Sidecar
from meshcp.model.core import Namespace
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.state import MeshObject
from meshcp.sidecar import ports


def namespaces(objects: Sequence[MeshObject]) -> dict[str, NamespaceInfo]:
    """What the webhook would read of each declared namespace (`default` always exists)."""
    out = {"default": NamespaceInfo("default")}
    for obj in objects:
        if isinstance(obj, Namespace):
            meta = obj.meta
            out[meta.name] = NamespaceInfo(meta.name, dict(meta.labels), dict(meta.annotations))
    return out


def admit(
    pod: dict[str, Any],
    namespace: NamespaceInfo,
    mesh: MeshConfig,
    *,
    proxy_uuid: str,
    bootstrap_dir: str,
) -> tuple[dict[str, Any], Sidecar | Proxyless | None]:
    """`pod` as the webhook leaves it (injected or not) and its sidecar, or for a proxyless
    gRPC pod (no sidecar, no iptables) its files, whose directory is `bootstrap_dir` as a
    sidecar's bootstrap volume would be; raises `PodProblem` where the webhook would refuse
    it or cannot read it as a Pod."""
    creation = pod_creation(admission_review(pod))
    if isinstance(creation, Skip):
        raise PodProblem(creation.reason)
    decision = decide(creation, namespace, mesh)
    if isinstance(decision, Deny):
        raise PodProblem(decision.message)
    if not isinstance(decision, Candidate):
        return pod, None
    proxy = ProxyIdentity(proxy_uuid, decision.identity, mesh.trust_domain)
    # gRPC checks the controller's certificate for the address it dials: the gateway's
    # address is on it (`cluster.controller_container`), as the name is for sidecars.
    template = SidecarTemplate(
        xds_host=str(layout.GATEWAY),
        xds_port=ports.XDS_PORT,
        xds_server_name=layout.CONTROLLER_NAME,
        bootstrap_dir=bootstrap_dir,
    )
    if decision.proxyless:
        patch = proxyless_patch(decision, proxy, directory=bootstrap_dir)
        return jsonpatch.apply_patch(pod, patch.operations), Proxyless(
            decision, proxy, template, bootstrap_dir
        )
    patch = sidecar_patch(decision, proxy, template, mesh)
    return jsonpatch.apply_patch(pod, patch.operations), Sidecar(decision, proxy, template)


def admission_review(pod: Mapping[str, Any]) -> Review:
    """The AdmissionReview the API server would send for creating `pod`."""
    request = {
        "uid": "meshcp-lab",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": pod["metadata"]["namespace"],
        "object": pod,
    }
    return Review("admission.k8s.io/v1", "meshcp-lab", request)
