"""An endpoints-only change: the next policy from the last one, not from the whole mesh.

Most changes in a running mesh are pods moving: a new IP, readiness flipping, an
EndpointSlice's addresses. None of them changes who may reach whom or which pods share a
configuration, only the endpoints of the services behind them, so rebuilding every class
(`build.build_policies`, O(mesh)) for them is waste. This step recognises such a change
and recomputes the endpoints of the services it touches only (O(change)); anything else,
or anything it cannot prove harmless, is left to the full build (None).

A change is endpoints-only when only Pods and EndpointSlices changed, no Pod appeared or
went away or changed more than its IP and readiness, and every service behind the changed
objects keeps the same backend pods (and so the same identities and local services) and
is not headless (a headless service's upstream addresses are its pods' IPs), nor the source
of an OSM IngressBackend (its endpoints are what the backends' listeners admit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from meshcp.model.core import EndpointSlice, Pod, Service
from meshcp.model.meta import ObjectRef
from meshcp.model.state import MeshState
from meshcp.policy.backends import Backends, LabelIndex, selects
from meshcp.policy.build import MeshPolicy
from meshcp.policy.types import ServiceKey

EndpointKey = tuple[ServiceKey, int]


@dataclass(frozen=True)
class EndpointChange:
    """The next policy, and the (service, port) keys whose endpoints differ in it."""

    policy: MeshPolicy
    changed: frozenset[EndpointKey]


def endpoint_change(
    before: MeshState,
    after: MeshState,
    changed: Iterable[ObjectRef],
    policy: MeshPolicy,
    labels: LabelIndex | None = None,
) -> EndpointChange | None:
    """`policy`: built from `before`; `changed`: the references that differ between the
    two states; `labels`: `backends.label_index` of `before`'s pods, if known (an
    endpoints-only change keeps it: same pods, same labels). None when the change is not
    endpoints-only (see the module)."""
    services: set[tuple[str, str]] = set()
    moved: list[Pod] = []
    for ref in changed:
        if ref.kind == "EndpointSlice":
            for state in (before, after):
                found = state.get(ref)
                if isinstance(found, EndpointSlice):
                    services.add((ref.namespace, found.service))
        elif ref.kind == "Pod":
            old, new = before.get(ref), after.get(ref)
            if not isinstance(old, Pod) or not isinstance(new, Pod):
                return None  # a pod came or went: classes and proxies change
            if replace(old, ip=new.ip, ready=new.ready) != new:
                return None
            moved.append(new)
        elif before.get(ref) != after.get(ref):
            return None
    if moved:
        services.update(_services_behind(after, moved))
    # An OSM IngressBackend's source Service: its endpoints are addresses the backends'
    # inbound listeners admit, which a full build recomputes.
    sources = {
        (s.namespace, s.name) for i in after.ingress_backends for s in i.sources if s.kind == "Service"
    }
    if not sources.isdisjoint(services):
        return None
    old_backends, new_backends = Backends(before, labels), Backends(after, labels)
    endpoints = dict(policy.endpoints)
    keys: set[EndpointKey] = set()
    for namespace, name in sorted(services):
        service = after.service_index.get((namespace, name))
        if service is None or namespace not in new_backends.meshed_ns:
            continue  # not a mesh upstream: its slices feed nothing
        if service.headless or _pods(old_backends, service) != _pods(new_backends, service):
            return None
        for port in service.ports:
            if port.transport != "TCP":
                continue
            key = (ServiceKey(namespace, name), port.port)
            addresses = new_backends.endpoints(service, port)
            if endpoints.get(key) != addresses:
                endpoints[key] = addresses
                keys.add(key)
    return EndpointChange(replace(policy, endpoints=endpoints), frozenset(keys))


def _services_behind(state: MeshState, pods: list[Pod]) -> set[tuple[str, str]]:
    """The services `pods` stand behind: selected by them, or named in their slices."""
    names = {(pod.meta.namespace, pod.meta.name) for pod in pods}
    namespaces = {namespace for namespace, _ in names}
    found: set[tuple[str, str]] = set()
    for service in state.services:
        if service.meta.namespace in namespaces and any(selects(service, pod) for pod in pods):
            found.add((service.meta.namespace, service.meta.name))
    for endpoint_slice in state.endpoint_slices:
        namespace = endpoint_slice.meta.namespace
        if namespace in namespaces and any((namespace, e.pod) in names for e in endpoint_slice.endpoints):
            found.add((namespace, endpoint_slice.service))
    return found


def _pods(backends: Backends, service: Service) -> frozenset[str]:
    """The names of the pods behind `service` (addresses of no known pod feed neither
    endpoints nor identities)."""
    return frozenset(pod.meta.name for pod, _, _ in backends.of(service) if pod is not None)
