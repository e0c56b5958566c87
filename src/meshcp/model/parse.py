"""Kubernetes-style manifests -> model objects, with a precise reason for anything invalid.

Pure (no I/O): the file source and the Kubernetes source both call `parse_object`, so an
object means the same thing whichever way it arrived, and a bad one is reported the same
way — which field, what is wrong — and skipped, instead of taking the mesh down or being
half-applied. This module reads the envelope (kind, apiVersion, metadata) and hands the
rest to the reader of the kind: `read_core`, `read_smi`, `read_osm_policy`,
`read_meshconfig` or, for OSM's MeshConfig (same kind, another API group),
`read_osm_meshconfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshcp.model.fields import Field, FieldError, describe
from meshcp.model.meta import Meta, ObjectRef
from meshcp.model.names import dns_1035_label, dns_label, dns_subdomain
from meshcp.model.osm_meshconfig import OSM_CONFIG_VERSIONS
from meshcp.model.osm_policy import POLICY_API
from meshcp.model.read_core import (
    read_endpoint_slice,
    read_namespace,
    read_pod,
    read_service,
    read_service_account,
)
from meshcp.model.read_meshconfig import read_mesh_config
from meshcp.model.read_osm_meshconfig import read_osm_mesh_config
from meshcp.model.read_osm_policy import (
    read_egress,
    read_ingress_backend,
    read_retry,
    read_upstream_traffic_setting,
)
from meshcp.model.read_smi import (
    read_http_route_group,
    read_tcp_route,
    read_traffic_split,
    read_traffic_target,
    read_udp_route,
)
from meshcp.model.state import MeshObject


class InvalidObject(ValueError):
    """A manifest that cannot become a model object; `reason` says which field and why."""

    def __init__(self, ref: ObjectRef, reason: str) -> None:
        super().__init__(f"{ref}: {reason}" if ref.kind or ref.name else reason)
        self.ref = ref
        self.reason = reason


def parse_object(manifest: Mapping[str, Any]) -> MeshObject:
    """The model object a manifest describes; raises `InvalidObject` for anything invalid."""
    ref = ref_of(manifest)
    if not isinstance(manifest, Mapping):
        raise InvalidObject(ref, f"a manifest must be a mapping, got {describe(manifest)}")
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if not isinstance(kind, str) or not kind:
        raise InvalidObject(ref, "kind: required")
    if not isinstance(api_version, str) or not api_version:
        raise InvalidObject(ref, "apiVersion: required")
    spec = _kind_of(kind, api_version)
    if spec is None:
        raise InvalidObject(ref, f"unsupported kind {kind} ({api_version})")
    if api_version not in spec.versions:
        supported = ", ".join(_versions(kind))
        raise InvalidObject(ref, f"unsupported apiVersion {api_version} for {kind} (supported: {supported})")
    root = Field(manifest, "")
    try:
        meta = _meta(root.field("metadata"), spec)
        return spec.read(root, meta, api_version)
    except FieldError as error:
        raise InvalidObject(ref, str(error)) from None


def ref_of(manifest: object) -> ObjectRef:
    """Best-effort reference of a manifest, even an invalid one, so a problem can name it.

    Missing parts are empty; namespaced kinds without a namespace get "default" (as kubectl
    does), cluster-scoped kinds never have one.
    """
    if not isinstance(manifest, Mapping):
        return ObjectRef("", "", "")
    kind = manifest.get("kind")
    kind = kind if isinstance(kind, str) else ""
    metadata = manifest.get("metadata")
    metadata = metadata if isinstance(metadata, Mapping) else {}
    name, namespace = metadata.get("name"), metadata.get("namespace")
    name = name if isinstance(name, str) else ""
    namespace = namespace if isinstance(namespace, str) else ""
    api_version = manifest.get("apiVersion")
    spec = _kind_of(kind, api_version if isinstance(api_version, str) else "")
    if spec is not None:
        namespace = (namespace or "default") if spec.namespaced else ""
    return ObjectRef(kind, namespace, name)


@dataclass(frozen=True, slots=True)
class _Kind:
    versions: tuple[str, ...]
    namespaced: bool
    name_rule: Callable[[Field], str]
    read: Callable[[Field, Meta, str], MeshObject]


def _kind_of(kind: str, api_version: str) -> _Kind | None:
    """How to read `kind` of `api_version`: a kind another API also names (OSM's
    MeshConfig) by its version, every other by its kind alone."""
    return _OTHER_APIS.get((kind, api_version)) or _KINDS.get(kind)


def _versions(kind: str) -> list[str]:
    own = _KINDS.get(kind)
    others = [version for (name, version) in _OTHER_APIS if name == kind]
    return [*(own.versions if own else ()), *others]


def _meta(node: Field, kind: _Kind) -> Meta:
    name = kind.name_rule(node.field("name"))
    namespace = ""
    if kind.namespaced:
        namespace = dns_label(node.field("namespace"), required=False) or "default"
    return Meta(
        name=name,
        namespace=namespace,
        labels=node.field("labels").string_map(),
        annotations=node.field("annotations").string_map(),
    )


_ACCESS = ("access.smi-spec.io/v1alpha3", "access.smi-spec.io/v1alpha2")
_SPECS = ("specs.smi-spec.io/v1alpha4", "specs.smi-spec.io/v1alpha3")
_SPLIT = ("split.smi-spec.io/v1alpha4", "split.smi-spec.io/v1alpha3", "split.smi-spec.io/v1alpha2")
_KINDS: dict[str, _Kind] = {
    "Namespace": _Kind(("v1",), False, dns_label, read_namespace),
    "ServiceAccount": _Kind(("v1",), True, dns_subdomain, read_service_account),
    "Service": _Kind(("v1",), True, dns_1035_label, read_service),
    "Pod": _Kind(("v1",), True, dns_subdomain, read_pod),
    "EndpointSlice": _Kind(("discovery.k8s.io/v1",), True, dns_subdomain, read_endpoint_slice),
    "TrafficTarget": _Kind(_ACCESS, True, dns_subdomain, read_traffic_target),
    "HTTPRouteGroup": _Kind(_SPECS, True, dns_subdomain, read_http_route_group),
    "TCPRoute": _Kind(_SPECS, True, dns_subdomain, read_tcp_route),
    "UDPRoute": _Kind(_SPECS[:1], True, dns_subdomain, read_udp_route),
    "TrafficSplit": _Kind(_SPLIT, True, dns_subdomain, read_traffic_split),
    "Retry": _Kind((POLICY_API,), True, dns_subdomain, read_retry),
    "UpstreamTrafficSetting": _Kind((POLICY_API,), True, dns_subdomain, read_upstream_traffic_setting),
    "Egress": _Kind((POLICY_API,), True, dns_subdomain, read_egress),
    "IngressBackend": _Kind((POLICY_API,), True, dns_subdomain, read_ingress_backend),
    # Cluster-scoped: there is one mesh per control plane, and its settings are not a tenant's.
    "MeshConfig": _Kind(("config.meshcp.dev/v1alpha1",), False, dns_subdomain, read_mesh_config),
}
#: Kinds of another API group that share a name with one above: (kind, apiVersion) → reader.
_OSM_MESH_CONFIG = _Kind(OSM_CONFIG_VERSIONS, True, dns_subdomain, read_osm_mesh_config)
_OTHER_APIS: dict[tuple[str, str], _Kind] = {
    ("MeshConfig", version): _OSM_MESH_CONFIG for version in OSM_CONFIG_VERSIONS
}
