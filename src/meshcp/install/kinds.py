"""Where the API serves each kind the chart renders: its REST path.

A fixed table rather than API discovery: install applies only the chart's objects, whose
kinds are known (tests/test_install.py checks that every kind of every render is here),
and a kind the cluster does not serve (cert-manager's, before cert-manager is installed)
then fails with a 404 that names it, instead of a discovery error about something else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind as the API serves it."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def group(self) -> str:
        group, _, _ = self.api_version.rpartition("/")
        return group

    def collection(self, namespace: str | None) -> str:
        """The path of the kind's objects (in `namespace` when namespaced)."""
        prefix = f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"
        if self.namespaced:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"


KINDS: tuple[Kind, ...] = (
    Kind("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False),
    Kind("v1", "Namespace", "namespaces", False),
    Kind("v1", "ServiceAccount", "serviceaccounts", True),
    Kind("v1", "Service", "services", True),
    Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", True),
    Kind("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False),
    Kind("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", False),
    Kind("rbac.authorization.k8s.io/v1", "Role", "roles", True),
    Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True),
    Kind("apps/v1", "Deployment", "deployments", True),
    Kind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", True),
    Kind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", True),
    Kind("apiregistration.k8s.io/v1", "APIService", "apiservices", False),
    Kind(
        "admissionregistration.k8s.io/v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        False,
    ),
    Kind("config.meshcp.dev/v1alpha1", "MeshConfig", "meshconfigs", False),
    Kind("cert-manager.io/v1", "Issuer", "issuers", True),
    Kind("cert-manager.io/v1", "Certificate", "certificates", True),
)

_BY_KIND = {(kind.api_version, kind.kind): kind for kind in KINDS}


class UnknownKind(Exception):
    """An object of a kind the table does not name (a chart change not carried here)."""


def kind_of(document: dict[str, Any]) -> Kind:
    found = _BY_KIND.get((document["apiVersion"], document["kind"]))
    if found is None:
        raise UnknownKind(f"{document['apiVersion']} {document['kind']} is not a kind meshcp install knows")
    return found


def object_path(document: dict[str, Any]) -> str:
    """The object's own path."""
    metadata = document["metadata"]
    return f"{kind_of(document).collection(metadata.get('namespace'))}/{metadata['name']}"


def describe(document: dict[str, Any]) -> str:
    """`deployment.apps/meshcp-controller`, as kubectl names an object."""
    kind = kind_of(document)
    return f"{kind.kind.lower()}{'.' + kind.group if kind.group else ''}/{document['metadata']['name']}"
