"""OSM's Retry and UpstreamTrafficSetting: which ones apply, and to what.

A Retry belongs to its source identity: only that identity's outbound virtual hosts for
the destination services carry its retry policy, so it changes what that class receives
and nothing of anyone else's. An UpstreamTrafficSetting belongs to its service: the
connection settings and outlier detection go into the service's upstream clusters (the
same bytes for every client), the local rate limits into the inbound side of the pods
behind it. Conflicts are reported on every object involved, and none of them applies:
which one was meant is not meshcp's to guess (the same rule as for TrafficSplits).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import replace

from meshcp.identity import Identity
from meshcp.model.osm_policy import Retry, RetryPolicy, UpstreamTrafficSetting
from meshcp.model.state import MeshState
from meshcp.policy.types import LocalRateLimits, Report, ServiceKey, Upstream

#: Retry policies by client identity, then by destination service.
RetryTable = Mapping[Identity, Mapping[ServiceKey, RetryPolicy]]


def traffic_settings(state: MeshState, report: Report) -> dict[ServiceKey, UpstreamTrafficSetting]:
    """The UpstreamTrafficSetting of each service that has exactly one."""
    by_service: dict[ServiceKey, list[UpstreamTrafficSetting]] = defaultdict(list)
    for setting in state.upstream_traffic_settings:
        key = ServiceKey(setting.meta.namespace, setting.service)
        by_service[key].append(setting)
        if (key.namespace, key.name) not in state.service_index:
            report(setting.ref, f"host: Service {key} does not exist; the settings apply once it does")
    found: dict[ServiceKey, UpstreamTrafficSetting] = {}
    for key, settings in by_service.items():
        if len(settings) > 1:
            names = ", ".join(s.meta.name for s in settings)
            for setting in settings:
                report(
                    setting.ref,
                    f"several UpstreamTrafficSettings ({names}) name the host {key}; none applies",
                )
            continue
        found[key] = settings[0]
    return found


def rate_limits(setting: UpstreamTrafficSetting | None) -> LocalRateLimits | None:
    """The local rate limits a service's pods enforce on their inbound side."""
    if setting is None or not (setting.tcp_rate_limit or setting.http_rate_limit or setting.http_routes):
        return None
    return LocalRateLimits(setting.tcp_rate_limit, setting.http_rate_limit, setting.http_routes)


def retry_table(state: MeshState, report: Report) -> dict[Identity, dict[ServiceKey, RetryPolicy]]:
    """Each (source, destination) pair named by exactly one Retry, and its policy."""
    claims: dict[tuple[Identity, ServiceKey], list[Retry]] = defaultdict(list)
    for retry in state.retries:
        source = Identity(retry.source.namespace, retry.source.name)
        for destination in retry.destinations:
            key = ServiceKey(destination.namespace, destination.name)
            claims[(source, key)].append(retry)
            if (key.namespace, key.name) not in state.service_index:
                report(retry.ref, f"destination Service {key} does not exist; the retry applies once it does")
    table: dict[Identity, dict[ServiceKey, RetryPolicy]] = defaultdict(dict)
    for (source, key), retries in sorted(claims.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        if len(retries) > 1:
            names = ", ".join(str(r.ref) for r in retries)
            for retry in retries:
                report(
                    retry.ref, f"several Retries ({names}) cover calls from {source} to {key}; none applies"
                )
            continue
        table[source][key] = retries[0].policy
    return dict(table)


def with_retries(
    upstreams: tuple[Upstream, ...], policies: Mapping[ServiceKey, RetryPolicy] | None
) -> tuple[Upstream, ...]:
    """`upstreams` as one client identity sees them: with its retry policies. The same
    tuple when none applies, so classes without retries keep sharing one."""
    if not policies or not any(u.service in policies and u.is_http for u in upstreams):
        return upstreams
    return tuple(
        replace(u, retry=policies[u.service]) if u.is_http and u.service in policies else u for u in upstreams
    )


def client_upstreams(
    mesh: tuple[Upstream, ...],
    reachable_from: Callable[[Identity], tuple[Upstream, ...]] | None,
    retries: RetryTable,
    intern: Callable[[tuple[Upstream, ...]], tuple[Upstream, ...]],
) -> Callable[[Identity], tuple[Upstream, ...]]:
    """What the classes of each client identity reach (all of `mesh`, or what pruning
    leaves), with that identity's Retries: one tuple per identity, shared by its classes.
    `intern`: hands each tuple made here on as the last build's equal one (`BuildMemo`),
    so that an unchanged class is recognised by identity."""
    by_identity: dict[Identity, tuple[Upstream, ...]] = {}

    def of(identity: Identity) -> tuple[Upstream, ...]:
        found = by_identity.get(identity)
        if found is None:
            base = mesh if reachable_from is None else intern(reachable_from(identity))
            found = with_retries(base, retries.get(identity))
            by_identity[identity] = found = found if found is base else intern(found)
        return found

    return of
