"""The RBAC rules the controller's and the injector's Kubernetes clients need, as data, and the
roles made from them.

The Helm chart's `deploy/helm/meshcp/templates/rbac.yaml` is generated from here (`python -m
meshcp.sources.kubernetes_rbac > deploy/helm/meshcp/templates/rbac.yaml`, the namespace left
to the release), and `deploy/rbac.yaml` is rendered from the chart (`scripts/render-deploy`);
tests check that both match and that the rules cover exactly
what the source lists and watches (with `list` and `watch`) plus exactly the calls of the
controller's other Kubernetes clients, and nothing more. `tests/kube/test_least_privilege.py`
removes each grant in turn on a real API server and shows the call that needed it refused.

Two roles, because not everything can be scoped:
- a ClusterRole (`CLUSTER_ROLE`) for what lives in every namespace: the watched kinds, the
  Warning events posted next to the objects they are about, and the bootstrap Secrets the
  injector creates in each meshed namespace (the collector must list and delete them
  wherever pods are, the proxyless renewer patch them; which namespaces are meshed
  changes at run time, so no fixed set of namespaced Roles could follow it);
- a Role in the controller's own namespace (`ROLE`, in `NAMESPACE`) for what lives there:
  its CA Secret and the replicas' Lease (`get` and `update` on that one name; `create`
  cannot be limited to a name, since a create request names no object the authorizer could
  check, so it is limited to the namespace) and cert-manager's CertificateRequests
  (`--cert-manager-namespace`).

The injector's two roles (`INJECTOR_RULES`) come from the calls of `meshcp.injector.kube`
(cluster-wide: pods come in every namespace; its webhook configuration by name) and the
read of the CA Secret (namespaced, by name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

#: The name of the generated ClusterRole.
CLUSTER_ROLE = "meshcp-kubernetes-source"
#: The name of the generated Role, in `NAMESPACE`.
ROLE = "meshcp-controller"
#: Where deploy/ runs the controller: its CA Secret and CertificateRequests live here.
NAMESPACE = "meshcp-system"
#: The CA Secret's name (deploy/'s `--ca-secret meshcp-system/meshcp-ca`).
CA_SECRET = "meshcp-ca"
#: The Lease controller replicas elect their leader with (`--leader-lease meshcp-system/meshcp-controller`).
LEASE = "meshcp-controller"
#: The injector's generated ClusterRole, and its Role in `NAMESPACE`.
INJECTOR_CLUSTER_ROLE = "meshcp-injector"
INJECTOR_ROLE = "meshcp-injector-ca"
#: deploy/'s MutatingWebhookConfiguration (`meshcp inject --webhook-config`).
WEBHOOK_CONFIG = "meshcp-injector"


@dataclass(frozen=True, slots=True)
class Rule:
    """One `rules:` entry. `namespaced`: granted by the Role in `NAMESPACE` rather than the
    ClusterRole; `names`: the `resourceNames` it is limited to (none: any object)."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    namespaced: bool = False
    names: tuple[str, ...] = ()


_READ = ("list", "watch")

#: What the Kubernetes source lists and watches.
SOURCE_RULES: tuple[Rule, ...] = (
    Rule(("",), ("namespaces", "pods", "serviceaccounts", "services"), _READ),
    Rule(("discovery.k8s.io",), ("endpointslices",), _READ),
    Rule(("access.smi-spec.io",), ("traffictargets",), _READ),
    Rule(("specs.smi-spec.io",), ("httproutegroups", "tcproutes", "udproutes"), _READ),
    Rule(("split.smi-spec.io",), ("trafficsplits",), _READ),
    Rule(
        ("policy.openservicemesh.io",),
        ("retries", "upstreamtrafficsettings", "egresses", "ingressbackends"),
        _READ,
    ),
    Rule(("config.meshcp.dev",), ("meshconfigs",), _READ),
    Rule(("config.openservicemesh.io",), ("meshconfigs",), _READ),
)

