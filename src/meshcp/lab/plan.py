"""From manifests to what the lab must run (pure: no processes, no files, no network).

The plan gives every pod an address and every Service a ClusterIP (kept across `lab
apply` through the `Allocation`), injects meshed pods with the webhook's own mutation,
turns containers into host processes, and renders what the rest of the lab needs: the
manifests `meshcp serve` watches (pods with their addresses and Ready condition, as the
API server would report them), each pod's /etc/hosts, and the node's kube-proxy rules.
Each of those jobs is a module of its own; this one puts them in order. It also renders
Prometheus's configuration and its sidecar targets (`prometheus_config`,
`prometheus_targets`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import yaml

from meshcp.injector.decision import NamespaceInfo, service_account
from meshcp.lab import kubelet, webhook
from meshcp.lab.addresses import Allocation, allocate_pods, allocate_services, with_cluster_ip
from meshcp.lab.endpoints import PlannedService, services
from meshcp.lab.hosts import hosts_file
from meshcp.lab.kube_proxy import service_rules
from meshcp.lab.manifests import Manifest
from meshcp.lab.pods import PlannedPod, PodProblem, Proxyless, Sidecar
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.osm_meshconfig import OsmMeshConfig, effective
from meshcp.model.parse import InvalidObject, parse_object
from meshcp.model.state import MeshObject
from meshcp.sidecar import ports

#: Short, so that traffic in the lab shows in Prometheus within seconds (a cluster's is
#: usually 15-60 s); the timeout must not exceed it.
SCRAPE_INTERVAL = "2s"
SCRAPE_TIMEOUT = "2s"
CONTROLLER_JOB = "meshcp-controller"
SIDECAR_JOB = "envoy-sidecars"
#: Where Envoy's Prometheus listener (`sidecar.ports.PROMETHEUS_PORT`) serves its stats.
SIDECAR_METRICS_PATH = "/stats/prometheus"


@dataclass(frozen=True)
class LabPlan:
    pods: Mapping[str, PlannedPod]
    services: tuple[PlannedService, ...]
    mesh: MeshConfig
    #: Objects for `meshcp serve --source` (everything but Deployments, with addresses).
    source: tuple[Mapping[str, Any], ...]
    hosts: Mapping[str, str]
    #: The node namespace's `nat` table (kube-proxy's job): an `iptables-restore` script.
    service_rules: str
    #: The same DNAT for the `nat` table of each unmeshed pod (OUTPUT only). Done in the
    #: pod, a pod reaching itself through its Service is local traffic; done only in the
    #: node, that packet would come back from the pod's own address and be dropped as
    #: martian (kube-proxy masquerades it, on a bridge with br_netfilter).
    pod_service_rules: str
    problems: tuple[str, ...]
    allocation: Allocation


@dataclass(frozen=True)
class PlanContext:
    """What the plan needs from its surroundings, so that it stays a pure function."""

    #: Directory of a pod's bootstrap volume.
    pod_dir: Callable[[str, str], str]
    #: PATH of every container (the host's, with the lab's bin directory first).
    path: str
    new_uuid: Callable[[], str]


def plan(manifests: Sequence[Manifest], allocation: Allocation, context: PlanContext) -> LabPlan:
    problems: list[str] = []
    objects = _parse_all(manifests, problems)
    mesh = _mesh_config(objects)
    namespaces = webhook.namespaces(objects)
    pod_manifests = [m for m in manifests if m.kind == "Pod"]
    service_manifests = [m for m in manifests if m.kind == "Service"]

    service_ips = allocate_services(service_manifests, allocation, problems)
    pod_ips, interfaces = allocate_pods(pod_manifests, allocation, problems)
    proxy_uuids: dict[str, str] = {}

    pods: dict[str, PlannedPod] = {}
    for manifest in pod_manifests:
        key = f"{manifest.namespace}/{manifest.name}"
        if key not in pod_ips:
            continue
        try:
            pod = _plan_pod(
                manifest,
                ip=pod_ips[key],
                interface=interfaces[key],
                namespaces=namespaces,
                mesh=mesh,
                proxy_uuid=allocation.proxy_uuids.get(key) or context.new_uuid(),
                context=context,
            )
        except PodProblem as problem:
            problems.append(f"{manifest.display}: {problem}")
            continue
        pods[key] = pod
        if pod.sidecar is not None:
            proxy_uuids[key] = pod.sidecar.proxy.proxy_uuid

    planned_services = services(service_manifests, service_ips, pods, problems)
    source: list[Mapping[str, Any]] = []
    for manifest in manifests:
        if manifest.kind == "Pod":
            key = f"{manifest.namespace}/{manifest.name}"
            if key in pods:
                source.append(pods[key].manifest)
        elif manifest.kind == "Service":
            source.append(
                with_cluster_ip(manifest.body, service_ips.get(f"{manifest.namespace}/{manifest.name}"))
            )
        else:
            source.append(manifest.body)
    hosts = {key: hosts_file(pod, planned_services) for key, pod in pods.items()}
    return LabPlan(
        pods=pods,
        services=tuple(planned_services),
        mesh=mesh,
        source=tuple(source),
        hosts=hosts,
        service_rules=service_rules(planned_services, ("PREROUTING", "OUTPUT")),
        pod_service_rules=service_rules(planned_services, ("OUTPUT",)),
        problems=tuple(problems),
        allocation=Allocation(
            pod_ips={key: pod_ips[key] for key in pods},
            service_ips=service_ips,
            proxy_uuids=proxy_uuids,
            interfaces={key: interfaces[key] for key in pods},
        ),
    )


def mesh_config(manifests: Sequence[Manifest]) -> MeshConfig:
    """The MeshConfig the manifests declare (the first by name, merged with OSM's), else
    the defaults."""
    return _mesh_config(_parse_all(manifests, []))


def _parse_all(manifests: Sequence[Manifest], problems: list[str]) -> list[MeshObject]:
    """Every object but pods (checked by injection) and services (parsed with their
    ClusterIP, see `endpoints.services`), with each invalid one reported where it was written."""
    out = []
    for manifest in manifests:
        if manifest.kind in ("Pod", "Service"):
            continue
        try:
            out.append(parse_object(manifest.body))
        except InvalidObject as error:
            problems.append(f"{manifest.display}: {error.reason}")
    return out


def _mesh_config(objects: Sequence[MeshObject]) -> MeshConfig:
    """meshcp's MeshConfig merged with OSM's, as the controller merges them."""
    own = sorted((o for o in objects if isinstance(o, MeshConfig)), key=lambda config: config.meta.name)
    osm = sorted(
        (o for o in objects if isinstance(o, OsmMeshConfig)),
        key=lambda config: (config.meta.namespace, config.meta.name),
    )
    return effective(tuple(own), tuple(osm))


def _plan_pod(
    manifest: Manifest,
    *,
    ip: str,
    interface: int,
    namespaces: Mapping[str, NamespaceInfo],
    mesh: MeshConfig,
    proxy_uuid: str,
    context: PlanContext,
) -> PlannedPod:
    """The pod injected as the webhook would, its containers as the kubelet would run them,
    and reported as the API server would once it runs."""
    namespace, name = manifest.namespace, manifest.name
    if not name:
        raise PodProblem("metadata.name is required")
    if namespace not in namespaces:
        raise PodProblem(f"namespace {namespace} is not declared (add a Namespace manifest)")
    body: dict[str, Any] = copy.deepcopy(dict(manifest.body))
    body.setdefault("metadata", {})["namespace"] = namespace
    body.pop("status", None)
    body, proxy = webhook.admit(
        body,
        namespaces[namespace],
        mesh,
        proxy_uuid=proxy_uuid,
        bootstrap_dir=context.pod_dir(namespace, name),
    )
    spec = body["spec"]
    account = service_account(spec)
    spec["serviceAccountName"] = account
    container = partial(
        kubelet.container,
        pod=body,
        pod_env=kubelet.pod_env(name=name, namespace=namespace, ip=ip, service_account=account),
        directory=manifest.directory,
        path=context.path,
    )
    init = tuple(container(c) for c in spec.get("initContainers", ()))
    containers = tuple(container(c) for c in spec["containers"])
    rendered = {
        **body,
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    fingerprint = hashlib.sha256(
        json.dumps(
            [ip, [c.as_json() for c in init + containers], body.get("metadata", {}).get("labels")],
            sort_keys=True,
        ).encode()
    ).hexdigest()
    readiness = kubelet.readiness(manifest.body)
    sidecar = proxy if isinstance(proxy, Sidecar) else None
    proxyless = proxy if isinstance(proxy, Proxyless) else None
    return PlannedPod(
        namespace,
        name,
        ip,
        interface,
        account,
        init,
        containers,
        rendered,
        sidecar,
        fingerprint,
        readiness,
        proxyless,
    )


def prometheus_config(targets_file: str, controller: str) -> str:
    """Prometheus's configuration: the controller's `/metrics` at `controller` (host:port),
    and every sidecar listed in `targets_file` (file_sd, JSON). Prometheus re-reads that
    file when it changes, so `lab apply` rewrites only it; this configuration never changes."""
    config = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_TIMEOUT,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": [
            {
                "job_name": CONTROLLER_JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [controller]}],
            },
            {
                "job_name": SIDECAR_JOB,
                "metrics_path": SIDECAR_METRICS_PATH,
                "file_sd_configs": [{"files": [targets_file]}],
            },
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def prometheus_targets(pods: Mapping[str, PlannedPod]) -> str:
    """The file_sd targets (JSON): each meshed pod's Prometheus listener, labelled with the
    pod's namespace and name, as the Kubernetes scrape configuration in deploy/prometheus
    labels them."""
    groups = [
        {
            "targets": [f"{pod.ip}:{ports.PROMETHEUS_PORT}"],
            "labels": {"namespace": pod.namespace, "pod": pod.name},
        }
        for _, pod in sorted(pods.items())
        if pod.sidecar is not None
    ]
    return json.dumps(groups, indent=2) + "\n"
