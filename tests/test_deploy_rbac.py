"""The RBAC of the install manifests in deploy/: the controller is bound to the ClusterRole
and the Role generated from what its Kubernetes clients call (meshcp.sources.kubernetes_rbac),
the Role in the namespace and for the CA Secret its Deployment names, and the injector is
granted exactly the API calls meshcp.injector.kube makes, plus reading the CA Secret."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from meshcp.injector import kube
from meshcp.kpi import traffic_metrics
from meshcp.model.osm_meshconfig import OSM_CONFIG_GROUP
from meshcp.sources import kubernetes_rbac
from meshcp.sources.kubernetes_rbac import CLUSTER_ROLE, ROLE
from tests.support.deploy import NAMESPACE, Manifest, _all, _args, _find

# --- controller RBAC ----------------------------------------------------------------------------


def test_controller_is_bound_to_the_generated_cluster_role() -> None:
    binding = _find("ClusterRoleBinding", "meshcp-controller", file="controller.yaml")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": CLUSTER_ROLE,
    }
    _find("ClusterRole", CLUSTER_ROLE, file="rbac.yaml")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "meshcp-controller", "namespace": NAMESPACE}
    ]


def test_controller_is_bound_to_the_generated_role_in_its_namespace() -> None:
    binding = _find("RoleBinding", "meshcp-controller", file="controller.yaml")
    assert binding["metadata"]["namespace"] == NAMESPACE == kubernetes_rbac.NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ROLE}
    role = _find("Role", ROLE, file="rbac.yaml")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "meshcp-controller", "namespace": NAMESPACE}
    ]


def test_the_role_names_the_ca_secret_and_cert_manager_namespace_the_controller_uses() -> None:
    """The Role is generated for deploy/'s CA Secret and CertificateRequest namespace:
    another `--ca-secret` needs the generator's constants changed too."""
    args = _args(_find("Deployment", "meshcp-controller"))
    assert args.ca_secret == f"{kubernetes_rbac.NAMESPACE}/{kubernetes_rbac.CA_SECRET}"
    assert args.cert_manager_namespace == kubernetes_rbac.NAMESPACE
    role = _find("Role", ROLE, file="rbac.yaml")
    named = [rule for rule in role["rules"] if "resourceNames" in rule]
    assert named == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["meshcp-ca"],
            "verbs": ["get", "update"],
        },
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [kubernetes_rbac.LEASE],
            "verbs": ["get", "update"],
        },
    ]
    cluster_wide = _find("ClusterRole", CLUSTER_ROLE, file="rbac.yaml")
    secret_verbs = {v for r in cluster_wide["rules"] if "secrets" in r["resources"] for v in r["verbs"]}
    assert secret_verbs == {"list", "delete", "patch"}, (
        "only the bootstrap-Secret collector's and the proxyless renewer's, cluster-wide (no get, update)"
    )


# --- injector RBAC ----------------------------------------------------------------------------

_WEBHOOKS = ("admissionregistration.k8s.io", "mutatingwebhookconfigurations")
#: kubernetes_asyncio methods meshcp.injector.kube calls → (API group, resource, verb).
_KUBE_CALLS = {
    "read_namespace": ("", "namespaces", "get"),
    "get_cluster_custom_object": (kube.MESH_CONFIG_GROUP, kube.MESH_CONFIG_PLURAL, "get"),
    "list_cluster_custom_object": (OSM_CONFIG_GROUP, kube.MESH_CONFIG_PLURAL, "list"),
    "create_namespaced_secret": ("", "secrets", "create"),
    "read_mutating_webhook_configuration": (_WEBHOOKS[0], _WEBHOOKS[1], "get"),
    "patch_mutating_webhook_configuration": (_WEBHOOKS[0], _WEBHOOKS[1], "patch"),
}
#: The CA Secret (`--ca-secret`): the injector opens the controller's CA without creating
#: it, through meshcp.certs.kubernetes_store.SecretStore's read path (read_namespaced_secret),
#: at start and whenever it follows a root rotation.
_CA_SECRET_VERBS = {"get"}

Grant = tuple[str, str, str]


def _api_calls(module_file: str) -> set[str]:
    """The methods `kube.py` calls on its CoreV1Api, CustomObjectsApi and
    AdmissionregistrationV1Api (`self._core.X`, `self._custom.X`, `self._admission.X`)."""
    tree = ast.parse(Path(module_file).read_text())
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr in ("_core", "_custom", "_admission")
    }


def _grants(rules: list[Manifest]) -> Iterator[tuple[Grant, tuple[str, ...]]]:
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    yield (group, resource, verb), tuple(rule.get("resourceNames", ()))


def _bound(kind: str, binding_kind: str, account: str) -> list[Manifest]:
    """The rules of every `kind` bound to the ServiceAccount `account` by a `binding_kind`."""
    rules: list[Manifest] = []
    for binding in _all(binding_kind):
        subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
        if subject in binding["subjects"] and binding["roleRef"]["kind"] == kind:
            role = _find(kind, binding["roleRef"]["name"])
            assert role["metadata"].get("namespace") == binding["metadata"].get("namespace")
            rules += role["rules"]
    return rules


def test_injector_is_granted_exactly_what_it_calls() -> None:
    called = _api_calls(kube.__file__)
    assert called, "found no API calls in meshcp.injector.kube: has the client moved?"
    assert called <= _KUBE_CALLS.keys(), f"map these calls to RBAC verbs: {called - _KUBE_CALLS.keys()}"
    needed = {_KUBE_CALLS[name] for name in called}
    cluster_wide = dict(_grants(_bound("ClusterRole", "ClusterRoleBinding", "meshcp-injector")))
    # Cluster-wide (pods come in every namespace), for any object name but the webhook
    # configuration (deploy/'s, by name: `--webhook-config`), and nothing more.
    assert cluster_wide.keys() == needed
    webhook = _find("MutatingWebhookConfiguration", kubernetes_rbac.WEBHOOK_CONFIG, file="injector.yaml")
    for (_, resource, _), names in cluster_wide.items():
        if resource == _WEBHOOKS[1]:
            assert names == (webhook["metadata"]["name"],)
        else:
            assert names == ()


def test_injector_may_read_the_ca_secret_only() -> None:
    args = _args(_find("Deployment", "meshcp-injector"))
    ca_namespace, ca_name = args.ca_secret.split("/")
    namespaced = list(_grants(_bound("Role", "RoleBinding", "meshcp-injector")))
    (role,) = [r for r in _all("Role") if r["metadata"]["name"] == "meshcp-injector-ca"]
    assert role["metadata"]["namespace"] == ca_namespace
    assert {grant for grant, _ in namespaced} == {("", "secrets", verb) for verb in _CA_SECRET_VERBS}
    assert all(names == (ca_name,) for _, names in namespaced)


# --- TrafficMetrics API readers -------------------------------------------------------------


def test_traffic_metrics_readers_may_read_the_api_and_nothing_else() -> None:
    """The spec's "view metrics for all resources and edges", read-only, aggregated into
    the built-in view role (and so edit and admin)."""
    role = _find("ClusterRole", "meshcp-traffic-metrics-reader", file="metrics-apiservice.yaml")
    grants = {grant for grant, _ in _grants(role["rules"])}
    assert {group for group, _, _ in grants} == {traffic_metrics.GROUP}
    assert {verb for _, _, verb in grants} == {"get", "list"}
    # "*" covers every resource and sub-resource the API lists (edges included).
    assert {resource for _, resource, _ in grants} == {"*"}
    assert {r["name"] for r in traffic_metrics.api_resource_list()["resources"]} >= {"pods", "pods/edges"}
    labels = role["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
