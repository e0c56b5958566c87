"""AdmissionReview in, sidecar injection decision out (pure: no I/O, no clock, no randomness).

The webhook server asks, in order:

1. `parse_review`: is the body an AdmissionReview at all? (no: HTTP 400)
2. `pod_creation`: is it the creation of a Pod? (no: allowed untouched)
3. `decide`, given the namespace's labels and annotations and the MeshConfig: should the pod
   get a sidecar? `Skip` (allowed untouched, with the reason), `Deny` (injection is required
   but impossible: the pod is refused with a message saying why) or a `Candidate`.
4. For a candidate the server picks the proxy UUID and issues the xDS client certificate,
   then `sidecar_patch` and `bootstrap_secret` build the JSONPatch and the Secret the
   sidecar boots from.

Requests are answered with `allowed_response` / `denied_response`, in the apiVersion they came
in (admission.k8s.io/v1 or v1beta1).

Kubernetes runs mutating webhooks before validating the object, so a pod that is not a valid
Pod is let through untouched: the API server's own validation then tells the user exactly
what is wrong, better than we could.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshcp.certs.provider import IssuedCertificate
from meshcp.identity import Identity, ProxyIdentity
from meshcp.model.meshconfig import MESH_LABEL, MeshConfig
from meshcp.policy.build import INJECTION_ANNOTATION, PROXY_UUID_LABEL
from meshcp.sidecar import iptables
from meshcp.sidecar.bootstrap import XdsTls, as_dict, bootstrap
from meshcp.sidecar.probes import probe_resources

ADMISSION_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
SIDECAR_CONTAINER = "envoy"
INIT_CONTAINER = "meshcp-init"
BOOTSTRAP_VOLUME = "meshcp-bootstrap"
BOOTSTRAP_DIR = "/etc/meshcp"
BOOTSTRAP_FILE = "bootstrap.json"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
SECRET_PREFIX = "meshcp-bootstrap-"
#: JSON list of the probes the injector rewrote; the sidecar's bootstrap serves them.
ORIGINAL_PROBES_ANNOTATION = "meshcp.dev/original-probes"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "meshcp-injector"
#: OSM's init image: Alpine with `sh` and iptables, all the init container needs.
DEFAULT_INIT_IMAGE = "openservicemesh/init:v1.2.4"
#: Kubernetes' own namespaces: never meshed, whatever their labels say.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
PROBE_FIELDS = {"liveness": "livenessProbe", "readiness": "readinessProbe", "startup": "startupProbe"}
#: Secret volume files are read by Envoy (UID 1500); only its container mounts the volume.
SECRET_MODE = 0o444


class MalformedReview(ValueError):
    """The body is not an AdmissionReview request this webhook can answer (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Review:
    """One AdmissionReview request; `request` is the raw `request` object."""

    api_version: str
    uid: str
    request: Mapping[str, Any]

    @property
    def dry_run(self) -> bool:
        """Side effects (the bootstrap Secret) must not happen: the webhook declares
        `sideEffects: NoneOnDryRun`."""
        return self.request.get("dryRun") is True


@dataclass(frozen=True, slots=True)
class NamespaceInfo:
    """What the injector needs to know about the pod's namespace."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PodCreation:
    """A Pod being created; `namespace` is resolved (the object often carries none)."""

    pod: Mapping[str, Any]
    namespace: str

    @property
    def display_name(self) -> str:
        """`ns/name`, or `ns/prefix*` for pods named by generateName (Deployments)."""
        metadata = self.pod["metadata"]
        name = _string(metadata.get("name")) or _string(metadata.get("generateName")) + "*"
        return f"{self.namespace}/{name}"


@dataclass(frozen=True, slots=True)
class Skip:
    """Not injected: allowed untouched. `reason` is logged and sent as an audit annotation."""

    reason: str


@dataclass(frozen=True, slots=True)
class Deny:
    """Injection is required but impossible: the pod is refused with `message`."""

    message: str
    code: int = 403


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pod that gets a sidecar once the server has its certificate."""

    creation: PodCreation
    identity: Identity
    redirection: iptables.Redirection


@dataclass(frozen=True, slots=True)
class SidecarTemplate:
    """How sidecars are built, beyond what MeshConfig says (image, log level)."""

    #: Where the controller's ADS server is reached from pods.
    xds_host: str
    xds_port: int
    #: The name on the controller's certificate (SNI); defaults to `xds_host`.
    xds_server_name: str = ""
    #: An image with `sh` and `iptables-restore` for the init container.
    init_image: str = DEFAULT_INIT_IMAGE
    #: Kubernetes ResourceRequirements of the Envoy container (None: none set).
    resources: Mapping[str, Any] | None = None
    image_pull_policy: str = "IfNotPresent"
    #: Incremental (delta) ADS instead of state of the world.
    delta_xds: bool = False
    #: Where the bootstrap volume is mounted in the sidecar. `meshcp lab` has no mount
    #: namespaces per container, so it mounts each pod's volume at a directory of its own.
    bootstrap_dir: str = BOOTSTRAP_DIR

    @property
    def server_name(self) -> str:
        return self.xds_server_name or self.xds_host


@dataclass(frozen=True, slots=True)
class Patch:
    """The JSONPatch of a pod, and what the user should know about it."""

    operations: list[dict[str, Any]]
    warnings: tuple[str, ...] = ()

    def encoded(self) -> str:
        return base64.b64encode(json.dumps(self.operations, separators=(",", ":")).encode()).decode()


# --- reading the request --------------------------------------------------------------------


def parse_review(body: bytes) -> Review:
    """The AdmissionReview in `body`; raises `MalformedReview` saying what is wrong."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:
        raise MalformedReview(f"the body is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise MalformedReview("the body must be a JSON object (an AdmissionReview)")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if api_version not in ADMISSION_VERSIONS:
        raise MalformedReview(
            f"apiVersion must be one of {', '.join(ADMISSION_VERSIONS)}, got {api_version!r}"
        )
    if kind != "AdmissionReview":
        raise MalformedReview(f"kind must be AdmissionReview, got {kind!r}")
    request = document.get("request")
    if not isinstance(request, dict):
        raise MalformedReview("request: required (an AdmissionRequest object)")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise MalformedReview("request.uid: required (a non-empty string)")
    return Review(api_version, uid, request)


def pod_creation(review: Review) -> PodCreation | Skip:
    """The Pod being created, or why this request is none of the injector's business."""
    request = review.request
    kind, resource = _mapping(request.get("kind")), _mapping(request.get("resource"))
    if (kind.get("group"), kind.get("kind")) != ("", "Pod") or resource.get("resource") != "pods":
        return Skip(f"not a Pod but {_string(kind.get('kind')) or 'an unknown kind'}")
    if request.get("subResource"):
        return Skip(f"a {request.get('subResource')!s:.40} subresource request")
    if request.get("operation") != "CREATE":
        return Skip(f"operation {_string(request.get('operation')) or 'unknown'}, not CREATE")
    pod = request.get("object")
    if not isinstance(pod, dict):
        return Skip("the request carries no Pod object")
    metadata, spec = pod.get("metadata"), pod.get("spec")
    if not isinstance(metadata, dict) or not isinstance(spec, dict):
        return Skip("not a valid Pod (metadata and spec are required); left to API validation")
    containers = spec.get("containers")
    if (
        not isinstance(containers, list)
        or not containers
        or not all(isinstance(c, dict) and _string(c.get("name")) for c in containers)
        or not all(isinstance(c, dict) for c in _list(spec.get("initContainers")))
    ):
        return Skip("not a valid Pod (containers need names); left to API validation")
    namespace = _string(metadata.get("namespace")) or _string(request.get("namespace"))
    if not namespace:
        return Skip("the pod has no namespace")
    return PodCreation(pod, namespace)


def decide(
    creation: PodCreation, namespace: NamespaceInfo | None, mesh: MeshConfig
) -> Skip | Deny | Candidate:
    """Whether the pod gets a sidecar.

    The namespace label `meshcp.dev/monitored-by: <mesh>` puts a namespace in the mesh and
    turns injection on for its pods; `meshcp.dev/sidecar-injection: enabled|disabled` on the
    namespace, then on the pod, overrides that. Pods outside monitored namespaces are never
    injected, even when annotated: the controller would not configure their sidecar.
    """
    ns = creation.namespace
    if namespace is None:
        return Skip(f"namespace {ns} not found")
    if ns in SYSTEM_NAMESPACES:
        return Skip(f"{ns} is a Kubernetes system namespace")
    if namespace.labels.get(MESH_LABEL) != mesh.mesh_name:
        return Skip(f"namespace {ns} is not monitored by mesh {mesh.mesh_name}")
    pod = creation.pod
    spec, metadata = pod["spec"], pod["metadata"]
    if spec.get("hostNetwork") is True:
        return Skip("the pod uses the host network")
    if already_injected(pod):
        return Skip("the pod already has a sidecar")
    annotations = _string_map(metadata.get("annotations"))
    for source, values in (("pod", annotations), (f"namespace {ns}", namespace.annotations)):
        value = values.get(INJECTION_ANNOTATION)
        if value is None:
            continue
        if value == "disabled":
            return Skip(f"injection disabled by the {source} annotation")
        if value == "enabled":
            break
        return Deny(f"{source} annotation {INJECTION_ANNOTATION}={value!r}: must be 'enabled' or 'disabled'")
    account = _string(spec.get("serviceAccountName")) or _string(spec.get("serviceAccount")) or "default"
    try:
        identity = Identity(ns, account)
    except ValueError as error:
        return Deny(f"cannot give pod {creation.display_name} a mesh identity: {error}")
    try:
        redirection = iptables.redirection_for(annotations, mesh)
    except (iptables.ExclusionError, ValueError) as error:
        return Deny(f"cannot inject pod {creation.display_name}: {error}")
    return Candidate(creation, identity, redirection)


def already_injected(pod: Mapping[str, Any]) -> bool:
    """Injection is idempotent: a reinvoked webhook or a re-created pod is left alone."""
    labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
    if PROXY_UUID_LABEL in labels:
        return True
    spec = _mapping(pod.get("spec"))
    containers = _list(spec.get("containers")) + _list(spec.get("initContainers"))
    names = {_string(_mapping(c).get("name")) for c in containers}
    return SIDECAR_CONTAINER in names or INIT_CONTAINER in names


# --- building the mutation -----------------------------------------------------------------


def secret_name(proxy: ProxyIdentity) -> str:
    return SECRET_PREFIX + proxy.proxy_uuid


def sidecar_patch(
    candidate: Candidate, proxy: ProxyIdentity, template: SidecarTemplate, mesh: MeshConfig
) -> Patch:
    """The JSONPatch adding the sidecar, init container, bootstrap volume and proxy label,
    and pointing HTTP/TCP probes at the sidecar's probe listeners."""
    pod = candidate.creation.pod
    metadata, spec = pod["metadata"], pod["spec"]
    ops: list[dict[str, Any]] = []
    probe_ops, probes, warnings = _rewrite_probes(spec["containers"])
    ops += probe_ops
    _add_entries(ops, metadata, "/metadata", "labels", {PROXY_UUID_LABEL: proxy.proxy_uuid})
    if probes:
        _add_entries(
            ops,
            metadata,
            "/metadata",
            "annotations",
            {ORIGINAL_PROBES_ANNOTATION: json.dumps(probes, separators=(",", ":"))},
        )
    _append(ops, spec, "/spec", "initContainers", _init_container(candidate.redirection, template))
    ops.append(
        {"op": "add", "path": "/spec/containers/-", "value": _sidecar_container(proxy, template, mesh)}
    )
    _append(ops, spec, "/spec", "volumes", _bootstrap_volume(proxy))
    return Patch(ops, tuple(warnings))


class BootstrapRenderer:
    """Renders sidecar bootstraps as JSON for one template.

    Only the node (id and cluster) and the probe listeners differ between sidecars, and
    converting the whole bootstrap with betterproto's `to_dict` costs ~10 ms, more than
    everything else an injection does; the shared part is converted once, here. The probe
    parts are converted only for pods with probes, and remembered: the pods of a Deployment
    all have the same probes. Immutable once built (but for that cache).
    """

    def __init__(self, template: SidecarTemplate) -> None:
        tls = XdsTls(
            certificate=f"{template.bootstrap_dir}/{CERT_FILE}",
            private_key=f"{template.bootstrap_dir}/{KEY_FILE}",
            trust_bundle=f"{template.bootstrap_dir}/{CA_FILE}",
            server_name=template.server_name,
        )
        config = bootstrap("", "", template.xds_host, template.xds_port, tls=tls, delta=template.delta_xds)
        self._shared = {key: value for key, value in as_dict(config).items() if key != "node"}

    def render(self, node_id: str, cluster: str, probes: Sequence[Mapping[str, Any]] = ()) -> str:
        """The bootstrap of one sidecar as JSON: `as_dict(bootstrap(node_id, cluster, ...,
        probes=probe_resources(probes)))`; `probes` are the original-probes annotation's entries."""
        document = {**self._shared, "node": {"id": node_id, "cluster": cluster}}
        if probes:
            listeners, clusters = _probe_parts(json.dumps(probes, sort_keys=True, separators=(",", ":")))
            static = document[_STATIC_RESOURCES]
            document[_STATIC_RESOURCES] = {
                **static,
                "listeners": [*static.get("listeners", ()), *listeners],
                "clusters": [*static.get("clusters", ()), *clusters],
            }
        return json.dumps(document, sort_keys=True, separators=(",", ":"))


_STATIC_RESOURCES = "staticResources"


@functools.lru_cache(maxsize=256)
def _probe_parts(probes_json: str) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The probe listeners and clusters as proto3 JSON (shared: never mutate them)."""
    listeners, clusters = probe_resources(json.loads(probes_json)).as_dicts()
    return tuple(listeners), tuple(clusters)


def original_probes(pod: Mapping[str, Any]) -> list[Any]:
    """What `sidecar_patch` writes into the original-probes annotation of `pod`."""
    return _rewrite_probes(_list(_mapping(pod.get("spec")).get("containers")))[1]


def bootstrap_secret(
    candidate: Candidate,
    proxy: ProxyIdentity,
    renderer: BootstrapRenderer,
    certificate: IssuedCertificate,
    trust_bundle: str,
) -> dict[str, Any]:
    """The Secret the sidecar boots from: Envoy bootstrap (with the listeners serving the
    pod's rewritten probes), xDS client certificate and key, and the bundle that signs the
    controller's certificate.

    Labelled with the proxy UUID (as the pod is) so that secrets of pods that never came to
    exist can be found and collected.
    """
    identity = candidate.identity
    files = {
        BOOTSTRAP_FILE: renderer.render(
            proxy.name,
            f"{identity.service_account}.{identity.namespace}",
            original_probes(candidate.creation.pod),
        ),
        CERT_FILE: certificate.chain_pem,
        KEY_FILE: certificate.private_key_pem,
        CA_FILE: trust_bundle,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(proxy),
            "namespace": identity.namespace,
            "labels": {PROXY_UUID_LABEL: proxy.proxy_uuid, MANAGED_BY_LABEL: MANAGED_BY},
        },
        "data": {name: base64.b64encode(text.encode()).decode() for name, text in sorted(files.items())},
    }


def _sidecar_container(proxy: ProxyIdentity, template: SidecarTemplate, mesh: MeshConfig) -> dict[str, Any]:
    env = [
        _field_env("POD_NAME", "metadata.name"),
        _field_env("POD_NAMESPACE", "metadata.namespace"),
        _field_env("POD_IP", "status.podIP"),
        _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        {"name": "MESHCP_PROXY_UUID", "value": proxy.proxy_uuid},
    ]
    return {
        "name": SIDECAR_CONTAINER,
        "image": mesh.sidecar_image,
        "imagePullPolicy": template.image_pull_policy,
        "command": ["envoy"],
        # Nothing in a pod hot-restarts Envoy; without it, Envoys sharing an IPC namespace
        # (meshcp lab) cannot collide on the hot-restart socket.
        "args": [
            "--config-path",
            f"{template.bootstrap_dir}/{BOOTSTRAP_FILE}",
            "--log-level",
            mesh.sidecar_log_level,
            "--disable-hot-restart",
        ],
        "ports": [{"name": "meshcp-metrics", "containerPort": iptables.PROMETHEUS_PORT, "protocol": "TCP"}],
        "env": env,
        # MeshConfig's sidecarResources win over the injector's configured defaults.
        "resources": mesh.sidecar_resources() or copy.deepcopy(dict(template.resources or {})),
        "securityContext": {
            "runAsUser": iptables.PROXY_UID,
            "runAsGroup": iptables.PROXY_UID,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": BOOTSTRAP_VOLUME, "mountPath": template.bootstrap_dir, "readOnly": True}],
    }


def _init_container(redirection: iptables.Redirection, template: SidecarTemplate) -> dict[str, Any]:
    return {
        "name": INIT_CONTAINER,
        "image": template.init_image,
        "imagePullPolicy": template.image_pull_policy,
        "command": iptables.init_command(iptables.render(redirection)),
        # Root with exactly the capabilities iptables needs, also under a pod-wide
        # runAsNonRoot (which would otherwise keep the init container from starting).
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }


def _bootstrap_volume(proxy: ProxyIdentity) -> dict[str, Any]:
    return {
        "name": BOOTSTRAP_VOLUME,
        "secret": {"secretName": secret_name(proxy), "defaultMode": SECRET_MODE},
    }


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


# --- probes ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Probe:
    index: int
    container: str
    kind: str
    probe: Mapping[str, Any]
    scheme: str  # HTTP, HTTPS or TCP
    port: int
    path: str = ""


def _rewrite_probes(
    containers: Sequence[Mapping[str, Any]],
) -> tuple[list[dict[str, Any]], list[Any], list[str]]:
    """Point HTTP(S) and TCP probes at the sidecar's probe listeners (15901-15903), which
    kubelet reaches without mTLS; exec probes run inside the container and stay as they are.

    Every HTTP probe of a kind shares that kind's port and gets its own path
    (`/meshcp/<kind>/<container>`); the annotation tells the controller where each path
    leads. A TCP probe carries no path, so it can only be forwarded when it is the only probe
    of its kind in the pod; others are left untouched (with a warning): they then reach
    Envoy's inbound listener and only show that Envoy is up.
    """
    found: list[_Probe] = []
    warnings: list[str] = []
    for index, container in enumerate(containers):
        name = _string(container.get("name"))
        for kind, key in PROBE_FIELDS.items():
            probe = container.get(key)
            if isinstance(probe, dict):
                result = _classify(index, name, kind, probe, container)
                if isinstance(result, str):
                    warnings.append(result)
                elif result is not None:
                    found.append(result)
    ops: list[dict[str, Any]] = []
    annotation: list[Any] = []
    for probe in found:
        port = iptables.PROBE_PORTS[probe.kind]
        same_kind = [p for p in found if p.kind == probe.kind]
        new = {k: copy.deepcopy(v) for k, v in probe.probe.items() if k not in ("httpGet", "tcpSocket")}
        entry: dict[str, Any] = {"container": probe.container, "probe": probe.kind, "sidecarPort": port}
        if probe.scheme == "TCP":
            if len(same_kind) > 1:
                warnings.append(
                    f"container {probe.container}: {probe.kind} TCP probe on port {probe.port} left as is "
                    f"(the pod has other {probe.kind} probes); it only checks that the sidecar is up"
                )
                continue
            new["tcpSocket"] = {"port": port}
        else:
            path = f"/meshcp/{probe.kind}/{probe.container}"
            http_get: dict[str, Any] = {"path": path, "port": port, "scheme": "HTTP"}
            headers = probe.probe["httpGet"].get("httpHeaders")
            if headers is not None:
                http_get["httpHeaders"] = copy.deepcopy(headers)
            new["httpGet"] = http_get
            entry["sidecarPath"] = path
            entry["path"] = probe.path
        entry.update(scheme=probe.scheme, port=probe.port)
        key = PROBE_FIELDS[probe.kind]
        ops.append({"op": "replace", "path": f"/spec/containers/{probe.index}/{key}", "value": new})
        annotation.append(entry)
    return ops, annotation, warnings


def _classify(
    index: int, name: str, kind: str, probe: Mapping[str, Any], container: Mapping[str, Any]
) -> _Probe | str | None:
    """The probe to rewrite, a warning about one that cannot be, or None (exec, unknown)."""
    for handler in ("httpGet", "tcpSocket"):
        action = probe.get(handler)
        if not isinstance(action, dict):
            continue
        if _string(action.get("host")):
            return None  # kubelet probes another host, not through this pod's iptables
        port = _resolve_port(action.get("port"), container)
        if port is None:
            return f"container {name}: {kind} probe port {action.get('port')!r:.40} not found; left as is"
        if handler == "tcpSocket":
            return _Probe(index, name, kind, probe, "TCP", port)
        path = action.get("path")
        path = path if isinstance(path, str) and path else "/"
        if not path.startswith("/"):
            path = "/" + path  # as kubelet's URL building does
        if not (path.isascii() and path.isprintable()) or " " in path:
            return f"container {name}: {kind} probe path {path!r:.40} cannot be forwarded; left as is"
        scheme = "HTTPS" if action.get("scheme") == "HTTPS" else "HTTP"
        return _Probe(index, name, kind, probe, scheme, port, path)
    if isinstance(probe.get("grpc"), dict):
        return (
            f"container {name}: {kind} gRPC probe left as is; exclude its port with "
            f"{iptables.INBOUND_PORT_EXCLUSIONS} or it reaches the sidecar's mTLS listener"
        )
    return None


def _resolve_port(value: object, container: Mapping[str, Any]) -> int | None:
    """A probe's port as kubelet resolves it: a number, a container port name, or digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        for entry in _list(container.get("ports")):
            number = _mapping(entry).get("containerPort")
            if (
                _mapping(entry).get("name") == value
                and isinstance(number, int)
                and not isinstance(number, bool)
            ):
                return number if 1 <= number <= 65535 else None
        value = int(value) if value.isascii() and value.isdigit() and len(value) <= 5 else None
    if isinstance(value, int) and 1 <= value <= 65535:
        return value
    return None


# --- responses ------------------------------------------------------------------------------


def allowed_response(review: Review, *, patch: Patch | None = None, reason: str = "") -> dict[str, Any]:
    """Admit the pod, mutated by `patch` if any; `reason` goes to the audit log."""
    response: dict[str, Any] = {"uid": review.uid, "allowed": True}
    if patch is not None:
        response["patchType"] = "JSONPatch"
        response["patch"] = patch.encoded()
        if patch.warnings:
            response["warnings"] = list(patch.warnings)
    result = "injected" if patch is not None else f"skipped: {reason}"
    response["auditAnnotations"] = {"sidecar-injection": result}
    return _review(review, response)


def denied_response(review: Review, message: str, *, code: int = 403) -> dict[str, Any]:
    """Refuse the pod; `message` is what `kubectl` (or the ReplicaSet's events) shows."""
    response = {
        "uid": review.uid,
        "allowed": False,
        "status": {
            "code": code,
            "message": message,
            "reason": "Forbidden" if code == 403 else "InternalError",
        },
    }
    return _review(review, response)


def _review(review: Review, response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": review.api_version, "kind": "AdmissionReview", "response": response}


# --- JSONPatch helpers and tolerant readers -------------------------------------------------


def escape(key: str) -> str:
    """A JSON Pointer reference token (RFC 6901): `meshcp.dev/proxy-uuid` → `meshcp.dev~1proxy-uuid`."""
    return key.replace("~", "~0").replace("/", "~1")


def _add_entries(
    ops: list[dict[str, Any]], parent: Mapping[str, Any], path: str, key: str, entries: Mapping[str, str]
) -> None:
    """Add map entries, creating the map when absent (or null: a pointer into null fails)."""
    if isinstance(parent.get(key), dict):
        for name, value in entries.items():
            ops.append({"op": "add", "path": f"{path}/{key}/{escape(name)}", "value": value})
    else:
        ops.append({"op": "add", "path": f"{path}/{key}", "value": dict(entries)})


def _append(ops: list[dict[str, Any]], parent: Mapping[str, Any], path: str, key: str, item: Any) -> None:
    if isinstance(parent.get(key), list):
        ops.append({"op": "add", "path": f"{path}/{key}/-", "value": item})
    else:
        ops.append({"op": "add", "path": f"{path}/{key}", "value": [item]})


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _string_map(value: object) -> dict[str, str]:
    return {k: v for k, v in _mapping(value).items() if isinstance(k, str) and isinstance(v, str)}
