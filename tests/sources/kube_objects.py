"""Kubernetes objects for the source's tests, and where they sit in the API server emulator
(`tests.sources.kube_fixtures.Emulator`): one valid manifest of every watched kind with a
change of each, builders of namespaces, pods and services, and their API paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import yaml

from meshcp.sources.kubernetes import RESOURCES
from meshcp.sources.kubernetes_watch import Resource
from tests.sources.kube_fixtures import NAMESPACES, Emulator

LABEL = {"meshcp.dev/monitored-by": "meshcp"}
#: The resource of each kind; for MeshConfig, meshcp's (OSM's is `OSM_MESH_CONFIG`).
BY_KIND = {resource.kind: resource for resource in reversed(RESOURCES)}
OSM_MESH_CONFIG = next(r for r in RESOURCES if r.group == "config.openservicemesh.io")
LABEL_KEY = "meshcp.dev/monitored-by"


def key(resource: Resource) -> str:
    if resource.kind == "Namespace":
        return NAMESPACES
    return f"{resource.api_version}/{resource.plural}"


def url_of(resource: Resource, namespace: str = "", name: str = "") -> str:
    prefix = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
    path = prefix + (f"/namespaces/{namespace}" if namespace and resource.namespaced else "")
    return f"{path}/{resource.plural}" + (f"/{name}" if name else "")


def namespace(name: str, *, labelled: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": LABEL if labelled else {}},
    }


def pod(name: str, ns: str = "shop", ip: str = "10.0.0.1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "web"}]},
        "status": {"podIP": ip},
    }


def service(name: str, ns: str = "shop", port: Any = 80) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": port}]},
    }


#: One valid manifest of every watched kind (in the mesh namespace "shop").
SAMPLES: dict[str, dict[str, Any]] = {
    "Namespace": namespace("shop"),
    "Service": service("web"),
    "Pod": pod("web-0"),
    "ServiceAccount": {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "web", "namespace": "shop"},
    },
    "EndpointSlice": {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"]}],
        "ports": [{"name": "http", "port": 80}],
    },
    "TrafficTarget": yaml.safe_load(
        """
        apiVersion: access.smi-spec.io/v1alpha3
        kind: TrafficTarget
        metadata: {name: web, namespace: shop}
        spec:
          destination: {kind: ServiceAccount, name: web, namespace: shop}
          rules: [{kind: HTTPRouteGroup, name: routes}]
          sources: [{kind: ServiceAccount, name: client, namespace: shop}]
        """
    ),
    "HTTPRouteGroup": {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "HTTPRouteGroup",
        "metadata": {"name": "routes", "namespace": "shop"},
        "spec": {"matches": [{"name": "all", "pathRegex": "/", "methods": ["*"]}]},
    },
    "TCPRoute": {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "TCPRoute",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"matches": {"ports": [5432]}},
    },
    "UDPRoute": {
        "apiVersion": "specs.smi-spec.io/v1alpha4",
        "kind": "UDPRoute",
        "metadata": {"name": "dns", "namespace": "shop"},
        "spec": {"matches": {"ports": [53]}},
    },
    "TrafficSplit": {
        "apiVersion": "split.smi-spec.io/v1alpha4",
        "kind": "TrafficSplit",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"service": "web", "backends": [{"service": "web-v1", "weight": 1}]},
    },
    "Retry": yaml.safe_load(
        """
        apiVersion: policy.openservicemesh.io/v1alpha1
        kind: Retry
        metadata: {name: retry, namespace: shop}
        spec:
          source: {kind: ServiceAccount, name: client, namespace: shop}
          destinations: [{kind: Service, name: web, namespace: shop}]
          retryPolicy: {retryOn: 5xx, perTryTimeout: 1s, numRetries: 5, retryBackoffBaseInterval: 1s}
        """
    ),
    "UpstreamTrafficSetting": yaml.safe_load(
        """
        apiVersion: policy.openservicemesh.io/v1alpha1
        kind: UpstreamTrafficSetting
        metadata: {name: web, namespace: shop}
        spec:
          host: web.shop.svc.cluster.local
          connectionSettings: {tcp: {maxConnections: 100}}
        """
    ),
    "MeshConfig": {
        "apiVersion": "config.meshcp.dev/v1alpha1",
        "kind": "MeshConfig",
        "metadata": {"name": "meshcp"},
        "spec": {"permissive": False},
    },
}
#: A change of each sample that changes its model object.
CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "Namespace": lambda m: m["metadata"]["labels"].update(team="a"),
    "Service": lambda m: m["spec"]["ports"][0].update(port=8080),
    "Pod": lambda m: m["status"].update(podIP="10.0.0.9"),
    "ServiceAccount": lambda m: m["metadata"].update(labels={"team": "a"}),
    "EndpointSlice": lambda m: m["endpoints"][0].update(addresses=["10.0.0.9"]),
    "TrafficTarget": lambda m: m["spec"]["sources"][0].update(name="other"),
    "HTTPRouteGroup": lambda m: m["spec"]["matches"][0].update(pathRegex="/api"),
    "TCPRoute": lambda m: m["spec"]["matches"].update(ports=[5433]),
    "UDPRoute": lambda m: m["spec"]["matches"].update(ports=[54]),
    "TrafficSplit": lambda m: m["spec"]["backends"][0].update(weight=2),
    "Retry": lambda m: m["spec"]["retryPolicy"].update(numRetries=2),
    "UpstreamTrafficSetting": lambda m: m["spec"]["connectionSettings"]["tcp"].update(maxConnections=1),
    "MeshConfig": lambda m: m["spec"].update(permissive=True),
}


def stored(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a real API server keeps: list items and watch objects without kind/apiVersion
    (lists drop them; keeping them out also shows the source does not need them)."""
    return {k: v for k, v in manifest.items() if k not in ("kind", "apiVersion")}


def seed(k: Emulator, *manifests: dict[str, Any]) -> None:
    for manifest in manifests:
        resource = BY_KIND[manifest["kind"]]
        if manifest["apiVersion"].startswith(OSM_MESH_CONFIG.group + "/"):
            resource = OSM_MESH_CONFIG
        meta = manifest["metadata"]
        k.objects[key(resource), meta.get("namespace") if resource.namespaced else None, meta["name"]] = (
            stored(manifest)
        )
