"""A proxyless gRPC pod and its Secret as the injector makes them (its own decision and
`proxyless_secret`), with certificates of a validity the test chooses, for the tests of the
controller's renewal against the real API server."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from meshcp.certs import InternalCA, ProxyIdentity
from meshcp.certs.issuance import workload_request, xds_client_request
from meshcp.injector.bootstrap_secret import proxyless_secret
from meshcp.injector.decision import Candidate, NamespaceInfo, PodCreation, decide, pod_creation
from meshcp.injector.review import parse_review
from meshcp.injector.template import SidecarTemplate
from meshcp.model.meshconfig import MESH_LABEL, MeshConfig
from meshcp.policy.membership import PROXY_UUID_LABEL
from tests.injector.reviews import review

TEMPLATE = SidecarTemplate(xds_host="meshcp-controller.meshcp-system.svc", xds_port=15128)


def _candidate(pod: dict[str, Any], namespace: str) -> Candidate:
    creation = pod_creation(parse_review(json.dumps(review(pod, namespace=namespace)).encode()))
    assert isinstance(creation, PodCreation), creation
    decision = decide(creation, NamespaceInfo(namespace, {MESH_LABEL: "meshcp"}), MeshConfig())
    assert isinstance(decision, Candidate) and decision.proxyless, decision
    return decision


async def proxyless_pod(
    ca: InternalCA, namespace: str, name: str, service_account: str, *, validity: timedelta
) -> tuple[dict[str, Any], dict[str, Any], ProxyIdentity]:
    """The pod (labelled with its proxy UUID, as the injector's patch does), its Secret, and
    its proxy; the workload certificate valid for `validity`."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": {"meshcp.dev/proxyless": "grpc"}},
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "greeter:1"}],
        },
    }
    candidate = _candidate(pod, namespace)
    proxy = ProxyIdentity(str(uuid.uuid4()), candidate.identity)
    pod["metadata"]["labels"] = {PROXY_UUID_LABEL: proxy.proxy_uuid}
    secret = proxyless_secret(
        candidate,
        proxy,
        TEMPLATE,
        xds_certificate=await ca.issue(xds_client_request(proxy)),
        workload_certificate=await ca.issue(workload_request(candidate.identity, validity=validity)),
        trust_bundle=await ca.trust_bundle(),
    )
    return pod, secret, proxy
