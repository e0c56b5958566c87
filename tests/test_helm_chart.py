"""The Helm chart deploy/helm/meshcp, rendered and linted by the real `helm` (scripts/build-helm):
deploy/ is its default render; every certificate provider renders arguments `meshcp serve`
and `meshcp inject` accept, with the same CA options for both; a missing provider setting
is refused by name; values reach the objects they name; its RBAC is the generated one for
whichever namespace it is installed in. tests/kube/test_helm_install.py installs it."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
import yaml

from meshcp.cli.options import ca_settings
from meshcp.cli.parser import build_parser
from meshcp.sources import kubernetes_rbac
from meshcp.sources.kubernetes import RESOURCES
from tests.support.helm import CHART, NAMESPACE, RELEASE, ROOT, helm, helm_binary, template

#: The real helm (scripts/build-helm): run after the builds by scripts/test.
pytestmark = pytest.mark.built

Manifest = dict[str, Any]

#: `--set` values selecting each certificate provider with what it requires.
PROVIDERS = {
    "internal": (),
    "cfssl": ("certificateProvider.kind=cfssl", "certificateProvider.cfssl.url=http://cfssl.pki.svc:8888"),
    "vault": (
        "certificateProvider.kind=vault",
        "certificateProvider.vault.address=https://vault.vault.svc:8200",
    ),
    "cert-manager": (
        "certificateProvider.kind=cert-manager",
        "certificateProvider.certManager.issuer=mesh-ca",
    ),
}


def _find(documents: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _container(documents: list[Manifest], deployment: str) -> Manifest:
    containers: list[Manifest] = _find(documents, "Deployment", deployment)["spec"]["template"]["spec"][
        "containers"
    ]
    return containers[0]


def test_deploy_is_the_charts_default_render() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "render-deploy"), "--check"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "MESHCP_HELM": helm_binary()},
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_chart_lints(provider: str) -> None:
    options = [option for value in PROVIDERS[provider] for option in ("--set", value)]
    result = helm("lint", str(CHART), "--strict", "--namespace", NAMESPACE, *options)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("provider", PROVIDERS)
def test_both_components_get_the_same_ca_options_meshcp_accepts(provider: str) -> None:
    documents = template(*PROVIDERS[provider])
    parser = build_parser()
    settings = []
    for deployment in ("meshcp-controller", "meshcp-injector"):
        container = _container(documents, deployment)
        env = {entry["name"]: entry for entry in container.get("env", [])}
        args = parser.parse_args(container["args"])
        if provider == "vault":
            # The token comes from a Secret, never from the command line.
            assert env["VAULT_TOKEN"]["valueFrom"]["secretKeyRef"] == {
                "name": "meshcp-vault-token",
                "key": "token",
            }
            args.vault_token = "from-the-secret"
        else:
            assert "VAULT_TOKEN" not in env
        ca = ca_settings(args)
        assert ca.problems() == []
        assert ca.provider == provider
        settings.append(
            (ca.provider, ca.trust_domain, ca.validity, ca.secret, ca.cfssl_url, ca.vault_address)
        )
        if provider == "cert-manager":
            assert (ca.cert_manager_issuer, ca.cert_manager_namespace) == ("mesh-ca", NAMESPACE)
    assert settings[0] == settings[1]
    # Both may ask cert-manager when it signs, and only then (the controller's Role always
    # has it: meshcp.sources.kubernetes_rbac, generated for every provider).
    requests = {
        "apiGroups": ["cert-manager.io"],
        "resources": ["certificaterequests"],
        "verbs": ["create", "delete", "get"],
    }
    assert requests in _find(documents, "Role", kubernetes_rbac.ROLE)["rules"]
    injector_rules = _find(documents, "Role", "meshcp-injector-ca")["rules"]
    assert (requests in injector_rules) == (provider == "cert-manager")


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        (("certificateProvider.kind=cfssl",), "certificateProvider.cfssl.url is required"),
        (("certificateProvider.kind=vault",), "certificateProvider.vault.address is required"),
        (("certificateProvider.kind=cert-manager",), "certificateProvider.certManager.issuer is required"),
        (("certificateProvider.kind=spire",), 'certificateProvider.kind "spire" is not one of'),
    ],
)
def test_a_provider_without_what_it_needs_is_refused_by_name(values: tuple[str, ...], missing: str) -> None:
    options = [option for value in values for option in ("--set", value)]
    result = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *options, check=False)
    assert result.returncode != 0
    assert missing in result.stderr


def test_values_reach_the_objects_they_name() -> None:
    documents = template(
        "meshName=shop",
        "trustDomain=example.org",
        "permissive=true",
        "egress=true",
        "certValidity=12h",
        "image.repository=registry.example/meshcp",
        "image.tag=9.9.9",
        "controller.replicas=3",
        "injector.replicas=4",
        "controller.resources.requests.cpu=1",
    )
    spec = _find(documents, "MeshConfig", "meshcp")["spec"]
    assert (spec["meshName"], spec["trustDomain"], spec["permissive"], spec["egressPassthrough"]) == (
        "shop",
        "example.org",
        True,
        True,
    )
    assert spec["certValidity"] == "12h"
    for deployment, replicas in (("meshcp-controller", 3), ("meshcp-injector", 4)):
        assert _find(documents, "Deployment", deployment)["spec"]["replicas"] == replicas
        container = _container(documents, deployment)
        assert container["image"] == "registry.example/meshcp:9.9.9"
        assert {"--trust-domain=example.org", "--cert-validity=12h"} <= set(container["args"])
    assert _container(documents, "meshcp-controller")["resources"]["requests"]["cpu"] == 1
    policy = _find(documents, "NetworkPolicy", "meshcp-controller")
    assert policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "meshcp.dev/monitored-by": "shop"
    }


def test_the_image_tag_defaults_to_the_charts_app_version() -> None:
    documents = template()
    assert _container(documents, "meshcp-controller")["image"] == "meshcp:0.1.0"


def test_autoscaling_replaces_the_fixed_replica_count() -> None:
    documents = template("controller.autoscaling.enabled=true", "injector.autoscaling.enabled=true")
    for name in ("meshcp-controller", "meshcp-injector"):
        assert "replicas" not in _find(documents, "Deployment", name)["spec"]
        autoscaler = _find(documents, "HorizontalPodAutoscaler", name)
        assert autoscaler["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (2, 5)
    assert not [d for d in template() if d["kind"] == "HorizontalPodAutoscaler"]


def test_both_components_have_a_disruption_budget() -> None:
    documents = template()
    for name in ("meshcp-controller", "meshcp-injector"):
        budget = _find(documents, "PodDisruptionBudget", name)
        pods = _find(documents, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert budget["spec"]["selector"]["matchLabels"].items() <= pods.items()


def test_optional_parts_can_be_left_out() -> None:
    documents = template(
        "prometheusAnnotations=false", "networkPolicy.enabled=false", "createNamespace=false"
    )
    kinds = {d["kind"] for d in documents}
    assert "NetworkPolicy" not in kinds and "Namespace" not in kinds
    controller = _find(documents, "Deployment", "meshcp-controller")
    assert "annotations" not in controller["spec"]["template"]["metadata"]
    assert "annotations" not in _find(documents, "Service", "meshcp-controller")["metadata"]
    default = template()
    scraped = _find(default, "Deployment", "meshcp-controller")["spec"]["template"]["metadata"]["annotations"]
    assert scraped["prometheus.io/scrape"] == "true"


def test_the_charts_rbac_is_the_generated_one_in_any_namespace() -> None:
    rendered = helm("template", RELEASE, str(CHART), "--namespace", "mesh-ops").stdout
    documents = [d for d in yaml.safe_load_all(rendered) if d]
    cluster_role = _find(documents, "ClusterRole", kubernetes_rbac.CLUSTER_ROLE)
    role = _find(documents, "Role", kubernetes_rbac.ROLE)
    assert cluster_role == kubernetes_rbac.cluster_role()
    assert role == kubernetes_rbac.role(namespace="mesh-ops")
    args = build_parser().parse_args(_container(documents, "meshcp-controller")["args"])
    assert args.ca_secret == f"mesh-ops/{kubernetes_rbac.CA_SECRET}"


def test_the_crds_serve_what_the_controller_watches() -> None:
    served = {
        (d["spec"]["group"], version["name"], d["spec"]["names"]["plural"])
        for d in template()
        if d["kind"] == "CustomResourceDefinition"
        for version in d["spec"]["versions"]
        if version["served"]
    }
    custom = {
        (r.group, r.version, r.plural)
        for r in RESOURCES
        if r.group.endswith((".io", ".dev")) and "k8s.io" not in r.group
    }
    # OSM's MeshConfig is OSM's own configuration, installed with OSM: read when present,
    # never shipped (docs/policies.md).
    custom.discard(("config.openservicemesh.io", "v1alpha2", "meshconfigs"))
    assert custom == served
