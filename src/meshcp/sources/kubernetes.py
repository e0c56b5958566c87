"""Objects from a Kubernetes API server: the `--source kubernetes` source.

Emits the same events as the file source (`meshcp.sources.events`): an object is parsed with
`parse_object`, so it means the same whichever way it arrived; an invalid one is reported
(`Invalid`) and skipped, and its last good version stays in force.

Scope: only objects in namespaces labelled `<namespaces_label>=<mesh_name>` (or, without
that label, OSM's `openservicemesh.io/monitored-by=<mesh_name>`: `model.osm_names`).
Namespaces are listed and watched whole and their labels read here (a label selector
cannot say "this label or that one"; namespaces are few); every other kind is watched
cluster-wide and filtered by the current set of mesh namespaces, so a namespace that joins
the mesh brings its objects in (Upserts) and one that leaves takes them out (Deletes).
MeshConfigs are always in scope: meshcp's are cluster-scoped, and OSM's lives in OSM's
own namespace (`osm-system`), which is not part of the mesh.

Every change is compared with what was last emitted, so relists (after `410 Gone` or a lost
connection) and repeated watch events emit only real differences.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from meshcp.kube.client import ApiClientFactory
from meshcp.model.meta import ObjectRef
from meshcp.model.osm_names import value_of
from meshcp.model.parse import InvalidObject, parse_object
from meshcp.model.state import MeshObject, Problem
from meshcp.sources.events import Delete, Emit, Invalid, Resolved, Synced, Upsert
from meshcp.sources.kubernetes_watch import ListWatch, Resource, Sleep, WatchObserver, WatchSettings

log = logging.getLogger("meshcp.sources.kubernetes")

#: Every kind the source lists and watches (RBAC: `meshcp.sources.kubernetes_rbac`).
RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", namespaced=False),
    Resource("", "v1", "services", "Service", namespaced=True),
    Resource("", "v1", "pods", "Pod", namespaced=True),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", namespaced=True),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", namespaced=True),
    Resource("access.smi-spec.io", "v1alpha3", "traffictargets", "TrafficTarget", namespaced=True),
    Resource("specs.smi-spec.io", "v1alpha4", "httproutegroups", "HTTPRouteGroup", namespaced=True),
    Resource("specs.smi-spec.io", "v1alpha4", "tcproutes", "TCPRoute", namespaced=True),
    Resource("specs.smi-spec.io", "v1alpha4", "udproutes", "UDPRoute", namespaced=True),
    Resource("split.smi-spec.io", "v1alpha4", "trafficsplits", "TrafficSplit", namespaced=True),
    Resource("policy.openservicemesh.io", "v1alpha1", "retries", "Retry", namespaced=True),
    Resource(
        "policy.openservicemesh.io",
        "v1alpha1",
        "upstreamtrafficsettings",
        "UpstreamTrafficSetting",
        namespaced=True,
    ),
    Resource("policy.openservicemesh.io", "v1alpha1", "egresses", "Egress", namespaced=True),
    Resource("policy.openservicemesh.io", "v1alpha1", "ingressbackends", "IngressBackend", namespaced=True),
    Resource("config.meshcp.dev", "v1alpha1", "meshconfigs", "MeshConfig", namespaced=False),
    # OSM's MeshConfig: same kind, another group (`model.osm_meshconfig`).
    Resource("config.openservicemesh.io", "v1alpha2", "meshconfigs", "MeshConfig", namespaced=True),
)

_NAMESPACE = "Namespace"
#: Kinds in scope wherever they live.
_EVERYWHERE = frozenset({"MeshConfig"})


def _key(resource: Resource) -> str:
    """A resource's own key: two API groups may serve one kind (MeshConfig)."""
    return f"{resource.plural}.{resource.group}"


#: Kind → the keys of the resources that serve it.
_KEYS: dict[str, tuple[str, ...]] = {
    kind: tuple(_key(r) for r in RESOURCES if r.kind == kind) for kind in {r.kind for r in RESOURCES}
}


