"""Per-route stats (MeshConfig `observability.enablePerRouteStats`): which HTTPRouteGroup
matches an upstream's outbound virtual host counts, each on a route of its own.

The matches are those the destination's policy speaks of: every HTTPRouteGroup match a
TrafficTarget to one of the identities behind the service names (a rule without
`matches`: all of its group), and the matches of the service's TrafficSplit. They do not
depend on the client, so every client's virtual host for the service is the same and is
encoded once. This is classification, not enforcement: a route counts the requests that
match it whoever sends them and on whichever port (the destination's RBAC still decides).
Unknown groups and match names are reported by `targets` and `splits`, not here.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshcp.identity import Identity
from meshcp.model.smi import HTTPRouteGroup, TrafficSplit
from meshcp.model.state import MeshState
from meshcp.policy.targets import Targets
from meshcp.policy.types import RouteStat


def route_stats(
    state: MeshState, targets: Targets, identities: Iterable[Identity], split: TrafficSplit | None
) -> tuple[RouteStat, ...]:
    """The matches, once each by (group, match name), in that order (Envoy takes the first
    route that matches: a request matching two is counted under the first)."""
    found: dict[tuple[str, str], RouteStat] = {}

    def add(group: HTTPRouteGroup, names: Iterable[str] = ()) -> None:
        wanted = set(names)
        for match in group.matches:
            if not wanted or match.name in wanted:
                found.setdefault((group.meta.name, match.name), RouteStat(group.meta.name, match))

    for identity in identities:
        for target in targets.naming(identity):
            for rule in target.rules:
                if rule.kind != "HTTPRouteGroup":
                    continue
                group = state.http_route_groups.get((target.meta.namespace, rule.name))
                if group is not None:
                    add(group, rule.matches)
    if split is not None:
        for split_match in split.matches:
            if split_match.kind == "HTTPRouteGroup":
                group = state.http_route_groups.get((split.meta.namespace, split_match.name))
                if group is not None:
                    add(group)
    return tuple(found[key] for key in sorted(found))
