"""AdmissionReview requests as the API server sends them, and how to check a mutation.

Pods are shaped like the ones a ReplicaSet creates: `generateName` and no name, often no
namespace in the object (it is in the request), the service-account token volume the
ServiceAccount admission plugin added before webhooks run, defaulted fields, probes of every
kind and named ports.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

import jsonpatch
import kubernetes_validate  # type: ignore[import-untyped]

MESH_NAMESPACE = "bookstore"
PLAIN_NAMESPACE = "default-plain"
#: The schema the patched pods are validated against (kubernetes-validate's bundled one).
KUBERNETES_VERSION = "1.33"


def _probe(action: dict[str, Any], **timing: int) -> dict[str, Any]:
    probe = {"timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}
    probe.update(timing)
    probe.update(action)
    return probe


def deployment_pod(*, namespace_in_object: bool = False) -> dict[str, Any]:
    """A bookstore replica: two containers, an init container, every probe kind."""
    metadata: dict[str, Any] = {
        "generateName": "bookstore-v1-5c7f9d8b6-",
        "creationTimestamp": None,
        "labels": {"app": "bookstore", "version": "v1", "pod-template-hash": "5c7f9d8b6"},
        "annotations": {
            "kubectl.kubernetes.io/restartedAt": "2024-05-01T10:00:00Z",
            "prometheus.io/scrape": "true",
        },
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "bookstore-v1-5c7f9d8b6",
                "uid": "0b3c7f5e-7e0f-4c1e-9f36-2b9f4c0e8a11",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if namespace_in_object:
        metadata["namespace"] = MESH_NAMESPACE
    token_volume = {
        "name": "kube-api-access-x7k2p",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            ],
            "defaultMode": 420,
        },
    }
    token_mount = {
        "name": "kube-api-access-x7k2p",
        "readOnly": True,
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
    }
    app = {
        "name": "bookstore",
        "image": "openservicemesh/bookstore:v1.2.0",
        "command": ["/bookstore"],
        "args": ["--port", "14001"],
        "ports": [
            {"name": "http", "containerPort": 14001, "protocol": "TCP"},
            {"name": "admin", "containerPort": 14002, "protocol": "TCP"},
        ],
        "env": [{"name": "IDENTITY", "value": "bookstore-v1"}],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        "volumeMounts": [token_mount],
        "livenessProbe": _probe(
            {"httpGet": {"path": "/liveness", "port": 14001, "scheme": "HTTP"}}, initialDelaySeconds=3
        ),
        "readinessProbe": _probe(
            {
                "httpGet": {
                    "path": "/readiness?full=1",
                    "port": "admin",
                    "scheme": "HTTP",
                    "httpHeaders": [{"name": "X-Probe", "value": "kubelet"}],
                }
            }
        ),
        "startupProbe": _probe({"tcpSocket": {"port": "http"}}, failureThreshold=30),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    shipper = {
        "name": "log-shipper",
        "image": "fluent/fluent-bit:3.0",
        "resources": {},
        "volumeMounts": [token_mount],
        "livenessProbe": _probe({"exec": {"command": ["/bin/sh", "-c", "test -f /tmp/alive"]}}),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    migrate = {
        "name": "migrate",
        "image": "openservicemesh/bookstore:v1.2.0",
        "command": ["/bookstore", "migrate"],
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": {
            "volumes": [token_volume],
            "initContainers": [migrate],
            "containers": [app, shipper],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "bookstore",
            "serviceAccount": "bookstore",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {},
    }


def bare_pod() -> dict[str, Any]:
    """`kubectl run`-like: a name, one container, no labels, annotations, volumes or init containers."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "curl", "namespace": MESH_NAMESPACE},
        "spec": {"containers": [{"name": "curl", "image": "curlimages/curl:8.7.1"}]},
    }


def review(
    pod: dict[str, Any],
    *,
    namespace: str = MESH_NAMESPACE,
    api_version: str = "admission.k8s.io/v1",
    operation: str = "CREATE",
    dry_run: bool = False,
    uid: str | None = None,
) -> dict[str, Any]:
    """An AdmissionReview for `pod` as the ReplicaSet controller's request produces it."""
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": api_version,
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "6f1e6d1a-3c2b-4f7e-8a51-1d2c3b4a5f60",
                "groups": [
                    "system:serviceaccounts",
                    "system:serviceaccounts:kube-system",
                    "system:authenticated",
                ],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": dry_run,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def patch_of(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The decoded JSONPatch of an AdmissionReview response (empty if none)."""
    encoded = response["response"].get("patch")
    if encoded is None:
        return []
    assert response["response"]["patchType"] == "JSONPatch"
    operations: list[dict[str, Any]] = json.loads(base64.b64decode(encoded))
    return operations


def apply_and_validate(pod: dict[str, Any], operations: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply `operations` as the API server would, then validate the result against the
    Kubernetes Pod schema (strict: unknown fields are errors)."""
    patched: dict[str, Any] = jsonpatch.apply_patch(copy.deepcopy(pod), operations)
    kubernetes_validate.validate(patched, KUBERNETES_VERSION, strict=True)
    return patched


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [
        c for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []) if c["name"] == name
    ]
    assert len(matches) == 1, f"expected one container {name}, got {len(matches)}"
    found: dict[str, Any] = matches[0]
    return found
