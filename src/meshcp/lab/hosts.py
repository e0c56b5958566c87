"""Each pod's /etc/hosts: the lab's stand-in for cluster DNS."""

from __future__ import annotations

from collections.abc import Sequence

from meshcp.lab import layout
from meshcp.lab.endpoints import PlannedService
from meshcp.lab.pods import PlannedPod


def hosts_file(pod: PlannedPod, services: Sequence[PlannedService]) -> str:
    """/etc/hosts of a pod: itself, and every service by the names cluster DNS gives it
    (the short name only from the service's own namespace). A headless service resolves
    to its first endpoint."""
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