class KubernetesSource:
    """Lists and watches every kind in `RESOURCES`; emits `Synced(name)` once all have listed.

    `api_client_factory` makes the client (configured for in-cluster or a kubeconfig); the
    source closes it when it stops. An unreachable API server is logged and retried with
    backoff; `Synced` waits until every kind has been listed.
    """

    def __init__(
        self,
        emit: Emit,
        *,
        api_client_factory: ApiClientFactory,
        namespaces_label: str = "meshcp.dev/monitored-by",
        mesh_name: str = "meshcp",
        name: str = "kubernetes",
        settings: WatchSettings | None = None,
        sleep: Sleep = asyncio.sleep,
        observer: WatchObserver | None = None,
    ) -> None:
        """`settings`: paging, timeouts and backoff of the watches. `sleep`: how the
        backoff waits (replaceable so a test can hold a reconnect at a known point).
        `observer`: counts watch events and restarts (the controller's metrics)."""
        self.name = name
        self._emit = emit
        self._factory = api_client_factory
        self._label = namespaces_label
        self._mesh = mesh_name
        self._settings = settings or WatchSettings()
        self._sleep = sleep
        self._observer = observer
        # What the API server has, as last seen: per resource (`_key`), the parsed object
        # or its problem.
        self._seen: dict[str, dict[ObjectRef, MeshObject | Problem]] = {}
        self._labelled: set[str] = set()  # namespaces labelled for this mesh
        self._mesh_namespaces: set[str] = set()  # ... as last published
        # What has been emitted.
        self._objects: dict[ObjectRef, MeshObject] = {}
        self._problems: dict[ObjectRef, Problem] = {}
        self._listed: set[str] = set()
        self._synced = False

    async def run(self) -> None:
        """Follow the API server until cancelled."""
        api_client = await self._factory()
        try:
            async with asyncio.TaskGroup() as group:
                for resource in RESOURCES:
                    watch = ListWatch(
                        api_client,
                        resource,
                        self,
                        settings=self._settings,
                        sleep=self._sleep,
                        observer=self._observer,
                    )
                    group.create_task(watch.run(), name=f"{self.name}:{resource.plural}")
        finally:
            await api_client.close()

    # --- Consumer (called by the watch loops) ----------------------------------------------

    def listed(self, resource: Resource, items: list[Mapping[str, Any]]) -> None:
        seen = self._seen.setdefault(_key(resource), {})
        before = set(seen)
        seen.clear()
        labelled: set[str] = set()
        for item in items:
            ref, value = self._parse(resource, item)
            seen[ref] = value
            if resource.kind == _NAMESPACE and self._labelled_for_mesh(item):
                labelled.add(ref.name)
        touched = before | seen.keys()
        if resource.kind == _NAMESPACE:
            self._labelled = labelled
            touched |= self._namespaces_changed()
        self._publish(touched)
        self._listed.add(_key(resource))
        if not self._synced and len(self._listed) == len(RESOURCES):
            self._synced = True
            log.info("listed every kind from the Kubernetes API")
            self._emit(Synced(self.name))

    def changed(self, resource: Resource, event_type: str, obj: Mapping[str, Any]) -> None:
        seen = self._seen.setdefault(_key(resource), {})
        ref, value = self._parse(resource, obj)
        if event_type == "DELETED":
            seen.pop(ref, None)
        else:
            seen[ref] = value
        touched = {ref}
        if resource.kind == _NAMESPACE:
            if event_type != "DELETED" and self._labelled_for_mesh(obj):
                self._labelled.add(ref.name)
            else:
                self._labelled.discard(ref.name)
            touched |= self._namespaces_changed()
        self._publish(touched)

    # --- scope and publishing --------------------------------------------------------------

    def _parse(self, resource: Resource, raw: Mapping[str, Any]) -> tuple[ObjectRef, MeshObject | Problem]:
        # List items carry neither kind nor apiVersion; the resource says what they are.
        manifest = {**raw, "apiVersion": resource.api_version, "kind": resource.kind}
        try:
            obj = parse_object(manifest)
        except InvalidObject as error:
            return error.ref, Problem(error.ref, error.reason)
        return obj.ref, obj

    def _labelled_for_mesh(self, raw: Mapping[str, Any]) -> bool:
        metadata = raw.get("metadata")
        labels = metadata.get("labels") if isinstance(metadata, Mapping) else None
        if not isinstance(labels, Mapping):
            return False
        strings = {key: value for key, value in labels.items() if isinstance(value, str)}
        return value_of(strings, self._label) == self._mesh

    def _namespaces_changed(self) -> set[ObjectRef]:
        """Recompute the mesh namespaces; the refs whose scope changed."""
        current = set(self._labelled)
        flipped = current ^ self._mesh_namespaces
        self._mesh_namespaces = current
        if not flipped:
            return set()
        for namespace in sorted(flipped):
            log.info("namespace %s %s the mesh", namespace, "joined" if namespace in current else "left")
        return {ref for seen in self._seen.values() for ref in seen if ref.namespace in flipped} | {
            ObjectRef(_NAMESPACE, "", namespace) for namespace in flipped
        }

    def _in_scope(self, ref: ObjectRef) -> bool:
        if ref.kind == _NAMESPACE:
            return ref.name in self._mesh_namespaces
        return not ref.namespace or ref.kind in _EVERYWHERE or ref.namespace in self._mesh_namespaces

    def _seen_value(self, ref: ObjectRef) -> MeshObject | Problem | None:
        for key in _KEYS.get(ref.kind, ()):
            value = self._seen.get(key, {}).get(ref)
            if value is not None:
                return value
        return None

    def _publish(self, refs: Iterable[ObjectRef]) -> None:
        for ref in sorted(refs):
            value = self._seen_value(ref) if self._in_scope(ref) else None
            if isinstance(value, Problem):
                if self._problems.get(ref) != value:
                    log.warning("skipping invalid %s: %s", ref, value.reason)
                    self._problems[ref] = value
                    self._emit(Invalid(value))
            elif value is not None:
                if self._objects.get(ref) != value or ref in self._problems:
                    self._objects[ref] = value
                    self._problems.pop(ref, None)
                    self._emit(Upsert(value))
            elif ref in self._objects:
                del self._objects[ref]
                self._problems.pop(ref, None)
                self._emit(Delete(ref))
            elif ref in self._problems:
                del self._problems[ref]
                self._emit(Resolved(ref))
