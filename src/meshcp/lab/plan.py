"""From manifests to what the lab must run (pure: no processes, no files, no network).

The plan gives every pod an address and every Service a ClusterIP (kept across `lab
apply` through the `Allocation`), injects meshed pods with the webhook's own mutation,
turns containers into host processes, and renders what the rest of the lab needs: the
manifests `meshcp serve` watches (pods with their addresses and Ready condition, as the
API server would report them), each pod's /etc/hosts, and the node's kube-proxy rules.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import jsonpatch

from meshcp.identity import ProxyIdentity
from meshcp.injector import mutation
from meshcp.lab import layout
from meshcp.lab.manifests import Manifest
from meshcp.model.core import Namespace, Service
from meshcp.model.meshconfig import MeshConfig
from meshcp.model.parse import InvalidObject, parse_object
from meshcp.model.state import MeshObject

#: Containers of meshed pods find the lab's copy of Envoy first (see `LabPaths.bin`).
PROXY_USER = 1500


@dataclass(frozen=True)
class Allocation:
    """Addresses and proxy UUIDs handed out so far, by `namespace/name`: a pod that stays
    keeps its address (and its sidecar its identity) across `lab apply`."""

    pod_ips: Mapping[str, str] = field(default_factory=dict)
    service_ips: Mapping[str, str] = field(default_factory=dict)
    proxy_uuids: Mapping[str, str] = field(default_factory=dict)
    #: Interface numbers of the node side of each pod's veth pair (`mlab<n>`).
    interfaces: Mapping[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "pod_ips": dict(self.pod_ips),
            "service_ips": dict(self.service_ips),
            "proxy_uuids": dict(self.proxy_uuids),
            "interfaces": dict(self.interfaces),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Allocation:
        return cls(
            dict(data.get("pod_ips", {})),
            dict(data.get("service_ips", {})),
            dict(data.get("proxy_uuids", {})),
            {key: int(value) for key, value in dict(data.get("interfaces", {})).items()},
        )


@dataclass(frozen=True)
class Container:
    """One process of a pod: what runs, as whom, where."""

    name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    uid: int
    gid: int
    cwd: str

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "argv": list(self.argv),
            "env": [list(pair) for pair in self.env],
            "uid": self.uid,
            "gid": self.gid,
            "cwd": self.cwd,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Container:
        return cls(
            data["name"],
            tuple(data["argv"]),
            tuple((str(k), str(v)) for k, v in data["env"]),
            int(data["uid"]),
            int(data["gid"]),
            data["cwd"],
        )


@dataclass(frozen=True)
class Sidecar:
    """What the lab needs to write a meshed pod's bootstrap volume."""

    candidate: mutation.Candidate
    proxy: ProxyIdentity
    template: mutation.SidecarTemplate