#: What the controller's other Kubernetes clients call, by module (tests check each
#: module's calls against these): Warning events (sources/kubernetes_events.py), the CA in
#: a Secret (certs/kubernetes_store.py), cert-manager CertificateRequests
#: (certs/cert_manager.py), the leader election's Lease (sources/kubernetes_lease.py: `get`
#: and `update` on that one name, `create` in the namespace), collecting the bootstrap
#: Secrets of pods that are gone (sources/bootstrap_secrets.py: it lists pods too, which
#: the source's rules grant already), and renewing the certificates in proxyless gRPC pods'
#: Secrets (sources/proxyless_renewal.py: `patch` on Secrets in every namespace, since
#: their names are per pod and a label selector cannot limit a write; `patch` rather than
#: `update`, which is granted for the CA Secret alone; the `list` the collector holds
#: already shows every Secret's data, so `patch` reveals nothing more).
CLIENT_RULES: dict[str, tuple[Rule, ...]] = {
    "meshcp.sources.kubernetes_events": (Rule(("",), ("events",), ("create",)),),
    "meshcp.certs.kubernetes_store": (
        Rule(("",), ("secrets",), ("get", "update"), namespaced=True, names=(CA_SECRET,)),
        Rule(("",), ("secrets",), ("create",), namespaced=True),
    ),
    "meshcp.certs.cert_manager": (
        Rule(("cert-manager.io",), ("certificaterequests",), ("create", "delete", "get"), namespaced=True),
    ),
    "meshcp.sources.kubernetes_lease": (
        Rule(("coordination.k8s.io",), ("leases",), ("get", "update"), namespaced=True, names=(LEASE,)),
        Rule(("coordination.k8s.io",), ("leases",), ("create",), namespaced=True),
    ),
    "meshcp.sources.bootstrap_secrets": (
        Rule(("",), ("secrets",), ("delete", "list")),
        Rule(("",), ("pods",), ("list",)),
    ),
    "meshcp.sources.proxyless_renewal": (
        Rule(("",), ("secrets",), ("list", "patch")),
        Rule(("",), ("pods",), ("list",)),
    ),
}

RULES: tuple[Rule, ...] = SOURCE_RULES + tuple(rule for rules in CLIENT_RULES.values() for rule in rules)

#: What the injector calls, by module: meshcp.injector.kube (the pod's namespace, the
#: MeshConfig, the bootstrap Secret in the pod's namespace, and the caBundle of its own
#: webhook configuration, which `--webhook-config` keeps), and opening the controller's CA
#: from its Secret without ever creating or changing it (certs.kubernetes_store's read).
INJECTOR_RULES: dict[str, tuple[Rule, ...]] = {
    "meshcp.injector.kube": (
        Rule(("",), ("namespaces",), ("get",)),
        Rule(("config.meshcp.dev",), ("meshconfigs",), ("get",)),
        Rule(("config.openservicemesh.io",), ("meshconfigs",), ("list",)),
        Rule(("",), ("secrets",), ("create",)),
        Rule(
            ("admissionregistration.k8s.io",),
            ("mutatingwebhookconfigurations",),
            ("get", "patch"),
            names=(WEBHOOK_CONFIG,),
        ),
    ),
    "meshcp.certs.kubernetes_store": (
        Rule(("",), ("secrets",), ("get",), namespaced=True, names=(CA_SECRET,)),
    ),
}


def _grants(rule: Rule) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {(g, r, v, rule.names) for g in rule.api_groups for r in rule.resources for v in rule.verbs}


