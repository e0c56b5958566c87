"""Synthetic meshes as a directory of manifests, the way `meshcp serve --source DIR` reads them.

S services spread over N meshed namespaces (labelled `meshcp.dev/monitored-by`); each service
has its own ServiceAccount, one HTTP port (8080) and P running pods (podIP, Ready condition,
the injector's `meshcp.dev/proxy-uuid` label); endpoints come from the pods, as for a
Service with a selector. SMI mode: a TrafficTarget per service allows K client identities (the
next K services) the two matches of its namespace's HTTPRouteGroup; one TrafficSplit per
namespace sends its first service's traffic 50/50 to the next two services of the namespace.
Permissive mode: the same mesh with `permissive: true` and no TrafficTargets.

One file per service (`<ns>/<svc>.yaml`: account, service, pods, target), so a change
rewrites one small file. Files are replaced atomically (written beside the tree, then
renamed into it) so the watcher never reads half a file.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PORT = 8080
ROUTES = "routes"
TRUST_DOMAIN = "cluster.local"
MESH_LABEL = "meshcp.dev/monitored-by"
PROXY_UUID_LABEL = "meshcp.dev/proxy-uuid"


@dataclass(frozen=True)
class Shape:
    services: int
    namespaces: int
    pods: int  # per service
    sources: int  # allowed client identities per service (SMI graph fan-out)
    permissive: bool
    debounce_ms: int = 100
    debounce_max_ms: int = 1000
    #: MeshConfig `pruneUnreachableUpstreams`: each proxy gets only what it may reach (on by
    #: default, as in meshcp; written out explicitly either way).
    prune: bool = True

    @property
    def proxies(self) -> int:
        return self.services * self.pods


@dataclass(frozen=True)
class ProxyRef:
    """One pod's sidecar as it identifies itself over ADS (see sidecar/bootstrap.py)."""

    node_id: str  # <proxy-uuid>.sidecar.<sa>.<ns>.<trust-domain>
    cluster: str  # <ns>/<sa>
    service: int


def namespace(shape: Shape, index: int) -> str:
    return f"ns-{index % shape.namespaces:03d}"


def service(shape: Shape, index: int) -> str:
    return f"svc-{index:05d}"


def pod_name(shape: Shape, index: int, replica: int) -> str:
    return f"{service(shape, index)}-{replica}"


def pod_uuid(shape: Shape, index: int, replica: int) -> str:
    return str(
        uuid.uuid5(
            uuid.NAMESPACE_URL, f"mesh-scale:{namespace(shape, index)}/{pod_name(shape, index, replica)}"
        )
    )


def pod_ip(shape: Shape, index: int, replica: int, generation: int = 0) -> str:
    n = index * shape.pods + replica
    if n >= 65536:
        raise ValueError("at most 65,536 pods")
    return f"10.{128 + generation}.{n // 256}.{n % 256}"


def cluster_ip(index: int) -> str:
    return f"10.96.{index // 256}.{index % 256}"


def proxies(shape: Shape) -> list[ProxyRef]:
    out = []
    for i in range(shape.services):
        ns, sa = namespace(shape, i), service(shape, i)
        for r in range(shape.pods):
            out.append(ProxyRef(f"{pod_uuid(shape, i, r)}.sidecar.{sa}.{ns}.{TRUST_DOMAIN}", f"{ns}/{sa}", i))
    return out


def split_apexes(shape: Shape) -> list[int]:
    """The first service of each namespace that has two more services to split to."""
    return [
        a for a in range(min(shape.namespaces, shape.services)) if a + 2 * shape.namespaces < shape.services
    ]


def split_backends(shape: Shape, apex: int) -> tuple[int, int]:
    return apex + shape.namespaces, apex + 2 * shape.namespaces


# --- manifests ------------------------------------------------------------------------------


