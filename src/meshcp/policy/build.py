"""MeshState in, proxy classes and their policies out (pure).

SMI semantics as decided in ../shared/DESIGN.md: default deny in SMI mode, TrafficTargets
additive and enforced at the destination, TCPRoute and HTTPRouteGroup intersecting, splits
on the client side. Invalid or conflicting objects become `Problem`s and are skipped;
everything else still compiles.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from meshcp.identity import Identity
from meshcp.model.core import ContainerPort, EndpointSlice, Pod, Service, ServicePort
from meshcp.model.meta import ObjectRef
from meshcp.model.smi import HTTPMatch, TrafficSplit, TrafficTarget
from meshcp.model.state import MeshState, Problem
from meshcp.policy.types import (
    Endpoint,
    HttpRule,
    InboundPort,
    ProxyPolicy,
    ServiceKey,
    SplitRoute,
    Upstream,
)

InboundTuple = tuple[InboundPort, ...]
INJECTION_ANNOTATION = "meshcp.dev/sidecar-injection"
PROXY_UUID_LABEL = "meshcp.dev/proxy-uuid"
#: Relative split weights become integers summing to this (Envoy weights are integers).
WEIGHT_SCALE = 10_000


@dataclass(frozen=True)
class MeshPolicy:
    """The compiler's input for one MeshState revision."""

    classes: Mapping[str, ProxyPolicy]
    #: (namespace, pod name) → class key, for every meshed pod.
    pod_classes: Mapping[tuple[str, str], str]
    #: proxy UUID → (namespace, pod name): how a connecting proxy is found.
    proxies: Mapping[str, tuple[str, str]]
    #: Endpoints of every upstream port: (service, port) → endpoints (meshed, ready).
    endpoints: Mapping[tuple[ServiceKey, int], tuple[Endpoint, ...]]
    problems: tuple[Problem, ...] = ()


def proxy_uuid(pod: Pod) -> str:
    """The pod's proxy UUID: the injector's label, else one derived from the pod's name
    (so `meshcp bootstrap` and the controller agree without a label)."""
    label = pod.meta.labels.get(PROXY_UUID_LABEL)
    if label:
        return label
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"meshcp:{pod.meta.namespace}/{pod.meta.name}"))


def is_meshed(pod: Pod, meshed_namespaces: frozenset[str]) -> bool:
    return (
        pod.meta.namespace in meshed_namespaces
        and not pod.host_network
        and pod.meta.annotations.get(INJECTION_ANNOTATION) != "disabled"
    )


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


