"""kube-proxy's iptables mode, in miniature: the `nat` rules that send a ClusterIP:port to one
of the Service's endpoints.

The whole `nat` table of the namespace they are loaded in is the lab's, so the rules are a
complete `iptables-restore` script that replaces the table on every apply.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from meshcp.lab.endpoints import PlannedService

SERVICES_CHAIN = "MESHCP-LAB-SERVICES"


def service_rules(services: Sequence[PlannedService], hooks: Sequence[str]) -> str:
    """ClusterIP:port is DNATed to one of the endpoints at random (equal odds, by the
    cascading probabilities kube-proxy uses), from the built-in chains `hooks`."""
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