def _meta(name: str, ns: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    if labels:
        meta["labels"] = labels
    return meta


def mesh_config(shape: Shape) -> dict[str, Any]:
    return {
        "apiVersion": "config.meshcp.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": _meta("meshcp"),
        "spec": {
            "meshName": "meshcp",
            "trustDomain": TRUST_DOMAIN,
            "permissive": shape.permissive,
            "egressPassthrough": False,
            "pruneUnreachableUpstreams": shape.prune,
            "debounceWindow": f"{shape.debounce_ms}ms",
            "debounceMax": f"{shape.debounce_max_ms}ms",
        },
    }


def route_group(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "HTTPRouteGroup",
        "metadata": _meta(ROUTES, ns),
        "spec": {
            "matches": [
                {"name": "read", "pathRegex": "/api/", "methods": ["GET"]},
                {"name": "write", "pathRegex": "/api/", "methods": ["POST", "PUT"]},
            ]
        },
    }


def traffic_target(shape: Shape, index: int, sources: list[int], name: str = "") -> dict[str, Any]:
    ns, svc = namespace(shape, index), service(shape, index)
    return {
        "apiVersion": "access.smi-spec.io/v1alpha3",
        "kind": "TrafficTarget",
        "metadata": _meta(name or svc, ns),
        "spec": {
            "destination": {"kind": "ServiceAccount", "name": svc, "namespace": ns},
            "rules": [{"kind": "HTTPRouteGroup", "name": ROUTES, "matches": ["read", "write"]}],
            "sources": [
                {"kind": "ServiceAccount", "name": service(shape, s), "namespace": namespace(shape, s)}
                for s in sources
            ],
        },
    }


def default_sources(shape: Shape, index: int) -> list[int]:
    count = min(shape.sources, shape.services - 1)
    return [(index + k) % shape.services for k in range(1, count + 1)]


def service_documents(shape: Shape, index: int, moved: int = -1) -> list[dict[str, Any]]:
    """Account, Service, pods (pod `moved` with a new IP) and, in SMI mode, its TrafficTarget."""
    ns, svc = namespace(shape, index), service(shape, index)
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(svc, ns)},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(svc, ns, {"app": svc}),
            "spec": {
                "clusterIP": cluster_ip(index),
                "selector": {"app": svc},
                "ports": [{"name": "http", "port": PORT, "targetPort": PORT}],
            },
        },
    ]
    for r in range(shape.pods):
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": _meta(
                    pod_name(shape, index, r), ns, {"app": svc, PROXY_UUID_LABEL: pod_uuid(shape, index, r)}
                ),
                "spec": {
                    "serviceAccountName": svc,
                    "containers": [
                        {
                            "name": "app",
                            "image": "example/app:1",
                            "ports": [{"name": "http", "containerPort": PORT}],
                        }
                    ],
                },
                "status": {
                    "podIP": pod_ip(shape, index, r, 1 if r == moved else 0),
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
    if not shape.permissive:
        docs.append(traffic_target(shape, index, default_sources(shape, index)))
    return docs


def traffic_split(shape: Shape, apex: int, weights: tuple[int, int]) -> dict[str, Any]:
    ns = namespace(shape, apex)
    first, second = split_backends(shape, apex)
    return {
        "apiVersion": "split.smi-spec.io/v1alpha4",
        "kind": "TrafficSplit",
        "metadata": _meta(f"split-{service(shape, apex)}", ns),
        "spec": {
            "service": service(shape, apex),
            "backends": [
                {"service": service(shape, first), "weight": weights[0]},
                {"service": service(shape, second), "weight": weights[1]},
            ],
        },
    }


# --- files ------------------------------------------------------------------------------------


def write_documents(root: Path, relative: str, documents: list[dict[str, Any]]) -> None:
    """Replace `root/relative` atomically (the temporary file lives outside the watched tree)."""
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = root.parent / f".staging-{os.getpid()}-{target.name}"
    staging.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    os.replace(staging, target)


def service_file(shape: Shape, index: int) -> str:
    return f"{namespace(shape, index)}/{service(shape, index)}.yaml"


def split_file(shape: Shape, apex: int) -> str:
    return f"{namespace(shape, apex)}/split.yaml"


def write_mesh(root: Path, shape: Shape) -> int:
    """The whole mesh under `root` (created); returns the number of objects written."""
    count = 0
    write_documents(root, "meshconfig.yaml", [mesh_config(shape)])
    namespaces = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": _meta(f"ns-{n:03d}", labels={MESH_LABEL: "meshcp"}),
        }
        for n in range(shape.namespaces)
    ]
    write_documents(root, "namespaces.yaml", namespaces)
    count += 1 + len(namespaces)
    if not shape.permissive:
        for n in range(shape.namespaces):
            write_documents(root, f"ns-{n:03d}/routes.yaml", [route_group(f"ns-{n:03d}")])
            count += 1
    for i in range(shape.services):
        documents = service_documents(shape, i)
        write_documents(root, service_file(shape, i), documents)
        count += len(documents)
    for apex in split_apexes(shape):
        write_documents(root, split_file(shape, apex), [traffic_split(shape, apex, (50, 50))])
        count += 1
    return count