def _rules(namespaced: bool, of: tuple[Rule, ...] = RULES) -> list[dict[str, Any]]:
    """The `rules:` of one role: the rules `of` that scope, leaving out a rule that grants
    nothing new."""
    rules: list[dict[str, Any]] = []
    granted: set[tuple[str, str, str, tuple[str, ...]]] = set()
    for rule in of:
        if rule.namespaced != namespaced or _grants(rule) <= granted:
            continue
        granted |= _grants(rule)
        entry: dict[str, Any] = {"apiGroups": list(rule.api_groups), "resources": list(rule.resources)}
        if rule.names:
            entry["resourceNames"] = list(rule.names)
        entry["verbs"] = list(rule.verbs)
        rules.append(entry)
    return rules


_LABELS = {"app.kubernetes.io/name": "meshcp", "app.kubernetes.io/component": "controller"}


def cluster_role(name: str = CLUSTER_ROLE) -> dict[str, Any]:
    """The ClusterRole granting the cluster-wide `RULES`."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": dict(_LABELS)},
        "rules": _rules(namespaced=False),
    }


def role(name: str = ROLE, namespace: str = NAMESPACE) -> dict[str, Any]:
    """The Role granting the namespaced `RULES` in the controller's namespace."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(_LABELS)},
        "rules": _rules(namespaced=True),
    }


#: Where the chart's template puts the release's namespace (a Helm expression, which YAML
#: would quote if it were dumped as a value).
_RELEASE_NAMESPACE = "{{ .Release.Namespace }}"
_PLACEHOLDER = "RELEASE-NAMESPACE"


def injector_roles(namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The injector's ClusterRole and its Role in `namespace`, from `INJECTOR_RULES`."""
    rules = tuple(rule for module_rules in INJECTOR_RULES.values() for rule in module_rules)
    labels = {**_LABELS, "app.kubernetes.io/component": "injector"}
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": INJECTOR_CLUSTER_ROLE, "labels": dict(labels)},
            "rules": _rules(namespaced=False, of=rules),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": INJECTOR_ROLE, "namespace": namespace, "labels": dict(labels)},
            "rules": _rules(namespaced=True, of=rules),
        },
    ]


def render() -> str:
    """The text of the chart's `templates/rbac.yaml`: the roles with the namespace left to
    the release (`helm install -n`, `scripts/render-deploy`)."""
    header = (
        "# Generated by `python -m meshcp.sources.kubernetes_rbac >\n"
        "# deploy/helm/meshcp/templates/rbac.yaml`; do not edit. What `meshcp serve --source\n"
        "# kubernetes` reads and writes. Cluster-wide: the kinds it watches, Warning events,\n"
        "# collecting the bootstrap Secrets of pods that are gone (the injector makes them in every\n"
        "# meshed namespace). Only in the release's namespace: its CA Secret, the replicas'\n"
        "# leader-election Lease and cert-manager CertificateRequests. controller.yaml binds both.\n"
        "# Then what `meshcp inject` calls: cluster-wide, the pod's namespace, the MeshConfigs,\n"
        "# bootstrap Secrets and its own webhook configuration's caBundle (by name); in the\n"
        "# release's namespace, reading the CA Secret (and, with cert-manager signing, its\n"
        "# CertificateRequests). injector.yaml binds both.\n"
    )
    documents = [cluster_role(), role(namespace=_PLACEHOLDER), *injector_roles(namespace=_PLACEHOLDER)]
    body = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False)
    # With cert-manager signing, the injector asks it for each sidecar's xDS client
    # certificate as the controller does: the injector's Role (the last document) gains the
    # controller's cert-manager grant, in the chart only when that provider is chosen.
    body += _CERT_MANAGER_INJECTOR
    return header + body.replace(f"namespace: {_PLACEHOLDER}\n", f"namespace: {_RELEASE_NAMESPACE}\n")


_CERT_MANAGER_INJECTOR = (
    '{{- if eq .Values.certificateProvider.kind "cert-manager" }}\n'
    "- apiGroups:\n  - cert-manager.io\n  resources:\n  - certificaterequests\n"
    "  verbs:\n  - create\n  - delete\n  - get\n"
    "{{- end }}\n"
)


if __name__ == "__main__":
    print(render(), end="")
