"""The install manifests in deploy/: valid Kubernetes objects, meshcp arguments its real
parser accepts, and the pieces wired to each other and to the code (ports, paths, names,
the CA Secret, the injector's permissions)."""

from __future__ import annotations

import argparse
import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from meshcp import __version__
from meshcp.cli.options import ca_settings, controller_settings
from meshcp.cli.parser import build_parser
from meshcp.injector import kube
from meshcp.injector.app import MUTATE_PATH
from meshcp.injector.decision import SYSTEM_NAMESPACES
from meshcp.injector.settings import DEFAULT_DEADLINE, InjectorSettings
from meshcp.model.meshconfig import CERT_PROVIDERS, MESH_LABEL, SIDECAR_LOG_LEVELS, MeshConfig
from meshcp.model.parse import parse_object
from meshcp.model.read_meshconfig import MESH_CONFIG_FIELDS
from meshcp.runtime.settings import Address
from meshcp.sources.kubernetes import RESOURCES
from meshcp.sources.kubernetes_rbac import CLUSTER_ROLE

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
NAMESPACE = "meshcp-system"
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

Manifest = dict[str, Any]


def _load() -> list[tuple[str, Manifest]]:
    documents = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                documents.append((path.name, document))
    return documents


DOCUMENTS = _load()


def _find(kind: str, name: str, *, file: str | None = None) -> Manifest:
    found = [
        doc
        for path, doc in DOCUMENTS
        if doc["kind"] == kind and doc["metadata"]["name"] == name and file in (None, path)
    ]
    assert len(found) == 1, f"expected one {kind} {name} in deploy/, found {len(found)}"
    return found[0]


def _all(kind: str) -> list[Manifest]:
    return [doc for _, doc in DOCUMENTS if doc["kind"] == kind]


def _container(deployment: Manifest) -> Manifest:
    containers: list[Manifest] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _args(deployment: Manifest) -> argparse.Namespace:
    """The container's arguments as `meshcp` parses them (the image's ENTRYPOINT is meshcp)."""
    container = _container(deployment)
    assert "command" not in container, "keep the image's ENTRYPOINT (meshcp); pass args only"
    args: list[str] = container["args"]
    return build_parser().parse_args(args)


def _container_port(deployment: Manifest, port: int | str) -> int:
    """A container port given by number or by name, as Services and probes refer to it."""
    ports: list[Manifest] = _container(deployment)["ports"]
    for entry in ports:
        if port in (entry["containerPort"], entry.get("name")):
            number: int = entry["containerPort"]
            return number
    raise AssertionError(f"{deployment['metadata']['name']} has no container port {port!r}")


