"""TrafficTargets: which ones name an identity as destination, and what their rules grant.

Targets are additive and enforced at the destination; a target's TCPRoutes and its
HTTPRouteGroup matches intersect (a TCPRoute alone allows all HTTP on its ports). A rule
naming a route that does not exist is reported and skipped; the others still apply.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshcp.identity import Identity
from meshcp.model.core import ServicePort
from meshcp.model.meta import ObjectRef
from meshcp.model.smi import HTTPMatch, TrafficTarget
from meshcp.model.state import MeshState
from meshcp.policy.types import HttpRule, Report


@dataclass(frozen=True)
class Targets:
    """The TrafficTargets of a state by destination (only those of the destination's own
    namespace apply). Indexed once: scanning every target per pod is quadratic."""

    by_destination: Mapping[tuple[str, str], list[TrafficTarget]]

    @classmethod
    def of(cls, state: MeshState) -> Targets:
        index: dict[tuple[str, str], list[TrafficTarget]] = defaultdict(list)
        for target in state.traffic_targets:
            if target.destination.namespace == target.meta.namespace:
                index[(target.meta.namespace, target.destination.name)].append(target)
        return cls(index)

    def naming(self, identity: Identity) -> list[TrafficTarget]:
        """The TrafficTargets whose destination is `identity`."""
        return self.by_destination.get((identity.namespace, identity.service_account), [])


def allowed(
    state: MeshState, targets: Iterable[TrafficTarget], port: ServicePort, number: int, report: Report
) -> tuple[tuple[HttpRule, ...], frozenset[Identity]]:
    """Who may reach this port (service port `port`, container port `number`), and (HTTP)
    with which requests."""
    by_match: dict[HTTPMatch | None, set[Identity]] = defaultdict(set)
    tcp_sources: set[Identity] = set()
    for target in targets:
        sources = {Identity(s.namespace, s.name) for s in target.sources}
        ports, http_matches, has_tcp_route = _rules(state, target, report)
        if ports is not None and port.port not in ports and number not in ports:
            continue
        if port.protocol in ("http", "grpc"):
            if http_matches is None:
                if has_tcp_route:
                    by_match[None].update(sources)  # a TCPRoute alone allows all HTTP on its ports
            else:
                for match in http_matches:
                    by_match[match].update(sources)
        elif has_tcp_route:
            tcp_sources.update(sources)
    rules = tuple(
        HttpRule(match, frozenset(sources))
        for match, sources in sorted(
            by_match.items(), key=lambda item: "" if item[0] is None else item[0].name
        )
    )
    return rules, frozenset(tcp_sources)


def _rules(
    state: MeshState, target: TrafficTarget, report: Report
) -> tuple[set[int] | None, list[HTTPMatch] | None, bool]:
    """(allowed ports or None for all, allowed HTTP matches or None for none named, has TCPRoute)."""
    ports: set[int] | None = None
    all_ports = False
    http: list[HTTPMatch] | None = None
    has_tcp = False
    ns = target.meta.namespace
    for rule in target.rules:
        if rule.kind == "TCPRoute":
            route = state.tcp_routes.get((ns, rule.name))
            if route is None:
                report(target.ref, _missing(state, ObjectRef("TCPRoute", ns, rule.name)))
                continue
            has_tcp = True
            if not route.ports:
                all_ports = True
            else:
                ports = (ports or set()) | set(route.ports)
        elif rule.kind == "HTTPRouteGroup":
            group = state.http_route_groups.get((ns, rule.name))
            if group is None:
                report(target.ref, _missing(state, ObjectRef("HTTPRouteGroup", ns, rule.name)))
                continue
            by_name = {m.name: m for m in group.matches}
            chosen = list(group.matches) if not rule.matches else []
            for name in rule.matches:
                if name in by_name:
                    chosen.append(by_name[name])
                else:
                    report(target.ref, f"HTTPRouteGroup {ns}/{rule.name} has no match named {name!r}")
            http = (http or []) + chosen
        elif rule.kind == "UDPRoute":
            report(target.ref, f"UDPRoute {ns}/{rule.name} is not supported; rule skipped")
        else:
            report(target.ref, f"unsupported rule kind {rule.kind!r}; rule skipped")
    if all_ports or not has_tcp:
        ports = None
    return ports, http, has_tcp


def _missing(state: MeshState, ref: ObjectRef) -> str:
    """Why a rule's route is not there: an invalid object (reported on its own, with the
    field) is not one that does not exist."""
    name = f"{ref.kind} {ref.namespace}/{ref.name}"
    if any(problem.ref == ref for problem in state.problems):
        return f"{name} is invalid (see its own problem); rule skipped"
    return f"{name} does not exist; rule skipped"
