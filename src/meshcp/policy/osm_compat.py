"""What the controller reports about OSM's MeshConfig and OSM's names (pure).

OSM's MeshConfig and labels take effect where the model reads them (`MeshState.mesh_config`,
`MeshState.meshed_namespaces`, `membership.is_meshed`); this module says what did not:
the OSM MeshConfig fields meshcp does not support, the settings meshcp's own MeshConfig
overrides, and the objects whose meshcp and OSM names disagree. Each is a problem of the
round, so it is logged once while it lasts, counted, and posted as an Event.
"""

from __future__ import annotations

from meshcp.model.meshconfig import MESH_LABEL
from meshcp.model.osm_meshconfig import problems as mesh_config_problems
from meshcp.model.osm_names import conflicts
from meshcp.model.read_meshconfig import MESH_CONFIG_FIELDS
from meshcp.model.state import MeshState
from meshcp.policy.membership import INJECTION_ANNOTATION
from meshcp.policy.types import Report


def _meshcp_fields() -> dict[str, str]:
    """MeshConfig attribute → meshcp's field name (sections by their subfields)."""
    names = {attribute: key for key, (attribute, _) in MESH_CONFIG_FIELDS.items()}
    names["sidecar_requests"] = names["sidecar_limits"] = "sidecarResources"
    names["per_route_stats"] = "observability.enablePerRouteStats"
    return names


MESHCP_FIELDS = _meshcp_fields()


def report_osm(state: MeshState, report: Report) -> None:
    """Report OSM's MeshConfig (unsupported fields, overridden settings, extra objects) and
    every namespace or pod of the mesh whose meshcp and OSM names disagree."""
    for ref, reason in mesh_config_problems(state.mesh_configs, state.osm_mesh_configs, MESHCP_FIELDS):
        report(ref, reason)
    for namespace in state.namespaces:
        found = conflicts(namespace.meta.labels, (MESH_LABEL,))
        if namespace.meta.name in state.meshed_namespaces or found:
            found += conflicts(namespace.meta.annotations, (INJECTION_ANNOTATION,))
        for reason in found:
            report(namespace.ref, reason)
    meshed = state.meshed_namespaces
    for pod in state.pods:
        if pod.meta.namespace in meshed:
            for reason in conflicts(pod.meta.annotations, (INJECTION_ANNOTATION,)):
                report(pod.ref, reason)
