"""A pod's inbound ports: each TCP port of each service it backs, and who may reach it.

In a permissive namespace every mesh identity may; otherwise the TrafficTargets naming the
pod's identity decide (default deny).
"""

from __future__ import annotations

from collections.abc import Mapping

from meshcp.identity import Identity
from meshcp.model.core import Pod
from meshcp.model.osm_policy import UpstreamTrafficSetting
from meshcp.model.state import MeshState
from meshcp.policy.backends import Backends, target_port
from meshcp.policy.osm_policies import rate_limits
from meshcp.policy.targets import Targets, allowed
from meshcp.policy.types import HttpRule, InboundPort, Report, ServiceKey


def inbound_ports(
    state: MeshState,
    backends: Backends,
    targets: Targets,
    pod: Pod,
    identity: Identity,
    *,
    report: Report,
    settings: Mapping[ServiceKey, UpstreamTrafficSetting] | None = None,
) -> tuple[InboundPort, ...]:
    """`settings`: the UpstreamTrafficSetting of each service that has one; its local rate
    limits are enforced here, on the inbound side of every pod behind the service."""
    permissive = state.permissive(pod.meta.namespace)
    granting = targets.naming(identity)
    out = []
    for service in backends.local_services(pod):
        key = ServiceKey(service.meta.namespace, service.meta.name)
        limits = rate_limits(settings.get(key) if settings else None)
        for port in service.ports:
            if port.transport != "TCP":
                continue
            number = target_port(port, pod)
            if number is None:
                report(service.ref, f"port {port.port}: pod {pod.meta.name} has no port {port.target_port!r}")
                continue
            if permissive:
                rules = (
                    (HttpRule(None, frozenset(), any_source=True),)
                    if port.protocol in ("http", "grpc")
                    else ()
                )
                out.append(
                    InboundPort(
                        key,
                        port.port,
                        number,
                        port.protocol,
                        rules,
                        frozenset(),
                        any_source=True,
                        rate_limits=limits,
                    )
                )
                continue
            http_rules, tcp_sources = allowed(state, granting, port, number, report)
            out.append(
                InboundPort(
                    key, port.port, number, port.protocol, http_rules, tcp_sources, rate_limits=limits
                )
            )
    return tuple(out)
