"""MeshState: one consistent, immutable revision of every object a source reported."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import TypeVar

from meshcp.model.core import EndpointSlice, Namespace, Pod, Service, ServiceAccount
from meshcp.model.meshconfig import MESH_LABEL, PERMISSIVE_ANNOTATION, MeshConfig
from meshcp.model.meta import ObjectRef
from meshcp.model.osm_meshconfig import OsmMeshConfig, effective
from meshcp.model.osm_names import value_of
from meshcp.model.osm_policy import Egress, IngressBackend, Retry, UpstreamTrafficSetting
from meshcp.model.smi import HTTPRouteGroup, TCPRoute, TrafficSplit, TrafficTarget, UDPRoute

MeshObject = (
    Namespace
    | ServiceAccount
    | Service
    | Pod
    | EndpointSlice
    | TrafficTarget
    | HTTPRouteGroup
    | TCPRoute
    | UDPRoute
    | TrafficSplit
    | Retry
    | UpstreamTrafficSetting
    | Egress
    | IngressBackend
    | MeshConfig
    | OsmMeshConfig
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Problem:
    """An object that was reported and skipped: what, where it came from, and why."""

    ref: ObjectRef
    reason: str
    #: `file:line` for manifests, empty for objects from the API server.
    location: str = ""

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{where}{self.ref}: {self.reason}"


@dataclass(frozen=True)
class MeshState:
    """Objects by reference, plus the problems of objects that could not be accepted.

    Immutable: a change makes a new state with the next revision (`with_changes`), so the
    compiler always sees one consistent picture. Indexes are computed on first use; a
    state made by `with_changes` takes over its parent's indexes of the kinds the change
    did not touch, and knows which references changed (`changes_since`), so a change
    costs the compiler what it touched, not a walk over the mesh.
    """

    objects: Mapping[ObjectRef, MeshObject] = field(default_factory=dict)
    problems: tuple[Problem, ...] = ()
    revision: int = 0
    #: The parent's `objects` and the references that differ from it (`with_changes`).
    base: Mapping[ObjectRef, MeshObject] | None = field(default=None, compare=False, repr=False)
    changed: frozenset[ObjectRef] = field(default=frozenset(), compare=False, repr=False)
    #: The mesh's name as the controller was started with it (`meshcp serve --mesh-name`):
    #: it wins over a MeshConfig's `meshName`, because the Kubernetes source already chose
    #: the namespaces by it (None: the MeshConfig's, default `meshcp`).
    mesh_name: str | None = None

    def with_changes(
        self,
        upserts: Iterable[MeshObject] = (),
        deletes: Iterable[ObjectRef] = (),
        problems: tuple[Problem, ...] | None = None,
    ) -> MeshState:
        objects = dict(self.objects)
        changed: set[ObjectRef] = set()
        for ref in deletes:
            if objects.pop(ref, None) is not None:
                changed.add(ref)
        for obj in upserts:
            ref = obj.ref
            if objects.get(ref) is not obj:
                changed.add(ref)
            objects[ref] = obj
        state = MeshState(
            MappingProxyType(objects),
            self.problems if problems is None else problems,
            self.revision + 1,
            self.objects,
            frozenset(changed),
            self.mesh_name,
        )
        touched = {ref.kind for ref in changed}
        for name, kinds in _INDEX_KINDS.items():
            if name in self.__dict__ and touched.isdisjoint(kinds):
                state.__dict__[name] = self.__dict__[name]
        return state

    def changes_since(self, other: MeshState) -> frozenset[ObjectRef]:
        """The references whose object differs between `other` and this state (added,
        replaced or removed): known without a walk when this state was made from it."""
        if self.base is other.objects:
            return self.changed
        if self.objects is other.objects:
            return frozenset()
        mine, theirs = self.objects, other.objects
        found = {ref for ref, obj in mine.items() if (their := theirs.get(ref)) is not obj and their != obj}
        found.update(ref for ref in theirs if ref not in mine)
        return frozenset(found)

    def get(self, ref: ObjectRef) -> MeshObject | None:
        return self.objects.get(ref)

    def _of(self, cls: type[T]) -> tuple[T, ...]:
        found = [obj for obj in self.objects.values() if isinstance(obj, cls)]
        # By reference order; one kind, so (namespace, name): plain tuples compare in C,
        # ObjectRef's generated ordering in Python (most of a re-index of 5,000 pods).
        return tuple(sorted(found, key=_namespace_and_name))

    @cached_property
    def namespaces(self) -> tuple[Namespace, ...]:
        return self._of(Namespace)

    @cached_property
    def services(self) -> tuple[Service, ...]:
        return self._of(Service)

    @cached_property
    def pods(self) -> tuple[Pod, ...]:
        return self._of(Pod)

    @cached_property
    def endpoint_slices(self) -> tuple[EndpointSlice, ...]:
        return self._of(EndpointSlice)

    @cached_property
    def service_accounts(self) -> tuple[ServiceAccount, ...]:
        return self._of(ServiceAccount)

    @cached_property
    def traffic_targets(self) -> tuple[TrafficTarget, ...]:
        return self._of(TrafficTarget)

    @cached_property
    def http_route_groups(self) -> Mapping[tuple[str, str], HTTPRouteGroup]:
        return {(g.meta.namespace, g.meta.name): g for g in self._of(HTTPRouteGroup)}

    @cached_property
    def tcp_routes(self) -> Mapping[tuple[str, str], TCPRoute]:
        return {(r.meta.namespace, r.meta.name): r for r in self._of(TCPRoute)}

    @cached_property
    def udp_routes(self) -> tuple[UDPRoute, ...]:
        return self._of(UDPRoute)

    @cached_property
    def traffic_splits(self) -> tuple[TrafficSplit, ...]:
        return self._of(TrafficSplit)

    @cached_property
    def retries(self) -> tuple[Retry, ...]:
        return self._of(Retry)

    @cached_property
    def upstream_traffic_settings(self) -> tuple[UpstreamTrafficSetting, ...]:
        return self._of(UpstreamTrafficSetting)

    @cached_property
    def egresses(self) -> tuple[Egress, ...]:
        return self._of(Egress)

    @cached_property
    def ingress_backends(self) -> tuple[IngressBackend, ...]:
        return self._of(IngressBackend)

    @cached_property
    def mesh_configs(self) -> tuple[MeshConfig, ...]:
        """meshcp's MeshConfig objects declared, by name."""
        return self._of(MeshConfig)

    @cached_property
    def osm_mesh_configs(self) -> tuple[OsmMeshConfig, ...]:
        """OSM's MeshConfig objects declared, by namespace and name."""
        return self._of(OsmMeshConfig)

    @cached_property
    def mesh_config(self) -> MeshConfig:
        """The settings the mesh runs with: meshcp's MeshConfig (the first by name if there
        are several), each setting it leaves unset taken from OSM's MeshConfig, else the
        defaults (`osm_meshconfig.effective`); the mesh's name is the controller's
        `mesh_name` when it has one."""
        config = effective(self.mesh_configs, self.osm_mesh_configs)
        if self.mesh_name is not None and config.mesh_name != self.mesh_name:
            config = replace(config, mesh_name=self.mesh_name)
        return config

    @cached_property
    def meshed_namespaces(self) -> frozenset[str]:
        """Namespaces labelled `meshcp.dev/monitored-by: <mesh name>` (or, without that
        label, OSM's `openservicemesh.io/monitored-by: <mesh name>`)."""
        mesh = self.mesh_config.mesh_name
        return frozenset(
            ns.meta.name for ns in self.namespaces if value_of(ns.meta.labels, MESH_LABEL) == mesh
        )

    def permissive(self, namespace: str) -> bool:
        """Mesh-wide permissive mode, overridden by the namespace annotation."""
        for ns in self.namespaces:
            if ns.meta.name == namespace:
                value = ns.meta.annotations.get(PERMISSIVE_ANNOTATION)
                if value in ("true", "false"):
                    return value == "true"
        return self.mesh_config.permissive

    @cached_property
    def service_index(self) -> Mapping[tuple[str, str], Service]:
        return {(s.meta.namespace, s.meta.name): s for s in self.services}


