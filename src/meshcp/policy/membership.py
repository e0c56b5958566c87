"""Which pods are in the mesh, and the UUID by which a connecting proxy names its pod.

The policy builder, the injector and `meshcp bootstrap` all decide these; one definition
keeps them agreeing on which pods get a sidecar and which proxy is which pod.
"""

from __future__ import annotations

import uuid

from meshcp.model.core import Pod
from meshcp.model.osm_names import value_of

INJECTION_ANNOTATION = "meshcp.dev/sidecar-injection"
PROXY_UUID_LABEL = "meshcp.dev/proxy-uuid"


def proxy_uuid(pod: Pod) -> str:
    """The pod's proxy UUID: the injector's label, else one derived from the pod's name
    (so `meshcp bootstrap` and the controller agree without a label)."""
    label = pod.meta.labels.get(PROXY_UUID_LABEL)
    if label:
        return label
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"meshcp:{pod.meta.namespace}/{pod.meta.name}"))


def is_meshed(pod: Pod, meshed_namespaces: frozenset[str]) -> bool:
    """In a meshed namespace, on the pod network, and not annotated
    `meshcp.dev/sidecar-injection: disabled` (or OSM's `openservicemesh.io/sidecar-injection`
    when meshcp's is absent)."""
    return (
        pod.meta.namespace in meshed_namespaces
        and not pod.host_network
        and value_of(pod.meta.annotations, INJECTION_ANNOTATION) != "disabled"
    )
