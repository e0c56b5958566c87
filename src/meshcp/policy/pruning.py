"""Pruning (MeshConfig `pruneUnreachableUpstreams`): per client identity, the upstreams it may reach at all.

An upstream is reachable when one of its identities is the destination of a TrafficTarget
listing the client (any rule, any port: the destination's RBAC still decides the rest), or
lives in a permissive namespace. A split's backends come with its apex.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from meshcp.identity import Identity
from meshcp.model.state import MeshState
from meshcp.policy.targets import Targets
from meshcp.policy.types import ServiceKey, Upstream


def reachable(
    state: MeshState, upstreams: tuple[Upstream, ...], targets: Targets
) -> Callable[[Identity], tuple[Upstream, ...]]:
    """The upstreams each client identity may reach. Indexed by source once, so a class
    costs its own upstreams rather than the mesh's; each identity gets one shared tuple."""
    everyone: list[int] = []
    by_source: dict[Identity, list[int]] = defaultdict(list)
    for index, upstream in enumerate(upstreams):
        sources: set[Identity] = set()
        for destination in upstream.identities:
            if state.permissive(destination.namespace):
                everyone.append(index)
                break
            for target in targets.naming(destination):
                sources.update(Identity(s.namespace, s.name) for s in target.sources)
        else:
            for source in sources:
                by_source[source].append(index)
    # A split's backends come with its apex: the apex's clusters route to them (their
    # identities already count for the apex), so their clusters need their trust.
    by_service: dict[ServiceKey, list[int]] = defaultdict(list)
    for index, upstream in enumerate(upstreams):
        by_service[upstream.service].append(index)
    found: dict[Identity, tuple[Upstream, ...]] = {}

    def of(identity: Identity) -> tuple[Upstream, ...]:
        held = found.get(identity)
        if held is None:
            indexes = {*everyone, *by_source.get(identity, ())}
            for index in list(indexes):
                split = upstreams[index].split
                if split is not None:
                    for backend, _ in split.backends:
                        indexes.update(by_service.get(backend, ()))
            held = found[identity] = tuple(upstreams[i] for i in sorted(indexes))
        return held

    return of
