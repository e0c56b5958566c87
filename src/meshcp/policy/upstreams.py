"""Upstreams: every TCP port of every meshed service, as its clients reach it.

An upstream carries the addresses the client's outbound listener matches, the identities
the client accepts from the servers (a split's backends' too), and the split route if a
TrafficSplit applies to the service; with per-route stats, the HTTPRouteGroup matches its
routes count (`route_stats`).
"""

from __future__ import annotations

from collections.abc import Mapping

from meshcp.model.osm_policy import UpstreamTrafficSetting
from meshcp.model.state import MeshState
from meshcp.policy.backends import Backends
from meshcp.policy.route_stats import route_stats
from meshcp.policy.splits import split_route, valid_splits
from meshcp.policy.targets import Targets
from meshcp.policy.types import Report, ServiceKey, Upstream


def upstreams(
    state: MeshState,
    backends: Backends,
    report: Report,
    counted: Targets | None = None,
    settings: Mapping[ServiceKey, UpstreamTrafficSetting] | None = None,
) -> tuple[Upstream, ...]:
    """`counted`: with per-route stats on (MeshConfig), the TrafficTargets whose
    HTTPRouteGroup matches the routes count; None: per-route stats off. `settings`: the
    UpstreamTrafficSetting of each service that has one (`osm_policies.traffic_settings`)."""
    splits = valid_splits(state, report)
    out = []
    for service in backends.services:
        key = ServiceKey(service.meta.namespace, service.meta.name)
        split = splits.get(key)
        route = split_route(state, key, split, report) if split is not None else None
        identities = backends.identities(service)
        if route is not None:  # clients accept whichever backend answers
            backend_identities = set(identities)
            for backend, _ in route.backends:
                backend_service = state.service_index.get((backend.namespace, backend.name))
                if backend_service is not None:
                    backend_identities.update(backends.identities(backend_service))
            identities = tuple(sorted(backend_identities))
        stats = None if counted is None else route_stats(state, counted, identities, split)
        setting = settings.get(key) if settings else None
        connection = setting.connection if setting is not None else None
        outlier = setting.outlier_detection if setting is not None else None
        for port in service.ports:
            if port.transport != "TCP":
                continue
            if service.headless:
                addresses = tuple(sorted({a for _, a, ready in backends.of(service) if ready}))
            elif service.cluster_ip:
                addresses = (service.cluster_ip,)
            else:
                addresses = ()  # not assigned yet: reachable once it is
                report(service.ref, "has no clusterIP yet; clients reach it once one is assigned")
            out.append(
                Upstream(
                    key, port.port, port.protocol, addresses, identities, route, stats, connection, outlier
                )
            )
    return tuple(out)
