"""MeshState in, proxy classes and their policies out (pure).

SMI semantics as docs/smi-compiler.md states them: default deny in SMI mode, TrafficTargets
additive and enforced at the destination, TCPRoute and HTTPRouteGroup intersecting, splits
on the client side. Invalid or conflicting objects become `Problem`s and are skipped;
everything else still compiles. The steps live in their own modules (`backends`,
`upstreams` and `splits`, `inbound` and `targets`, `pruning`); this one groups the meshed
pods into classes that share one configuration.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial

from meshcp.identity import Identity
from meshcp.model.core import ContainerPort, Pod
from meshcp.model.meta import ObjectRef
from meshcp.model.state import MeshState, Problem
from meshcp.policy.backends import Backends, label_index
from meshcp.policy.build_memo import BuildMemo
from meshcp.policy.egress import EgressTable, egress_table
from meshcp.policy.inbound import inbound_ports
from meshcp.policy.ingress import IngressTable, class_ingress, ingress_table
from meshcp.policy.osm_compat import report_osm
from meshcp.policy.osm_policies import client_upstreams, retry_table, traffic_settings
from meshcp.policy.pruning import reachable
from meshcp.policy.targets import Targets
from meshcp.policy.types import Endpoint, InboundPort, ProxyPolicy, Report, ServiceKey, Upstream
from meshcp.policy.upstreams import upstreams

InboundTuple = tuple[InboundPort, ...]


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
    #: Every port of every meshed service as its clients see it (identities, split),
    #: whoever may reach it.
    upstreams: tuple[Upstream, ...] = ()


def class_key(identity: Identity, inbound: tuple[InboundPort, ...]) -> str:
    """Proxies with the same identity and the same local ports share one configuration."""
    digest = hashlib.sha256(repr(inbound).encode()).hexdigest()[:10]
    return f"{identity}#{digest}"


def build_policies(
    state: MeshState, trust_domain: str | None = None, memo: BuildMemo | None = None
) -> MeshPolicy:
    """`trust_domain`: the CA's, the one source of the SPIFFE IDs that RBAC principals and
    SAN matchers name (certificates carry it); a MeshConfig `trustDomain` that differs is
    reported and not used. None: the MeshConfig's (offline work without a CA).
    `memo`: carried across builds by the caller (see `build_memo`); the result is the same."""
    problems: list[Problem] = []

    def report(ref: ObjectRef, reason: str) -> None:
        problems.append(Problem(ref, reason))

    _report_unsupported(state, report)
    config = state.mesh_config
    if trust_domain is not None and trust_domain != config.trust_domain:
        for mesh_config in state.mesh_configs:
            if not mesh_config.is_set("trust_domain"):
                continue  # its default is no choice: the CA's is simply used
            report(
                mesh_config.ref,
                f"trustDomain {config.trust_domain!r} is not the CA's {trust_domain!r} (--trust-domain), "
                "which certificates carry: the CA's is used",
            )
        config = replace(config, trust_domain=trust_domain)
    memo = memo if memo is not None else BuildMemo()
    _rebase(memo)
    labels = memo.derived("labels", None, (state.pods,), lambda report: label_index(state.pods), report)
    backends = Backends(state, labels)
    behind = _behind(state)
    backends.use_local_index(
        memo.derived("local", None, behind, lambda report: backends.local_index(), report)
    )
    targets = Targets.of(state)
    counted = targets if config.per_route_stats else None
    # OSM UpstreamTrafficSettings by service; OSM Egress (`policy.egress`): each source
    # identity's rules, from the Egresses and the route groups they name; OSM
    # IngressBackends by backend port, their sources resolved (`policy.ingress`).
    settings, egress, ingress = (
        traffic_settings(state, report),
        _egress(state, memo, report),
        _ingress(state, backends, config.trust_domain, memo, report),
    )
    mesh_upstreams = memo.upstreams(
        memo.derived(
            "upstreams",
            None,
            (
                *behind,
                state.traffic_splits,
                state.http_route_groups,
                counted and state.traffic_targets,
                state.upstream_traffic_settings,
            ),
            partial(upstreams, state, backends, counted=counted, settings=settings),
            report,
        )
    )
    reachable_from = reachable(state, mesh_upstreams, targets) if config.prune_unreachable_upstreams else None
    listening = None
    if reachable_from is not None:
        listening = memo.upstreams(
            memo.derived("listening", None, (mesh_upstreams,), partial(_listening, mesh_upstreams), report)
        )
    upstreams_of = client_upstreams(
        mesh_upstreams, reachable_from, retry_table(state, report), memo.upstream_tuple
    )
    classes: dict[str, ProxyPolicy] = {}
    pod_classes: dict[tuple[str, str], str] = {}
    proxies = _Proxies(report)
    # The pods of one service (same identity, local services and container ports) get
    # the same inbound ports: compute them and the class key once, not per pod.
    seen: dict[tuple[Identity, tuple[int, ...], tuple[ContainerPort, ...]], tuple[str, InboundTuple]] = {}
    #: What inbound ports read besides the pod: TCPRoutes, HTTPRouteGroups, permissiveness,
    #: the local rate limits of UpstreamTrafficSettings.
    rules = (
        state.tcp_routes,
        state.http_route_groups,
        state.namespaces,
        state.mesh_configs,
        state.osm_mesh_configs,
        state.upstream_traffic_settings,
    )
    for pod in backends.meshed_pods:
        identity, uuid = memo.pod(pod)
        local = backends.local_services(pod)
        same = (identity, tuple(id(s) for s in local), pod.ports)
        found = seen.get(same)
        if found is None:
            reported = len(problems)
            inbound = memo.same(
                "inbound",
                memo.derived(
                    "inbound-of",
                    same,
                    (*local, *targets.naming(identity), *rules),
                    partial(inbound_ports, state, backends, targets, pod, identity, settings=settings),
                    report,
                    keep_if_reported=False,  # its problems name this pod
                ),
            )
            found = (memo.keyed("keys", (identity, inbound), partial(class_key, identity, inbound)), inbound)
            if len(problems) == reported:  # problems name the pod: others report theirs
                seen[same] = found
        key, inbound = found
        if key not in classes:
            classes[key] = memo.equal(
                "policies",
                ProxyPolicy(
                    identity,
                    inbound,
                    upstreams_of(identity),
                    config.egress_passthrough,
                    config.trust_domain,
                    listening,
                    egress.get(identity, ()),
                    class_ingress(inbound, ingress, report),
                ),
                key,
            )
        pod_classes[(pod.meta.namespace, pod.meta.name)] = key
        proxies.claim(uuid, pod)
    endpoints = memo.derived(
        "all endpoints", None, behind, partial(_endpoints, backends, memo.last_value("all endpoints")), report
    )
    tables = (
        memo.equal("classes", classes),
        memo.equal("pod classes", pod_classes),
        memo.equal("proxies", proxies.found),
    )
    memo.done()
    unique = tuple(dict.fromkeys(problems))
    return MeshPolicy(*tables, endpoints, unique, mesh_upstreams)


def _report_unsupported(state: MeshState, report: Report) -> None:
    """What the mesh declares that meshcp does not do: UDP routes, OSM settings and names."""
    for route in state.udp_routes:
        report(route.ref, "UDPRoute is not supported (meshcp proxies TCP and HTTP)")
    report_osm(state, report)


def _egress(state: MeshState, memo: BuildMemo, report: Report) -> EgressTable:
    inputs = (state.egresses, state.http_route_groups)
    return memo.derived("egress", None, inputs, partial(egress_table, state), report)


def _ingress(
    state: MeshState, backends: Backends, trust_domain: str, memo: BuildMemo, report: Report
) -> IngressTable:
    """Source Services' endpoints feed it: the pods and slices are inputs too (an
    endpoints-only round never moves them, see `endpoint_change`)."""
    inputs = (state.ingress_backends, *_behind(state), trust_domain)
    return memo.derived(
        "ingress", None, inputs, partial(ingress_table, state, backends, trust_domain), report
    )


def endpoints_moved(memo: BuildMemo, after: MeshState, policy: MeshPolicy) -> None:
    """`after` is an endpoints-only change (`endpoint_change`) away from the last state
    compiled, and `policy` its policy: what the memo derived from the pods and slices of
    the last build (the local-service index, the upstreams) holds for `after`'s too, and
    the endpoints are `policy`'s, so the next full build takes them over instead of
    walking the mesh again because an IP moved in between. O(1) here: the next build
    applies it (`_rebase`)."""
    memo.moved = (after, policy.endpoints)


def _rebase(memo: BuildMemo) -> None:
    if memo.moved is not None:
        state, endpoints = memo.moved
        memo.moved = None
        memo.rebase(("labels",), (state.pods,))
        memo.rebase(("local", "upstreams"), _behind(state))
        memo.rebase(("all endpoints",), _behind(state), endpoints)


def _listening(upstreams: tuple[Upstream, ...], report: Report) -> tuple[Upstream, ...]:
    """What the outbound listener matches of every mesh service (with pruning): ports,
    protocols and addresses, without what the listener does not read (identities, split
    routes, route stats), so that a TrafficSplit or a new server identity leaves every
    class's listener, and the classes that do not reach the service, as they were."""
    return tuple(Upstream(u.service, u.port, u.protocol, u.addresses, ()) for u in upstreams)