@dataclass
class _Builder:
    state: MeshState
    problems: list[Problem] = field(default_factory=list)

    def __post_init__(self) -> None:
        state = self.state
        self.meshed_ns = state.meshed_namespaces
        self.pods = {(p.meta.namespace, p.meta.name): p for p in state.pods}
        self.meshed_pods = [p for p in state.pods if is_meshed(p, self.meshed_ns)]
        self.services = [s for s in state.services if s.meta.namespace in self.meshed_ns]
        self.pods_by_namespace: dict[str, list[Pod]] = defaultdict(list)
        for pod in state.pods:
            self.pods_by_namespace[pod.meta.namespace].append(pod)
        self._backends: dict[tuple[str, str], list[tuple[Pod | None, str, bool]]] = {}
        self._local: dict[int, list[Service]] | None = None
        self._targets: dict[tuple[str, str], list[TrafficTarget]] | None = None
        self.slices: dict[tuple[str, str], list[EndpointSlice]] = defaultdict(list)
        for endpoint_slice in state.endpoint_slices:
            self.slices[(endpoint_slice.meta.namespace, endpoint_slice.service)].append(endpoint_slice)

    def report(self, ref: ObjectRef, reason: str) -> None:
        self.problems.append(Problem(ref, reason))

    # Endpoints ---------------------------------------------------------------

    def backends(self, service: Service) -> list[tuple[Pod | None, str, bool]]:
        """(pod, address, ready) behind a service: from its EndpointSlices if it has any,
        else from the pods its selector matches (as the endpoint controller would).

        Computed once per service and state: endpoints, identities, inbound ports and
        local services all ask, and a scan of every pod per question is quadratic."""
        key = (service.meta.namespace, service.meta.name)
        found = self._backends.get(key)
        if found is not None:
            return found
        slices = self.slices.get(key)
        out: list[tuple[Pod | None, str, bool]] = []
        if slices:
            for endpoint_slice in slices:
                for endpoint in endpoint_slice.endpoints:
                    pod = self.pods.get((service.meta.namespace, endpoint.pod)) if endpoint.pod else None
                    out.extend((pod, address, endpoint.ready) for address in endpoint.addresses)
        else:
            for pod in self.pods_by_namespace.get(service.meta.namespace, ()):
                if selects(service, pod) and pod.ip:
                    out.append((pod, pod.ip, pod.ready))
        self._backends[key] = out
        return out

    def endpoints(self, service: Service, port: ServicePort) -> tuple[Endpoint, ...]:
        """Ready, meshed endpoints only: an unmeshed pod cannot speak mTLS."""
        found = set()
        for pod, address, ready in self.backends(service):
            if not ready or pod is None or not is_meshed(pod, self.meshed_ns):
                continue
            number = target_port(port, pod)
            if number is not None:
                found.add(Endpoint(address, number))
        return tuple(sorted(found, key=lambda e: (e.address, e.port)))

    def identities(self, service: Service) -> tuple[Identity, ...]:
        found = {
            Identity(pod.meta.namespace, pod.service_account)
            for pod, _, _ in self.backends(service)
            if pod is not None and is_meshed(pod, self.meshed_ns)
        }
        return tuple(sorted(found))

    # Splits ------------------------------------------------------------------

    def splits(self) -> dict[ServiceKey, TrafficSplit]:
        """Valid splits by apex; several splits on one apex are an error on each of them."""
        by_apex: dict[ServiceKey, list[TrafficSplit]] = defaultdict(list)
        for split in self.state.traffic_splits:
            by_apex[ServiceKey(split.meta.namespace, split.service)].append(split)
        valid: dict[ServiceKey, TrafficSplit] = {}
        for apex, splits in by_apex.items():
            if len(splits) > 1:
                names = ", ".join(s.meta.name for s in splits)
                for split in splits:
                    self.report(
                        split.ref,
                        f"several TrafficSplits ({names}) share the apex service {apex}; none applies",
                    )
                continue
            split = splits[0]
            if self.check_split(apex, split):
                valid[apex] = split
        return valid

    def check_split(self, apex: ServiceKey, split: TrafficSplit) -> bool:
        services = self.state.service_index
        apex_service = services.get((apex.namespace, apex.name))
        if apex_service is None:
            self.report(split.ref, f"apex service {apex} does not exist")
            return False
        if not split.backends:
            self.report(split.ref, "has no backends; traffic goes to the apex service")
            return False
        if sum(b.weight for b in split.backends) <= 0:
            self.report(split.ref, "all backend weights are zero; traffic goes to the apex service")
            return False
        apex_ports = {p.port for p in apex_service.ports}
        for backend in split.backends:
            service = services.get((apex.namespace, backend.service))
            if service is None:
                self.report(split.ref, f"backend service {apex.namespace}/{backend.service} does not exist")
                return False
            missing = apex_ports - {p.port for p in service.ports}
            if missing:
                self.report(
                    split.ref,
                    f"backend {apex.namespace}/{backend.service} lacks the apex port(s) {sorted(missing)}",
                )
                return False
        return True

    def split_route(self, apex: ServiceKey, split: TrafficSplit) -> SplitRoute:
        total = sum(b.weight for b in split.backends)
        weights = tuple(
            (ServiceKey(apex.namespace, b.service), round(b.weight / total * WEIGHT_SCALE))
            for b in split.backends
        )
        matches: list[HTTPMatch] = []
        for match in split.matches:
            if match.kind == "HTTPRouteGroup":
                group = self.state.http_route_groups.get((split.meta.namespace, match.name))
                if group is None:
                    self.report(
                        split.ref, f"HTTPRouteGroup {split.meta.namespace}/{match.name} does not exist"
                    )
                    continue
                matches.extend(group.matches)
        return SplitRoute(weights, tuple(matches))

    # Upstreams ---------------------------------------------------------------

    def upstreams(self) -> tuple[Upstream, ...]:
        splits = self.splits()
        out = []
        for service in self.services:
            key = ServiceKey(service.meta.namespace, service.meta.name)
            split = splits.get(key)
            route = self.split_route(key, split) if split is not None else None
            identities = self.identities(service)
            if route is not None:  # clients accept whichever backend answers
                backend_identities = set(identities)
                for backend, _ in route.backends:
                    backend_service = self.state.service_index.get((backend.namespace, backend.name))
                    if backend_service is not None:
                        backend_identities.update(self.identities(backend_service))
                identities = tuple(sorted(backend_identities))
            for port in service.ports:
                if port.transport != "TCP":
                    continue
                if service.headless:
                    addresses = tuple(sorted({a for _, a, ready in self.backends(service) if ready}))
                elif service.cluster_ip:
                    addresses = (service.cluster_ip,)
                else:
                    addresses = ()  # not assigned yet: reachable once it is
                    self.report(service.ref, "has no clusterIP yet; clients reach it once one is assigned")
                out.append(Upstream(key, port.port, port.protocol, addresses, identities, route))
        return tuple(out)

    def reachable(self, upstreams: tuple[Upstream, ...]) -> Callable[[Identity], tuple[Upstream, ...]]:
        """Per client identity, the upstreams it may reach at all: one of the service's
        identities is named as destination of a TrafficTarget listing the client (any
        rule, any port: the destination's RBAC still decides the rest), or lives in a
        permissive namespace. Indexed by source once, so a class costs its own upstreams
        rather than the mesh's; each identity gets one shared tuple."""
        everyone: list[int] = []
        by_source: dict[Identity, list[int]] = defaultdict(list)
        for index, upstream in enumerate(upstreams):
            sources: set[Identity] = set()
            for destination in upstream.identities:
                if self.state.permissive(destination.namespace):
                    everyone.append(index)
                    break
                for target in self.targets(destination):
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

    # Inbound -----------------------------------------------------------------

    def local_services(self, pod: Pod) -> list[Service]:
        """The services a pod backs (selected by them, or named in their EndpointSlices)."""
        if self._local is None:
            by_label: dict[tuple[str, str, str], list[Pod]] = defaultdict(list)
            for pod_ in self.state.pods:
                for label, value in pod_.meta.labels.items():
                    by_label[(pod_.meta.namespace, label, value)].append(pod_)
            index: dict[int, list[Service]] = defaultdict(list)
            for service in self.services:
                local = {id(p): p for p, _, _ in self.backends(service) if p is not None}
                for candidate in self._selected(service, by_label):
                    local[id(candidate)] = candidate
                for backend_pod in local.values():
                    index[id(backend_pod)].append(service)
            self._local = index
        return self._local.get(id(pod), [])

    def targets(self, identity: Identity) -> list[TrafficTarget]:
        """The TrafficTargets whose destination is `identity` (only those of its own
        namespace apply). Indexed once: scanning every target per pod is quadratic."""
        if self._targets is None:
            index: dict[tuple[str, str], list[TrafficTarget]] = defaultdict(list)
            for target in self.state.traffic_targets:
                if target.destination.namespace == target.meta.namespace:
                    index[(target.meta.namespace, target.destination.name)].append(target)
            self._targets = index
        return self._targets.get((identity.namespace, identity.service_account), [])

    @staticmethod
    def _selected(service: Service, by_label: Mapping[tuple[str, str, str], list[Pod]]) -> list[Pod]:
        """The pods `service` selects, looked up by the rarest label of its selector
        (checking every pod of the namespace per service is quadratic)."""
        if not service.selector:
            return []
        ns = service.meta.namespace
        rarest = min(
            (by_label.get((ns, label, value), []) for label, value in service.selector.items()), key=len
        )
        return [pod for pod in rarest if selects(service, pod)]

    def inbound(self, pod: Pod, identity: Identity) -> tuple[InboundPort, ...]:
        permissive = self.state.permissive(pod.meta.namespace)
        targets = self.targets(identity)
        out = []
        for service in self.local_services(pod):
            key = ServiceKey(service.meta.namespace, service.meta.name)
            for port in service.ports:
                if port.transport != "TCP":
                    continue
                number = target_port(port, pod)
                if number is None:
                    self.report(
                        service.ref,
                        f"port {port.port}: pod {pod.meta.name} has no port {port.target_port!r}",
                    )
                    continue
                if permissive:
                    rules = (
                        (HttpRule(None, frozenset(), any_source=True),)
                        if port.protocol in ("http", "grpc")
                        else ()
                    )
                    out.append(
                        InboundPort(
                            key, port.port, number, port.protocol, rules, frozenset(), any_source=True
                        )
                    )
                    continue
                http_rules, tcp_sources = self.allowed(targets, port, number)
                out.append(InboundPort(key, port.port, number, port.protocol, http_rules, tcp_sources))
        return tuple(out)

    def allowed(
        self, targets: Iterable[TrafficTarget], port: ServicePort, number: int
    ) -> tuple[tuple[HttpRule, ...], frozenset[Identity]]:
        """Who may reach this port, and (HTTP) with which requests."""
        by_match: dict[HTTPMatch | None, set[Identity]] = defaultdict(set)
        tcp_sources: set[Identity] = set()
        for target in targets:
            sources = {Identity(s.namespace, s.name) for s in target.sources}
            ports, http_matches, has_tcp_route = self.target_rules(target)
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

    def target_rules(self, target: TrafficTarget) -> tuple[set[int] | None, list[HTTPMatch] | None, bool]:
        """(allowed ports or None for all, allowed HTTP matches or None for none named, has TCPRoute)."""
        ports: set[int] | None = None
        all_ports = False
        http: list[HTTPMatch] | None = None
        has_tcp = False
        ns = target.meta.namespace
        for rule in target.rules:
            if rule.kind == "TCPRoute":
                route = self.state.tcp_routes.get((ns, rule.name))
                if route is None:
                    self.report(target.ref, f"TCPRoute {ns}/{rule.name} does not exist; rule skipped")
                    continue
                has_tcp = True
                if not route.ports:
                    all_ports = True
                else:
                    ports = (ports or set()) | set(route.ports)
            elif rule.kind == "HTTPRouteGroup":
                group = self.state.http_route_groups.get((ns, rule.name))
                if group is None:
                    self.report(target.ref, f"HTTPRouteGroup {ns}/{rule.name} does not exist; rule skipped")
                    continue
                by_name = {m.name: m for m in group.matches}
                chosen = list(group.matches) if not rule.matches else []
                for name in rule.matches:
                    if name in by_name:
                        chosen.append(by_name[name])
                    else:
                        self.report(
                            target.ref, f"HTTPRouteGroup {ns}/{rule.name} has no match named {name!r}"
                        )
                http = (http or []) + chosen
            elif rule.kind == "UDPRoute":
                self.report(target.ref, f"UDPRoute {ns}/{rule.name} is not supported; rule skipped")
            else:
                self.report(target.ref, f"unsupported rule kind {rule.kind!r}; rule skipped")
        if all_ports or not has_tcp:
            ports = None
        return ports, http, has_tcp