def _namespace_and_name(obj: MeshObject) -> tuple[str, str]:
    ref = obj.ref
    return ref.namespace, ref.name


#: Each index of `MeshState` and the kinds it is computed from: what a state made by
#: `with_changes` may take over from its parent when no object of those kinds changed.
_INDEX_KINDS: dict[str, frozenset[str]] = {
    "namespaces": frozenset({"Namespace"}),
    "services": frozenset({"Service"}),
    "pods": frozenset({"Pod"}),
    "endpoint_slices": frozenset({"EndpointSlice"}),
    "service_accounts": frozenset({"ServiceAccount"}),
    "traffic_targets": frozenset({"TrafficTarget"}),
    "http_route_groups": frozenset({"HTTPRouteGroup"}),
    "tcp_routes": frozenset({"TCPRoute"}),
    "udp_routes": frozenset({"UDPRoute"}),
    "traffic_splits": frozenset({"TrafficSplit"}),
    "retries": frozenset({"Retry"}),
    "upstream_traffic_settings": frozenset({"UpstreamTrafficSetting"}),
    "egresses": frozenset({"Egress"}),
    "ingress_backends": frozenset({"IngressBackend"}),
    "mesh_configs": frozenset({"MeshConfig"}),
    "osm_mesh_configs": frozenset({"MeshConfig"}),
    "mesh_config": frozenset({"MeshConfig"}),
    "meshed_namespaces": frozenset({"Namespace", "MeshConfig"}),
    "service_index": frozenset({"Service"}),
}
