"""TrafficSplits: which ones apply, and the weighted route each becomes on the client side.

A split applies when it is the only one on its apex service and the apex and every backend
exist and the backends carry all the apex's ports; otherwise it is reported and traffic
goes to the apex service as if there were no split.
"""

from __future__ import annotations

from collections import defaultdict

from meshcp.model.smi import HTTPMatch, TrafficSplit
from meshcp.model.state import MeshState
from meshcp.policy.types import Report, ServiceKey, SplitRoute

#: Relative split weights become integers summing to this (Envoy weights are integers).
WEIGHT_SCALE = 10_000


def valid_splits(state: MeshState, report: Report) -> dict[ServiceKey, TrafficSplit]:
    """Valid splits by apex; several splits on one apex are an error on each of them."""
    by_apex: dict[ServiceKey, list[TrafficSplit]] = defaultdict(list)
    for split in state.traffic_splits:
        by_apex[ServiceKey(split.meta.namespace, split.service)].append(split)
    valid: dict[ServiceKey, TrafficSplit] = {}
    for apex, splits in by_apex.items():
        if len(splits) > 1:
            names = ", ".join(s.meta.name for s in splits)
            for split in splits:
                report(
                    split.ref, f"several TrafficSplits ({names}) share the apex service {apex}; none applies"
                )
            continue
        split = splits[0]
        if _applies(state, apex, split, report):
            valid[apex] = split
    return valid


def _applies(state: MeshState, apex: ServiceKey, split: TrafficSplit, report: Report) -> bool:
    services = state.service_index
    apex_service = services.get((apex.namespace, apex.name))
    if apex_service is None:
        report(split.ref, f"apex service {apex} does not exist")
        return False
    if not split.backends:
        report(split.ref, "has no backends; traffic goes to the apex service")
        return False
    if sum(b.weight for b in split.backends) <= 0:
        report(split.ref, "all backend weights are zero; traffic goes to the apex service")
        return False
    apex_ports = {p.port for p in apex_service.ports}
    for backend in split.backends:
        service = services.get((apex.namespace, backend.service))
        if service is None:
            report(split.ref, f"backend service {apex.namespace}/{backend.service} does not exist")
            return False
        missing = apex_ports - {p.port for p in service.ports}
        if missing:
            report(
                split.ref,
                f"backend {apex.namespace}/{backend.service} lacks the apex port(s) {sorted(missing)}",
            )
            return False
    return True


def split_route(state: MeshState, apex: ServiceKey, split: TrafficSplit, report: Report) -> SplitRoute:
    """The backends with integer weights, and the HTTP matches the split is limited to."""
    total = sum(b.weight for b in split.backends)
    weights = tuple(
        (ServiceKey(apex.namespace, b.service), round(b.weight / total * WEIGHT_SCALE))
        for b in split.backends
    )
    matches: list[HTTPMatch] = []
    for match in split.matches:
        if match.kind == "HTTPRouteGroup":
            group = state.http_route_groups.get((split.meta.namespace, match.name))
            if group is None:
                report(split.ref, f"HTTPRouteGroup {split.meta.namespace}/{match.name} does not exist")
                continue
            matches.extend(group.matches)
    return SplitRoute(weights, tuple(matches))
