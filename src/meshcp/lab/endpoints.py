"""Services and their endpoints: the pods each selects, at the ports they target (the
endpoints controller's job), for the kube-proxy rules and /etc/hosts.

Only TCP ports get endpoints: the mesh, and so the lab, carries TCP alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshcp.injector import fields
from meshcp.lab.addresses import with_cluster_ip
from meshcp.lab.manifests import Manifest
from meshcp.lab.pods import PlannedPod
from meshcp.model.core import Service
from meshcp.model.parse import InvalidObject, parse_object


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


def services(
    manifests: Sequence[Manifest],
    ips: Mapping[str, str],
    pods: Mapping[str, PlannedPod],
    problems: list[str],
) -> list[PlannedService]:
    """Every valid Service with its ClusterIP from `ips` (none when headless) and the
    endpoints of its TCP ports among `pods`; each invalid one is reported in `problems`."""
    out = []
    for manifest in manifests:
        try:
            parsed = parse_object(
                with_cluster_ip(manifest.body, ips.get(f"{manifest.namespace}/{manifest.name}"))
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
    return fields.mapping(fields.mapping(pod.manifest.get("metadata")).get("labels"))


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
