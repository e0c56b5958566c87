"""Which pods stand behind each meshed service, and which services each pod backs.

A service's backends come from its EndpointSlices when it has any, else from the pods its
selector matches, as the endpoint controller would. Upstream endpoints and identities and
a pod's inbound ports are all derived from this one answer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from functools import cached_property

from meshcp.identity import Identity
from meshcp.model.core import EndpointSlice, Pod, Service, ServicePort
from meshcp.model.meta import ObjectRef
from meshcp.model.state import MeshState
from meshcp.policy.membership import is_meshed
from meshcp.policy.types import Endpoint

#: (pod if known, address, ready) of one backend of a service.
Backend = tuple[Pod | None, str, bool]


def selects(service: Service, pod: Pod) -> bool:
    selector = service.selector
    return (
        bool(selector)
        and pod.meta.namespace == service.meta.namespace
        and selector is not None
        and all(pod.meta.labels.get(key) == value for key, value in selector.items())
    )


def target_port(port: ServicePort, pod: Pod | None) -> int | None:
    """The container port a service port reaches on `pod` (named target ports resolved)."""
    if isinstance(port.target_port, int):
        return port.target_port
    if pod is not None:
        for container_port in pod.ports:
            if container_port.name == port.target_port:
                return container_port.port
    return None


class Backends:
    """The meshed pods and services of one MeshState, and the backends of each service.

    Each answer is computed once per service and state: endpoints, identities, inbound
    ports and local services all ask, and a scan of every pod per question is quadratic.
    """

    def __init__(self, state: MeshState, labels: LabelIndex | None = None) -> None:
        """`labels`: `label_index` of this state's pods, or of pods with the same names
        and labels (an endpoints-only change away): saves the walk over every pod."""
        self.state = state
        self._labels = labels
        self.meshed_ns = state.meshed_namespaces
        self._backends: dict[tuple[str, str], list[Backend]] = {}
        self._local: dict[tuple[str, str], list[Service]] | None = None

    # The indexes are built on first use: an endpoints-only change asks about a few
    # services (`policy.endpoint_change`) and must not pay for a walk over the mesh.

    @cached_property
    def meshed_pods(self) -> list[Pod]:
        return [p for p in self.state.pods if is_meshed(p, self.meshed_ns)]

    @cached_property
    def services(self) -> list[Service]:
        """The services of meshed namespaces: the mesh's upstreams."""
        return [s for s in self.state.services if s.meta.namespace in self.meshed_ns]

    @cached_property
    def _by_label(self) -> LabelIndex:
        return self._labels if self._labels is not None else label_index(self.state.pods)

    def _selected(self, service: Service) -> list[Pod]:
        """The pods `service` selects, looked up by the rarest label of its selector
        (checking every pod of the namespace per service is quadratic)."""
        if not service.selector:
            return []
        ns = service.meta.namespace
        by_label = self._by_label
        carrying = (by_label.get((ns, label, value), ()) for label, value in service.selector.items())
        rarest = min(carrying, key=len)
        found = (self._pod(ns, name) for name in rarest)
        return [pod for pod in found if pod is not None and selects(service, pod)]

    @cached_property
    def _slices(self) -> dict[tuple[str, str], list[EndpointSlice]]:
        found: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
        for endpoint_slice in self.state.endpoint_slices:
            found[(endpoint_slice.meta.namespace, endpoint_slice.service)].append(endpoint_slice)
        return found

    def _pod(self, namespace: str, name: str) -> Pod | None:
        found = self.state.objects.get(ObjectRef("Pod", namespace, name))
        return found if isinstance(found, Pod) else None

    def of(self, service: Service) -> list[Backend]:
        """(pod, address, ready) behind a service: from its EndpointSlices if it has any,
        else from the pods its selector matches."""
        key = (service.meta.namespace, service.meta.name)
        found = self._backends.get(key)
        if found is not None:
            return found
        slices = self._slices.get(key)
        out: list[Backend] = []
        if slices:
            for endpoint_slice in slices:
                for endpoint in endpoint_slice.endpoints:
                    pod = self._pod(service.meta.namespace, endpoint.pod) if endpoint.pod else None
                    out.extend((pod, address, endpoint.ready) for address in endpoint.addresses)
        else:
            out.extend((pod, pod.ip, pod.ready) for pod in self._selected(service) if pod.ip)
        self._backends[key] = out
        return out

    def endpoints(self, service: Service, port: ServicePort) -> tuple[Endpoint, ...]:
        """Ready, meshed endpoints only: an unmeshed pod cannot speak mTLS."""
        found = set()
        for pod, address, ready in self.of(service):
            if not ready or pod is None or not is_meshed(pod, self.meshed_ns):
                continue
            number = target_port(port, pod)
            if number is not None:
                found.add(Endpoint(address, number))
        return tuple(sorted(found, key=lambda e: (e.address, e.port)))

    def identities(self, service: Service) -> tuple[Identity, ...]:
        found = {
            Identity(pod.meta.namespace, pod.service_account)
            for pod, _, _ in self.of(service)
            if pod is not None and is_meshed(pod, self.meshed_ns)
        }
        return tuple(sorted(found))

    def local_services(self, pod: Pod) -> list[Service]:
        """The services a pod backs (selected by them, or named in their EndpointSlices)."""
        return self.local_index().get((pod.meta.namespace, pod.meta.name), [])

    def use_local_index(self, index: dict[tuple[str, str], list[Service]]) -> None:
        """`local_index()` of a Backends of the same pods (by name and labels), services
        and slices (the same objects, or an endpoints-only change away from them)."""
        self._local = index

    def local_index(self) -> dict[tuple[str, str], list[Service]]:
        """The services each pod backs, by (namespace, pod name): one walk over the mesh,
        on first use."""
        if self._local is None:
            index: dict[tuple[str, str], list[Service]] = defaultdict(list)
            for service in self.services:
                local = {id(p): p for p, _, _ in self.of(service) if p is not None}
                for candidate in self._selected(service):
                    local[id(candidate)] = candidate
                for backend_pod in local.values():
                    index[(backend_pod.meta.namespace, backend_pod.meta.name)].append(service)
            self._local = index
        return self._local


#: Pod names by (namespace, label, value).
LabelIndex = Mapping[tuple[str, str, str], tuple[str, ...]]


def label_index(pods: Iterable[Pod]) -> dict[tuple[str, str, str], tuple[str, ...]]:
    """Which pods carry each label value, by name: what selectors are matched against.
    By name, so that it holds across an endpoints-only change (same pods, same labels)."""
    found: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for pod in pods:
        for label, value in pod.meta.labels.items():
            found[(pod.meta.namespace, label, value)].append(pod.meta.name)
    return {key: tuple(names) for key, names in found.items()}