@dataclass(frozen=True)
class PlannedPod:
    namespace: str
    name: str
    ip: str
    interface: int
    service_account: str
    init: tuple[Container, ...]
    containers: tuple[Container, ...]
    #: The pod as `meshcp serve` sees it (injected, with status).
    manifest: Mapping[str, Any]
    sidecar: Sidecar | None
    #: Changes when anything the pod runs changes: such a pod is replaced on apply.
    fingerprint: str
    #: The containers' readiness probes as the user wrote them (before injection points
    #: them at the sidecar): ("tcp" | "http", port, path).
    readiness: tuple[tuple[str, int, str], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns(self) -> str:
        return layout.pod_netns(self.namespace, self.name)

    @property
    def node_id(self) -> str:
        return self.sidecar.proxy.name if self.sidecar is not None else ""


@dataclass(frozen=True)
class PlannedService:
    namespace: str
    name: str
    cluster_ip: str
    #: (port, resolved endpoints as (pod IP, target port)) per TCP service port.
    ports: tuple[tuple[int, tuple[tuple[str, int], ...]], ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


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
    namespaces = _namespaces(objects)
    pod_manifests = [m for m in manifests if m.kind == "Pod"]
    service_manifests = [m for m in manifests if m.kind == "Service"]

    service_ips = _allocate_services(service_manifests, allocation, problems)
    pod_ips, interfaces = _allocate_pods(pod_manifests, allocation, problems)
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
        except _PodProblem as problem:
            problems.append(f"{manifest.display}: {problem}")
            continue
        pods[key] = pod
        if pod.sidecar is not None:
            proxy_uuids[key] = pod.sidecar.proxy.proxy_uuid

    services = _services(service_manifests, service_ips, pods, problems)
    source: list[Mapping[str, Any]] = []
    for manifest in manifests:
        if manifest.kind == "Pod":
            key = f"{manifest.namespace}/{manifest.name}"
            if key in pods:
                source.append(pods[key].manifest)
        elif manifest.kind == "Service":
            source.append(
                _with_cluster_ip(manifest.body, service_ips.get(f"{manifest.namespace}/{manifest.name}"))
            )
        else:
            source.append(manifest.body)
    hosts = {key: _hosts(pod, services) for key, pod in pods.items()}
    return LabPlan(
        pods=pods,
        services=tuple(services),
        mesh=mesh,
        source=tuple(source),
        hosts=hosts,
        service_rules=_service_rules(services, ("PREROUTING", "OUTPUT")),
        pod_service_rules=_service_rules(services, ("OUTPUT",)),
        problems=tuple(problems),
        allocation=Allocation(
            pod_ips={key: pod_ips[key] for key in pods},
            service_ips=service_ips,
            proxy_uuids=proxy_uuids,
            interfaces={key: interfaces[key] for key in pods},
        ),
    )


class _PodProblem(Exception):
    pass


# --- mesh-wide objects ------------------------------------------------------------------------


def _parse_all(manifests: Sequence[Manifest], problems: list[str]) -> list[MeshObject]:
    """Every object but pods (checked by injection) and services (parsed with their
    ClusterIP, see `_services`), with each invalid one reported where it was written."""
    out = []
    for manifest in manifests:
        if manifest.kind in ("Pod", "Service"):
            continue
        try:
            out.append(parse_object(manifest.body))
        except InvalidObject as error:
            problems.append(f"{manifest.display}: {error.reason}")
    return out


def mesh_config(manifests: Sequence[Manifest]) -> MeshConfig:
    """The MeshConfig the manifests declare (the first by name), else the defaults."""
    return _mesh_config(_parse_all(manifests, []))


def _mesh_config(objects: Sequence[MeshObject]) -> MeshConfig:
    found = sorted((o for o in objects if isinstance(o, MeshConfig)), key=lambda config: config.meta.name)
    return found[0] if found else MeshConfig()


def _namespaces(objects: Sequence[MeshObject]) -> dict[str, mutation.NamespaceInfo]:
    out = {"default": mutation.NamespaceInfo("default")}
    for obj in objects:
        if isinstance(obj, Namespace):
            meta = obj.meta
            out[meta.name] = mutation.NamespaceInfo(meta.name, dict(meta.labels), dict(meta.annotations))
    return out


# --- addresses -------------------------------------------------------------------------------


def _allocate_services(
    manifests: Sequence[Manifest], allocation: Allocation, problems: list[str]
) -> dict[str, str]:
    """ClusterIPs: the manifest's own when it lies in the service CIDR, else the one the
    service had, else the next free one. Headless services (`None`) get none."""
    taken: set[str] = set()
    wanted: dict[str, str] = {}
    order: list[str] = []
    for manifest in manifests:
        key = f"{manifest.namespace}/{manifest.name}"
        spec = _mapping(manifest.body.get("spec"))
        requested = spec.get("clusterIP")
        if requested == "None":
            continue
        order.append(key)
        if isinstance(requested, str) and requested and _in(requested, layout.SERVICE_CIDR):
            if requested in taken:
                problems.append(
                    f"{manifest.display}: clusterIP {requested} is already taken; another is assigned"
                )
            else:
                wanted[key] = requested
                taken.add(requested)
        elif isinstance(requested, str) and requested:
            problems.append(
                f"{manifest.display}: clusterIP {requested} is outside the lab's service range "
                f"{layout.SERVICE_CIDR}; another is assigned"
            )
    for key in order:
        previous = allocation.service_ips.get(key)
        if key not in wanted and previous and previous not in taken:
            wanted[key] = previous
            taken.add(previous)
    return _fill(order, wanted, taken, layout.FIRST_SERVICE)


def _allocate_pods(
    manifests: Sequence[Manifest], allocation: Allocation, problems: list[str]
) -> tuple[dict[str, str], dict[str, int]]:
    taken: set[str] = {str(layout.GATEWAY)}
    wanted: dict[str, str] = {}
    order: list[str] = []
    for manifest in manifests:
        key = f"{manifest.namespace}/{manifest.name}"
        if key in order:
            problems.append(f"{manifest.display}: a second pod {key}; the first is kept")
            continue
        order.append(key)
        previous = allocation.pod_ips.get(key)
        requested = _mapping(manifest.body.get("status")).get("podIP")
        for candidate in (previous, requested):
            usable = isinstance(candidate, str) and _in(candidate, layout.POD_CIDR) and candidate not in taken
            if usable and IPv4Address(str(candidate)) >= layout.FIRST_POD:
                wanted[key] = str(candidate)
                taken.add(str(candidate))
                break
    ips = _fill(order, wanted, taken, layout.FIRST_POD)
    used = {index for key, index in allocation.interfaces.items() if key in ips}
    interfaces: dict[str, int] = {}
    next_index = 0
    for key in order:
        index = allocation.interfaces.get(key)
        if index is None:
            while next_index in used:
                next_index += 1
            index = next_index
            used.add(index)
        interfaces[key] = index
    return ips, interfaces


def _fill(
    order: Sequence[str], wanted: dict[str, str], taken: set[str], first: IPv4Address
) -> dict[str, str]:
    out: dict[str, str] = {}
    candidate = first
    for key in order:
        if key in wanted:
            out[key] = wanted[key]
            continue
        while str(candidate) in taken:
            candidate += 1
        out[key] = str(candidate)
        taken.add(str(candidate))
    return out


def _in(address: str, network: Any) -> bool:
    try:
        return IPv4Address(address) in network
    except ValueError:
        return False


# --- pods --------------------------------------------------------------------------------------


def _plan_pod(
    manifest: Manifest,
    *,
    ip: str,
    interface: int,
    namespaces: Mapping[str, mutation.NamespaceInfo],
    mesh: MeshConfig,
    proxy_uuid: str,
    context: PlanContext,
) -> PlannedPod:
    namespace, name = manifest.namespace, manifest.name
    if not name:
        raise _PodProblem("metadata.name is required")
    if namespace not in namespaces:
        raise _PodProblem(f"namespace {namespace} is not declared (add a Namespace manifest)")
    body: dict[str, Any] = copy.deepcopy(dict(manifest.body))
    body.setdefault("metadata", {})["namespace"] = namespace
    body.pop("status", None)
    creation = mutation.pod_creation(_review(body))
    if isinstance(creation, mutation.Skip):
        raise _PodProblem(creation.reason)
    decision = mutation.decide(creation, namespaces[namespace], mesh)
    if isinstance(decision, mutation.Deny):
        raise _PodProblem(decision.message)
    sidecar = None
    if isinstance(decision, mutation.Candidate):
        proxy = ProxyIdentity(proxy_uuid, decision.identity, mesh.trust_domain)
        template = mutation.SidecarTemplate(
            xds_host=str(layout.GATEWAY),
            xds_port=layout.XDS_PORT,
            xds_server_name=layout.CONTROLLER_NAME,
            bootstrap_dir=context.pod_dir(namespace, name),
        )
        patch = mutation.sidecar_patch(decision, proxy, template, mesh)
        body = jsonpatch.apply_patch(body, patch.operations)
        sidecar = Sidecar(decision, proxy, template)
    spec = body["spec"]
    account = _string(spec.get("serviceAccountName")) or _string(spec.get("serviceAccount")) or "default"
    spec["serviceAccountName"] = account
    pod_env = {
        "POD_NAME": name,
        "POD_NAMESPACE": namespace,
        "POD_IP": ip,
        "SERVICE_ACCOUNT": account,
        "HOSTNAME": name,
    }
    facts = {"pod_spec": spec, "pod_env": pod_env, "pod": body, "manifest": manifest, "context": context}
    init = tuple(_container(c, **facts) for c in spec.get("initContainers", ()))
    containers = tuple(_container(c, **facts) for c in spec["containers"])
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
    readiness = _readiness(manifest.body)
    return PlannedPod(
        namespace, name, ip, interface, account, init, containers, rendered, sidecar, fingerprint, readiness
    )


def _readiness(pod: Mapping[str, Any]) -> tuple[tuple[str, int, str], ...]:
    """tcpSocket and httpGet readiness probes; exec probes cannot be run from outside."""
    out = []
    for container in _mapping(pod.get("spec")).get("containers") or ():
        if not isinstance(container, dict):
            continue
        probe = _mapping(container.get("readinessProbe"))
        ports = {
            p.get("name"): p.get("containerPort") for p in container.get("ports") or () if isinstance(p, dict)
        }
        for kind, action in (("tcp", "tcpSocket"), ("http", "httpGet")):
            spec = _mapping(probe.get(action))
            port = spec.get("port")
            port = ports.get(port) if isinstance(port, str) else port
            if isinstance(port, int):
                out.append((kind, port, _string(spec.get("path")) or "/"))
    return tuple(out)


def _review(pod: Mapping[str, Any]) -> mutation.Review:
    """The AdmissionReview the API server would send for creating `pod`."""
    request = {
        "uid": "meshcp-lab",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE",
        "namespace": pod["metadata"]["namespace"],
        "object": pod,
    }
    return mutation.Review("admission.k8s.io/v1", "meshcp-lab", request)


def _container(
    container: Mapping[str, Any],
    *,
    pod_spec: Mapping[str, Any],
    pod_env: Mapping[str, str],
    pod: Mapping[str, Any],
    manifest: Manifest,
    context: PlanContext,
) -> Container:
    name = _string(container.get("name"))
    command = [str(part) for part in container.get("command") or ()]
    args = [str(part) for part in container.get("args") or ()]
    if not command:
        raise _PodProblem(
            f"container {name} has no command: the lab runs commands from this machine and ignores images"
        )
    env = {"PATH": context.path, **pod_env}
    for entry in container.get("env") or ():
        if not isinstance(entry, dict) or not _string(entry.get("name")):
            raise _PodProblem(f"container {name}: env entries need a name")
        env[entry["name"]] = _env_value(entry, pod, pod_env, name)
    context_of = _mapping(container.get("securityContext"))
    pod_context = _mapping(pod_spec.get("securityContext"))
    uid = context_of.get("runAsUser", pod_context.get("runAsUser", 0))
    gid = context_of.get("runAsGroup", pod_context.get("runAsGroup", uid))
    if not isinstance(uid, int) or not isinstance(gid, int):
        raise _PodProblem(f"container {name}: runAsUser and runAsGroup must be numbers")
    cwd = _string(container.get("workingDir")) or str(manifest.directory)
    return Container(name, tuple(command + args), tuple(sorted(env.items())), uid, gid, cwd)


def _env_value(
    entry: Mapping[str, Any], pod: Mapping[str, Any], pod_env: Mapping[str, str], container: str
) -> str:
    if "value" in entry:
        return str(entry["value"])
    field_path = _string(_mapping(_mapping(entry.get("valueFrom")).get("fieldRef")).get("fieldPath"))
    values = {
        "metadata.name": pod_env["POD_NAME"],
        "metadata.namespace": pod_env["POD_NAMESPACE"],
        "status.podIP": pod_env["POD_IP"],
        "spec.serviceAccountName": pod_env["SERVICE_ACCOUNT"],
    }
    if field_path in values:
        return values[field_path]
    labels = _mapping(_mapping(pod.get("metadata")).get("labels"))
    if field_path.startswith("metadata.labels['") and field_path.endswith("']"):
        return str(labels.get(field_path[17:-2], ""))
    raise _PodProblem(
        f"container {container}: env {entry.get('name')}: only value and fieldRef "
        f"({', '.join(sorted(values))}, metadata.labels['...']) are supported in the lab"
    )


def _with_cluster_ip(body: Mapping[str, Any], ip: str | None) -> Mapping[str, Any]:
    if ip is None:
        return body
    out = dict(body)
    out["spec"] = {**_mapping(body.get("spec")), "clusterIP": ip}
    return out


# --- services ----------------------------------------------------------------------------------


def _services(
    manifests: Sequence[Manifest],
    ips: Mapping[str, str],
    pods: Mapping[str, PlannedPod],
    problems: list[str],
) -> list[PlannedService]:
    out = []
    for manifest in manifests:
        try:
            parsed = parse_object(
                _with_cluster_ip(manifest.body, ips.get(f"{manifest.namespace}/{manifest.name}"))
            )
        except InvalidObject as error:
            problems.append(f"{manifest.display}: {error.reason}")
            continue
        if not isinstance(parsed, Service):
            continue
        members = [
            pod
            for pod in pods.values()
            if parsed.selector
            and pod.namespace == parsed.meta.namespace
            and all(_labels(pod).get(k) == v for k, v in parsed.selector.items())
        ]
        ports = []
        for port in parsed.ports:
            if port.transport != "TCP":
                continue
            endpoints = []
            for pod in sorted(members, key=lambda p: p.ip):
                target = _target_port(port.target_port, pod)
                if target is not None:
                    endpoints.append((pod.ip, target))
            ports.append((port.port, tuple(endpoints)))
        cluster_ip = "" if parsed.headless else parsed.cluster_ip
        out.append(PlannedService(parsed.meta.namespace, parsed.meta.name, cluster_ip, tuple(ports)))
    return out


def _labels(pod: PlannedPod) -> Mapping[str, Any]:
    return _mapping(_mapping(pod.manifest.get("metadata")).get("labels"))


def _target_port(target: int | str, pod: PlannedPod) -> int | None:
    if isinstance(target, int):
        return target
    for container in pod.manifest["spec"]["containers"]:
        for port in container.get("ports") or ():
            if (
                isinstance(port, dict)
                and port.get("name") == target
                and isinstance(port.get("containerPort"), int)
            ):
                return int(port["containerPort"])
    return None


def _hosts(pod: PlannedPod, services: Sequence[PlannedService]) -> str:
    """/etc/hosts of a pod: itself, and every service by the names cluster DNS gives it
    (the short name only from the service's own namespace)."""
    lines = ["127.0.0.1\tlocalhost", f"{pod.ip}\t{pod.name}"]
    for service in services:
        address = service.cluster_ip
        if not address:
            endpoints = [ip for _, eps in service.ports for ip, _ in eps]
            if not endpoints:
                continue
            address = endpoints[0]
        base = f"{service.name}.{service.namespace}"
        names = [f"{base}.svc.{layout.CLUSTER_DOMAIN}", f"{base}.svc", base]
        if service.namespace == pod.namespace:
            names.append(service.name)
        lines.append(f"{address}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


SERVICES_CHAIN = "MESHCP-LAB-SERVICES"


def _service_rules(services: Sequence[PlannedService], hooks: Sequence[str]) -> str:
    """kube-proxy's iptables mode, in miniature: ClusterIP:port is DNATed in the node to one
    of the endpoints at random (equal odds, by the cascading probabilities kube-proxy uses).
    The whole `nat` table of the node namespace is the lab's, so it is rewritten whole."""
    chains = [SERVICES_CHAIN]
    rules = [f"-A {hook} -j {SERVICES_CHAIN}" for hook in hooks]
    for service in services:
        if not service.cluster_ip:
            continue
        for port, endpoints in service.ports:
            if not endpoints:
                continue
            digest = hashlib.sha256(f"{service.key}:{port}".encode()).hexdigest()[:12].upper()
            chain = f"MESHCP-SVC-{digest}"
            chains.append(chain)
            rules.append(
                f"-A {SERVICES_CHAIN} -d {service.cluster_ip}/32 -p tcp --dport {port} "
                f'-m comment --comment "{service.key}:{port}" -j {chain}'
            )
            for index, (ip, target) in enumerate(endpoints):
                remaining = len(endpoints) - index
                odds = (
                    "" if remaining == 1 else f"-m statistic --mode random --probability {1 / remaining:.5f} "
                )
                rules.append(f"-A {chain} -p tcp {odds}-j DNAT --to-destination {ip}:{target}")
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in chains), *rules, "COMMIT"]
    return "\n".join(lines) + "\n"


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _string(value: object) -> str:
    return value if isinstance(value, str) else ""