def class_key(identity: Identity, inbound: tuple[InboundPort, ...]) -> str:
    """Proxies with the same identity and the same local ports share one configuration."""
    digest = hashlib.sha256(repr(inbound).encode()).hexdigest()[:10]
    return f"{identity}#{digest}"


def build_policies(state: MeshState) -> MeshPolicy:
    builder = _Builder(state)
    for route in state.udp_routes:
        builder.report(route.ref, "UDPRoute is not supported (meshcp proxies TCP and HTTP)")
    config = state.mesh_config
    upstreams = builder.upstreams()
    reachable = builder.reachable(upstreams) if config.prune_unreachable_upstreams else None
    classes: dict[str, ProxyPolicy] = {}
    pod_classes: dict[tuple[str, str], str] = {}
    proxies: dict[str, tuple[str, str]] = {}
    # The pods of one service (same identity, local services and container ports) get
    # the same inbound ports: compute them and the class key once, not per pod.
    seen: dict[tuple[Identity, tuple[int, ...], tuple[ContainerPort, ...]], tuple[str, InboundTuple]] = {}
    for pod in builder.meshed_pods:
        identity = Identity(pod.meta.namespace, pod.service_account)
        same = (identity, tuple(id(s) for s in builder.local_services(pod)), pod.ports)
        found = seen.get(same)
        if found is None:
            reported = len(builder.problems)
            inbound = builder.inbound(pod, identity)
            found = (class_key(identity, inbound), inbound)
            if len(builder.problems) == reported:  # problems name the pod: others report theirs
                seen[same] = found
        key, inbound = found
        if key not in classes:
            classes[key] = ProxyPolicy(
                identity,
                inbound,
                upstreams if reachable is None else reachable(identity),
                config.egress_passthrough,
                config.trust_domain,
                None if reachable is None else upstreams,
            )
        pod_classes[(pod.meta.namespace, pod.meta.name)] = key
        proxies[proxy_uuid(pod)] = (pod.meta.namespace, pod.meta.name)
    endpoints = {
        (ServiceKey(s.meta.namespace, s.meta.name), p.port): builder.endpoints(s, p)
        for s in builder.services
        for p in s.ports
        if p.transport == "TCP"
    }
    unique = tuple(dict.fromkeys(builder.problems))
    return MeshPolicy(classes, pod_classes, proxies, endpoints, unique)
