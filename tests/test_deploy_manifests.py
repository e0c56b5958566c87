"""The install manifests in deploy/ as objects: valid Kubernetes objects, in the meshcp
namespace, locked down, running the image the Dockerfile builds, and a MeshConfig (with
its CRD) that meshcp reads as written. How the pieces are wired to each other and to the
code: tests/test_deploy_wiring.py; their RBAC: tests/test_deploy_rbac.py."""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from meshcp import __version__
from meshcp.injector import kube
from meshcp.model.meshconfig import CERT_PROVIDERS, SIDECAR_LOG_LEVELS, MeshConfig
from meshcp.model.parse import parse_object
from meshcp.model.read_meshconfig import MESH_CONFIG_FIELDS
from meshcp.sources.kubernetes import RESOURCES
from tests.support.deploy import (
    DEPLOY,
    DOCUMENTS,
    NAMESPACE,
    ROOT,
    Manifest,
    _args,
    _container,
    _find,
    _namespace,
)

#: Oldest and a recent Kubernetes whose schema (kubernetes-validate's bundled one) the
#: built-in objects must satisfy, strictly: an unknown or misspelt field is an error.
KUBERNETES_VERSIONS = ("1.28", "1.33")
#: Kinds served by CustomResourceDefinitions, which kubernetes-validate has no schema for:
#: cert-manager's (its own CRDs validate them when applied) and meshcp's MeshConfig
#: (checked below with meshcp's parser and against deploy/meshconfig-crd.yaml).
CRD_KINDS = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("config.meshcp.dev/v1alpha1", "MeshConfig"),
}


def _ids(documents: list[tuple[str, Manifest]]) -> list[str]:
    return [f"{path}:{doc['kind']}/{doc['metadata']['name']}" for path, doc in documents]


# --- every object -----------------------------------------------------------------------------


def test_deploy_holds_the_install_manifests() -> None:
    names = {path.name for path in DEPLOY.glob("*.yaml")}
    assert {
        "namespace.yaml",
        "meshconfig-crd.yaml",
        "rbac.yaml",
        "controller.yaml",
        "injector.yaml",
        "meshconfig.yaml",
        "metrics-apiservice.yaml",
    } <= names
    keys = [
        (doc["apiVersion"].split("/")[0], doc["kind"], _namespace(doc), doc["metadata"]["name"])
        for _, doc in DOCUMENTS
    ]
    assert len(keys) == len(set(keys)), "an object is defined twice"


BUILT_IN = [(path, doc) for path, doc in DOCUMENTS if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("path", "document"), BUILT_IN, ids=_ids(BUILT_IN))
def test_built_in_objects_validate_against_the_kubernetes_schema(
    path: str, document: Manifest, version: str
) -> None:
    kubernetes_validate.validate(document, version, strict=True)


def test_only_custom_resources_skip_the_schema() -> None:
    """The skipped kinds really have no built-in schema (a misspelt apiVersion of a
    built-in kind is not silently skipped), and each one is used."""
    skipped = [doc for _, doc in DOCUMENTS if (doc["apiVersion"], doc["kind"]) in CRD_KINDS]
    assert {(doc["apiVersion"], doc["kind"]) for doc in skipped} == CRD_KINDS
    for doc in skipped:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_namespaced_objects_live_in_the_meshcp_namespace() -> None:
    _find("Namespace", NAMESPACE, file="namespace.yaml")
    cluster_scoped = {
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "MeshConfig",
        "APIService",
    }
    for path, doc in DOCUMENTS:
        expected = None if doc["kind"] in cluster_scoped else NAMESPACE
        assert _namespace(doc) == expected, f"{path}: {doc['kind']} {doc['metadata']['name']}"


@pytest.mark.parametrize("name", ["meshcp-controller", "meshcp-injector"])
def test_containers_run_locked_down(name: str) -> None:
    deployment = _find("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    context = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    # With a read-only root, temporary files (meshcp.xds.tls loads its TLS context through
    # them) need a writable /tmp.
    (tmp,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp)
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert pod["serviceAccountName"] == name
    _find("ServiceAccount", name)


@pytest.mark.parametrize("name", ["meshcp-controller", "meshcp-injector"])
def test_containers_run_the_image_built_by_the_dockerfile(name: str) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["meshcp"\]$', dockerfile, re.MULTILINE)
    user = re.search(r"^USER (\d+)(?::(\d+))?$", dockerfile, re.MULTILINE)
    assert user is not None, "the Dockerfile must name a numeric USER (runAsNonRoot checks it)"
    deployment = _find("Deployment", name)
    assert _container(deployment)["image"] == f"meshcp:{__version__}"
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user[1])


# --- MeshConfig -------------------------------------------------------------------------------


def test_meshconfig_is_one_meshcp_accepts() -> None:
    document = _find("MeshConfig", "meshcp", file="meshconfig.yaml")
    config = parse_object(document)
    assert isinstance(config, MeshConfig)
    assert config.mesh_name == "meshcp"
    # The injector reads this one; controller and injector sign for its trust domain.
    assert _args(_find("Deployment", "meshcp-injector")).mesh_config == config.meta.name
    for name in ("meshcp-controller", "meshcp-injector"):
        assert _args(_find("Deployment", name)).trust_domain == config.trust_domain


def test_meshconfig_crd_serves_what_meshcp_reads() -> None:
    crd = _find("CustomResourceDefinition", "meshconfigs.config.meshcp.dev", file="meshconfig-crd.yaml")
    spec = crd["spec"]
    (watched,) = [r for r in RESOURCES if r.kind == "MeshConfig" and r.group == "config.meshcp.dev"]
    assert (spec["group"], spec["names"]["plural"], spec["names"]["kind"]) == (
        kube.MESH_CONFIG_GROUP,
        kube.MESH_CONFIG_PLURAL,
        "MeshConfig",
    )
    assert (watched.group, watched.plural) == (spec["group"], spec["names"]["plural"])
    assert not watched.namespaced
    assert spec["scope"] == "Cluster"
    (version,) = spec["versions"]
    assert version["name"] == kube.MESH_CONFIG_VERSION == watched.version
    assert version["served"] and version["storage"]
    fields = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    # A field the CRD does not declare is pruned by the API server: meshcp would never see it.
    assert fields.keys() == MESH_CONFIG_FIELDS.keys()
    assert tuple(fields["certProvider"]["enum"]) == CERT_PROVIDERS
    assert tuple(fields["sidecarLogLevel"]["enum"]) == SIDECAR_LOG_LEVELS


def test_meshconfig_fields_have_the_types_its_crd_declares() -> None:
    crd = _find("CustomResourceDefinition", "meshconfigs.config.meshcp.dev")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]

    def check(value: Any, node: Manifest, where: str) -> None:
        expected = {"string": str, "boolean": bool, "integer": int, "array": list, "object": dict}
        assert isinstance(value, expected[node["type"]]), f"{where}: not a {node['type']}"
        if "enum" in node:
            assert value in node["enum"], where
        if isinstance(value, list):
            for index, item in enumerate(value):
                check(item, node["items"], f"{where}[{index}]")
        if isinstance(value, dict):
            for key, item in value.items():
                child = node.get("properties", {}).get(key) or node.get("additionalProperties")
                assert child, f"{where}.{key}: not in the CRD"
                check(item, child, f"{where}.{key}")

    check(_find("MeshConfig", "meshcp")["spec"], schema, "spec")
