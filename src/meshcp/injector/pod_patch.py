"""The JSONPatch that injects a pod: the sidecar and init containers, the bootstrap volume, the
proxy UUID label, the probes pointed at the sidecar, and Prometheus' scrape annotations.

The init container installs the iptables redirection before any container starts; the
sidecar runs Envoy as the proxy UID (whose traffic the rules let through) from the bootstrap
Secret mounted read-only. The proxy UUID label ties pod, sidecar and Secret together.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from meshcp.identity import ProxyIdentity
from meshcp.injector.decision import Candidate
from meshcp.injector.patch_ops import Patch, add_entries, append
from meshcp.injector.probe_rewrite import rewrite_probes
from meshcp.injector.template import (
    BOOTSTRAP_FILE,
    BOOTSTRAP_VOLUME,
    GRPC_BOOTSTRAP_ENV,
    INIT_CONTAINER,
    PROXYLESS_DIR,
    PROXYLESS_VOLUME,
    SIDECAR_CONTAINER,
    SidecarTemplate,
    secret_name,
)
from meshcp.model.meshconfig import MeshConfig
from meshcp.policy.membership import PROXY_UUID_LABEL
from meshcp.sidecar import iptables, ports

#: JSON list of the probes the injector rewrote; the sidecar's bootstrap serves them.
ORIGINAL_PROBES_ANNOTATION = "meshcp.dev/original-probes"
#: Secret volume files are read by Envoy (UID 1500); only its container mounts the volume.
SECRET_MODE = 0o444
#: The annotations Prometheus' conventional pod discovery (`prometheus.io/scrape`, `/port`,
#: `/path`) reads; an application that sets any of them keeps its own.
PROMETHEUS_ANNOTATION_PREFIX = "prometheus.io/"


def scrape_annotations() -> dict[str, str]:
    """Where Prometheus finds the sidecar's stats: its Prometheus listener."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ports.PROMETHEUS_PORT),
        "prometheus.io/path": ports.PROMETHEUS_PATH,
    }


def sidecar_patch(
    candidate: Candidate, proxy: ProxyIdentity, template: SidecarTemplate, mesh: MeshConfig
) -> Patch:
    """The JSONPatch adding the sidecar, init container, bootstrap volume and proxy label,
    pointing HTTP/TCP probes at the sidecar's probe listeners, and annotating the pod for
    Prometheus' scrape, unless it already has a `prometheus.io/*` annotation: those name
    the application's own metrics (a pod has one scrape target by these conventions), and
    the application's win; the sidecar is then found by its `meshcp-metrics` port
    (deploy/prometheus/prometheus.yaml)."""
    pod = candidate.creation.pod
    metadata, spec = pod["metadata"], pod["spec"]
    ops: list[dict[str, Any]] = []
    probes = rewrite_probes(spec["containers"])
    ops += probes.operations
    add_entries(ops, metadata, "/metadata", "labels", {PROXY_UUID_LABEL: proxy.proxy_uuid})
    annotations: dict[str, str] = {}
    if probes.annotation:
        annotations[ORIGINAL_PROBES_ANNOTATION] = json.dumps(probes.annotation, separators=(",", ":"))
    own = metadata.get("annotations")
    own_keys = own if isinstance(own, dict) else {}  # anything else is replaced (add_entries)
    if not any(str(key).startswith(PROMETHEUS_ANNOTATION_PREFIX) for key in own_keys):
        annotations.update(scrape_annotations())
    if annotations:  # in one call: a second would replace the map the first created
        add_entries(ops, metadata, "/metadata", "annotations", annotations)
    append(ops, spec, "/spec", "initContainers", _init_container(candidate.redirection, template))
    ops.append(
        {"op": "add", "path": "/spec/containers/-", "value": _sidecar_container(proxy, template, mesh)}
    )
    append(ops, spec, "/spec", "volumes", _bootstrap_volume(proxy))
    return Patch(ops, tuple(probes.warnings))


def proxyless_patch(candidate: Candidate, proxy: ProxyIdentity, *, directory: str = PROXYLESS_DIR) -> Patch:
    """The JSONPatch of a proxyless gRPC pod: no sidecar, no init container, no probe or
    scrape changes; the proxy UUID label (its node id names it), the Secret volume, and in
    every container (init containers too: they may call the mesh) a read-only mount of
    it and `GRPC_XDS_BOOTSTRAP` pointing at its bootstrap. A container that sets
    `GRPC_XDS_BOOTSTRAP` itself keeps its own. `directory`: where the volume is mounted
    (`meshcp lab` has no mount namespaces: each pod's files are in a directory of its own)."""
    pod = candidate.creation.pod
    metadata, spec = pod["metadata"], pod["spec"]
    ops: list[dict[str, Any]] = []
    add_entries(ops, metadata, "/metadata", "labels", {PROXY_UUID_LABEL: proxy.proxy_uuid})
    mount = {"name": PROXYLESS_VOLUME, "mountPath": directory, "readOnly": True}
    env = {"name": GRPC_BOOTSTRAP_ENV, "value": f"{directory}/{BOOTSTRAP_FILE}"}
    for kind in ("initContainers", "containers"):
        for index, container in enumerate(spec.get(kind) or ()):
            path = f"/spec/{kind}/{index}"
            append(ops, container, path, "volumeMounts", mount)
            own = {e.get("name") for e in container.get("env") or () if isinstance(e, dict)}
            if GRPC_BOOTSTRAP_ENV not in own:
                append(ops, container, path, "env", env)
    volume = {
        "name": PROXYLESS_VOLUME,
        "secret": {"secretName": secret_name(proxy), "defaultMode": SECRET_MODE},
    }
    append(ops, spec, "/spec", "volumes", volume)
    return Patch(ops)


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
        "ports": [{"name": "meshcp-metrics", "containerPort": ports.PROMETHEUS_PORT, "protocol": "TCP"}],
        "env": env,
        # MeshConfig's sidecarResources win over the injector's configured defaults.
        "resources": mesh.sidecar_resources() or copy.deepcopy(dict(template.resources or {})),
        "securityContext": {
            "runAsUser": ports.PROXY_UID,
            "runAsGroup": ports.PROXY_UID,
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