def _behind(state: MeshState) -> tuple[object, ...]:
    """What backs each service: the pods, services and slices (and which namespaces are
    meshed), as objects; MeshState keeps these index tuples while none of them changes."""
    return (state.pods, state.services, state.endpoint_slices, state.meshed_namespaces)


class _Proxies:
    """Proxy UUID -> (namespace, pod). UUIDs two pods claim are served to neither (a
    stream names its pod by UUID, so a duplicate would let one pod's proxy follow the
    other's configuration)."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self.found: dict[str, tuple[str, str]] = {}
        self._clashed: set[str] = set()

    def claim(self, uuid: str, pod: Pod) -> None:
        here = (pod.meta.namespace, pod.meta.name)
        other = self.found.get(uuid)
        if uuid in self._clashed or other is not None:
            if other is not None:
                self._report(
                    ObjectRef("Pod", *other), f"proxy UUID {uuid} is also claimed by pod {here[0]}/{here[1]}"
                )
            self._report(pod.ref, f"proxy UUID {uuid} is also claimed by another pod: neither is served")
            self.found.pop(uuid, None)
            self._clashed.add(uuid)
            return
        self.found[uuid] = here


def _endpoints(
    backends: Backends, last: Mapping[tuple[ServiceKey, int], tuple[Endpoint, ...]] | None, report: Report
) -> dict[tuple[ServiceKey, int], tuple[Endpoint, ...]]:
    """Every upstream port's endpoints (each tuple the last build's where equal, so the
    reconciler sees which moved by identity)."""
    endpoints: dict[tuple[ServiceKey, int], tuple[Endpoint, ...]] = {}
    for service in backends.services:
        for port in service.ports:
            if port.transport == "TCP":
                at = (ServiceKey(service.meta.namespace, service.meta.name), port.port)
                found = backends.endpoints(service, port)
                held = last.get(at) if last is not None else None
                endpoints[at] = held if held is not None and held == found else found
    return endpoints