def _service_target(service: Manifest, deployment: Manifest, name: str) -> tuple[int, int]:
    """(service port, container port) of the Service port `name`, which must select the
    Deployment's pods."""
    selector = service["spec"]["selector"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items(), f"Service {service['metadata']['name']} selects no pod"
    for entry in service["spec"]["ports"]:
        if entry["name"] == name:
            return entry["port"], _container_port(deployment, entry.get("targetPort", entry["port"]))
    raise AssertionError(f"Service {service['metadata']['name']} has no port {name}")


def _namespace(document: Manifest) -> str | None:
    namespace: str | None = document["metadata"].get("namespace")
    return namespace


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
    (watched,) = [r for r in RESOURCES if r.kind == "MeshConfig"]
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


# --- controller -------------------------------------------------------------------------------


def test_controller_arguments_parse_into_a_cluster_controller() -> None:
    deployment = _find("Deployment", "meshcp-controller", file="controller.yaml")
    args = _args(deployment)
    assert args.command == "serve"
    settings = controller_settings(args)  # the checks `meshcp serve` makes before it starts
    assert settings.kubernetes and settings.source is None
    assert not settings.insecure_xds
    assert settings.ca.provider == "internal"
    assert settings.ca.secret == f"{NAMESPACE}/meshcp-ca"
    # Listening on every address: probes and the Service reach the pod IP, not loopback.
    assert settings.xds_address.host == settings.http_address.host == "0.0.0.0"
    assert "meshcp-controller.meshcp-system.svc" in settings.xds_names


def test_controller_service_probes_and_scrape_annotations_match_its_listeners() -> None:
    deployment = _find("Deployment", "meshcp-controller")
    settings = controller_settings(_args(deployment))
    service = _find("Service", "meshcp-controller", file="controller.yaml")
    assert _service_target(service, deployment, "grpc") == (15128, settings.xds_address.port)
    assert _service_target(service, deployment, "http-metrics") == (9091, settings.http_address.port)
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == settings.http_address.port
    assert annotations["prometheus.io/path"] == "/metrics"
    container = _container(deployment)
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert _container_port(deployment, get["port"]) == settings.http_address.port
        assert get.get("scheme", "HTTP") == "HTTP"


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


# --- injector ---------------------------------------------------------------------------------


def test_injector_arguments_reach_the_controller_and_share_its_ca() -> None:
    injector = _args(_find("Deployment", "meshcp-injector", file="injector.yaml"))
    controller = controller_settings(_args(_find("Deployment", "meshcp-controller")))
    assert injector.command == "inject"
    ca = ca_settings(injector)  # the checks `meshcp inject` makes before it starts
    assert ca.provider == controller.ca.provider == "internal"
    assert ca.secret == controller.ca.secret, "injector and controller must share one CA root"
    assert ca.trust_domain == controller.ca.trust_domain
    xds = Address.parse(injector.xds_address)
    # Sidecars dial this host and check the controller's certificate for it (SNI).
    assert (injector.xds_server_name or xds.host) in controller.xds_names
    assert xds.host == "meshcp-controller.meshcp-system.svc"
    service = _find("Service", "meshcp-controller")
    (port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert xds.port == port


def test_injector_listens_where_its_service_and_probes_point() -> None:
    deployment = _find("Deployment", "meshcp-injector")
    args = _args(deployment)
    listen = Address.parse(args.address)
    assert listen.host == "0.0.0.0"
    # The default listener of the injector, as the design fixes it.
    assert listen.port == InjectorSettings(Path("c"), Path("k")).port == 9090
    service = _find("Service", "meshcp-injector", file="injector.yaml")
    (service_port,) = service["spec"]["ports"]
    assert _service_target(service, deployment, service_port["name"]) == (443, listen.port)
    for probe in ("readinessProbe", "livenessProbe"):
        get = _container(deployment)[probe]["httpGet"]
        assert (get["scheme"], get["path"]) == ("HTTPS", "/healthz")
        assert _container_port(deployment, get["port"]) == listen.port


def test_injector_serves_the_certificate_cert_manager_issues() -> None:
    deployment = _find("Deployment", "meshcp-injector")
    args = _args(deployment)
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert args.tls_cert.parent == args.tls_key.parent
    volume = volumes[mounts[str(args.tls_cert.parent)]]
    assert (args.tls_cert.name, args.tls_key.name) == ("tls.crt", "tls.key")  # a kubernetes.io/tls Secret
    certificate = _find("Certificate", "meshcp-injector-tls", file="injector.yaml")
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    service = _find("Service", "meshcp-injector")
    assert f"{service['metadata']['name']}.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]
    # cainjector puts the root that signs the serving certificate into the caBundle.
    annotations = _find("MutatingWebhookConfiguration", "meshcp-injector")["metadata"]["annotations"]
    ca_namespace, ca_name = annotations["cert-manager.io/inject-ca-from"].split("/")
    assert ca_namespace == NAMESPACE
    root = _find("Certificate", ca_name)
    assert root["spec"]["isCA"] is True
    issuer = _find("Issuer", certificate["spec"]["issuerRef"]["name"])
    assert issuer["spec"]["ca"]["secretName"] == root["spec"]["secretName"]


def test_webhook_calls_the_injector_for_pod_creation_in_meshed_namespaces() -> None:
    webhook_config = _find("MutatingWebhookConfiguration", "meshcp-injector", file="injector.yaml")
    (webhook,) = webhook_config["webhooks"]
    target = webhook["clientConfig"]["service"]
    service = _find("Service", target["name"])
    assert target["namespace"] == service["metadata"]["namespace"]
    assert target["path"] == MUTATE_PATH
    assert target["port"] in [p["port"] for p in service["spec"]["ports"]]
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert webhook["sideEffects"] == "NoneOnDryRun"  # the bootstrap Secret, skipped on dry runs
    assert webhook["failurePolicy"] in ("Fail", "Ignore")
    assert webhook["reinvocationPolicy"] in ("Never", "IfNeeded")
    assert {"v1", "v1beta1"} <= set(webhook["admissionReviewVersions"])
    # The API server must wait longer than the injector takes to answer, or it reports a
    # timeout for a pod the injector was about to admit.
    assert DEFAULT_DEADLINE < webhook["timeoutSeconds"] <= 30
    expressions = webhook["namespaceSelector"]["matchExpressions"]
    assert {"key": MESH_LABEL, "operator": "Exists"} in expressions
    (excluded,) = [e for e in expressions if e["key"] == "kubernetes.io/metadata.name"]
    assert excluded["operator"] == "NotIn"
    assert {"kube-system", NAMESPACE} <= set(excluded["values"])
    assert "kube-system" in SYSTEM_NAMESPACES


# --- injector RBAC ----------------------------------------------------------------------------

#: kubernetes_asyncio methods meshcp.injector.kube calls → (API group, resource, verb).
_KUBE_CALLS = {
    "read_namespace": ("", "namespaces", "get"),
    "get_cluster_custom_object": (kube.MESH_CONFIG_GROUP, kube.MESH_CONFIG_PLURAL, "get"),
    "create_namespaced_secret": ("", "secrets", "create"),
}
#: The CA Secret (`--ca-secret`): the injector opens the controller's CA without creating
#: it, through meshcp.certs.kubernetes_store.SecretStore's read path (read_namespaced_secret),
#: at start and whenever it follows a root rotation.
_CA_SECRET_VERBS = {"get"}

Grant = tuple[str, str, str]


def _api_calls(module_file: str) -> set[str]:
    """The methods `kube.py` calls on its CoreV1Api and CustomObjectsApi (`self._core.X`,
    `self._custom.X`)."""
    tree = ast.parse(Path(module_file).read_text())
    return {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr in ("_core", "_custom")
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
    # Cluster-wide (pods come in every namespace), for any object name, and nothing more.
    assert cluster_wide.keys() == needed
    assert all(names == () for names in cluster_wide.values())


def test_injector_may_read_the_ca_secret_only() -> None:
    args = _args(_find("Deployment", "meshcp-injector"))
    ca_namespace, ca_name = args.ca_secret.split("/")
    namespaced = list(_grants(_bound("Role", "RoleBinding", "meshcp-injector")))
    (role,) = [r for r in _all("Role") if r["metadata"]["name"] == "meshcp-injector-ca"]
    assert role["metadata"]["namespace"] == ca_namespace
    assert {grant for grant, _ in namespaced} == {("", "secrets", verb) for verb in _CA_SECRET_VERBS}
    assert all(names == (ca_name,) for _, names in namespaced)
