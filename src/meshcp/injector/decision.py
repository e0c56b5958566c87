"""Which admission requests get a sidecar (pure: no I/O, no clock, no randomness).

Two questions, in order: `pod_creation`, is the request the creation of a Pod at all (no:
allowed untouched)? Then `decide`, given the namespace's labels and annotations and the
MeshConfig: should the pod get a sidecar? `Skip` (allowed untouched, with the reason),
`Deny` (injection is required but impossible: the pod is refused with a message saying
why) or a `Candidate`, which the server then names, certifies and patches.

Kubernetes runs mutating webhooks before validating the object, so a pod that is not a valid
Pod is let through untouched: the API server's own validation then tells the user exactly
what is wrong, better than we could.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcp.identity import Identity
from meshcp.injector import fields
from meshcp.injector.review import Review
from meshcp.injector.template import INIT_CONTAINER, PROXYLESS_VOLUME, SIDECAR_CONTAINER
from meshcp.model.meshconfig import MESH_LABEL, MeshConfig
from meshcp.model.osm_names import ALIASES, conflicts, lookup, value_of
from meshcp.policy.membership import INJECTION_ANNOTATION
from meshcp.sidecar import iptables
from meshcp.sidecar.grpc_bootstrap import PROXYLESS_GRPC, PROXYLESS_KEY

#: Kubernetes' own namespaces: never meshed, whatever their labels say.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


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
        name = fields.string(metadata.get("name")) or fields.string(metadata.get("generateName")) + "*"
        return f"{self.namespace}/{name}"


@dataclass(frozen=True, slots=True)
class Skip:
    """Not injected: allowed untouched. `reason` is logged and sent as an audit annotation."""

    reason: str
    #: What the user should know (meshcp and OSM names that disagree), logged and returned.
    warnings: tuple[str, ...] = ()


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
    #: What the user should know (meshcp and OSM names that disagree), logged and returned.
    warnings: tuple[str, ...] = ()
    #: A proxyless gRPC pod (`meshcp.dev/proxyless: grpc`): no sidecar, no iptables; its
    #: containers get gRPC's xDS bootstrap and certificates from a Secret instead.
    proxyless: bool = False


def pod_creation(review: Review) -> PodCreation | Skip:
    """The Pod being created, or why this request is none of the injector's business."""
    request = review.request
    kind, resource = fields.mapping(request.get("kind")), fields.mapping(request.get("resource"))
    if (kind.get("group"), kind.get("kind")) != ("", "Pod") or resource.get("resource") != "pods":
        return Skip(f"not a Pod but {fields.string(kind.get('kind')) or 'an unknown kind'}")
    if request.get("subResource"):
        return Skip(f"a {request.get('subResource')!s:.40} subresource request")
    if request.get("operation") != "CREATE":
        return Skip(f"operation {fields.string(request.get('operation')) or 'unknown'}, not CREATE")
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
        or not all(isinstance(c, dict) and fields.string(c.get("name")) for c in containers)
        or not all(isinstance(c, dict) for c in fields.array(spec.get("initContainers")))
    ):
        return Skip("not a valid Pod (containers need names); left to API validation")
    namespace = fields.string(metadata.get("namespace")) or fields.string(request.get("namespace"))
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
    OSM's names (`openservicemesh.io/...`, `model.osm_names`) count where meshcp's are
    absent; where both are set and disagree, meshcp's wins and a warning names the object.
    """
    ns = creation.namespace
    if namespace is None:
        return Skip(f"namespace {ns} not found")
    if ns in SYSTEM_NAMESPACES:
        return Skip(f"{ns} is a Kubernetes system namespace")
    pod = creation.pod
    spec, metadata = pod["spec"], pod["metadata"]
    annotations = fields.string_map(metadata.get("annotations"))
    warnings = tuple(
        f"namespace {ns}: {reason}"
        for reason in (
            *conflicts(namespace.labels, (MESH_LABEL,)),
            *conflicts(namespace.annotations, (INJECTION_ANNOTATION,)),
        )
    ) + tuple(f"pod {creation.display_name}: {reason}" for reason in conflicts(annotations, tuple(ALIASES)))
    if value_of(namespace.labels, MESH_LABEL) != mesh.mesh_name:
        return Skip(f"namespace {ns} is not monitored by mesh {mesh.mesh_name}", warnings)
    if spec.get("hostNetwork") is True:
        return Skip("the pod uses the host network", warnings)
    if already_injected(pod):
        return Skip("the pod already has a sidecar", warnings)
    flavour = annotations.get(PROXYLESS_KEY)
    if flavour is not None and flavour != PROXYLESS_GRPC:
        return Deny(
            f"pod annotation {PROXYLESS_KEY}={flavour!r}: must be {PROXYLESS_GRPC!r} (a proxyless gRPC pod)"
        )
    for source, values in (("pod", annotations), (f"namespace {ns}", namespace.annotations)):
        found = lookup(values, INJECTION_ANNOTATION)
        if found is None:
            continue
        name, value = found
        if value == "disabled":
            return Skip(f"injection disabled by the {source} annotation {name}", warnings)
        if value == "enabled":
            break
        return Deny(f"{source} annotation {name}={value!r}: must be 'enabled' or 'disabled'")
    try:
        identity = Identity(ns, service_account(spec))
    except ValueError as error:
        return Deny(f"cannot give pod {creation.display_name} a mesh identity: {error}")
    if flavour is not None:  # no traffic redirection: the application speaks xDS itself
        return Candidate(creation, identity, iptables.Redirection(), proxyless=True)
    try:
        redirection = iptables.redirection_for(annotations, mesh)
    except (iptables.ExclusionError, ValueError) as error:
        return Deny(f"cannot inject pod {creation.display_name}: {error}")
    return Candidate(creation, identity, redirection, warnings)


def service_account(spec: Mapping[str, Any]) -> str:
    """The pod's service account as Kubernetes defaults it: `serviceAccountName`, else the
    deprecated `serviceAccount`, else `default`."""
    return (
        fields.string(spec.get("serviceAccountName"))
        or fields.string(spec.get("serviceAccount"))
        or "default"
    )


def already_injected(pod: Mapping[str, Any]) -> bool:
    """Injection is idempotent: a reinvoked webhook or a re-created pod with the sidecar is
    left alone. The proxy UUID label alone does not count: a pod created carrying one
    (anyone who may create pods can write labels) is injected, and its label replaced by a
    UUID of the injector's (`pod_patch`), never trusted."""
    spec = fields.mapping(pod.get("spec"))
    containers = fields.array(spec.get("containers")) + fields.array(spec.get("initContainers"))
    names = {fields.string(fields.mapping(c).get("name")) for c in containers}
    volumes = {fields.string(fields.mapping(v).get("name")) for v in fields.array(spec.get("volumes"))}
    return SIDECAR_CONTAINER in names or INIT_CONTAINER in names or PROXYLESS_VOLUME in volumes
