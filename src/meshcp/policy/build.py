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
from dataclasses import dataclass, field, replace

from meshcp.identity import Identity
from meshcp.model.core import ContainerPort, Pod
from meshcp.model.meta import ObjectRef
from meshcp.model.state import MeshState, Problem
from meshcp.policy.backends import Backends
from meshcp.policy.inbound import inbound_ports
from meshcp.policy.membership import proxy_uuid
from meshcp.policy.pruning import reachable
from meshcp.policy.targets import Targets
from meshcp.policy.types import Endpoint, InboundPort, ProxyPolicy, ServiceKey
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


def class_key(identity: Identity, inbound: tuple[InboundPort, ...]) -> str:
    """Proxies with the same identity and the same local ports share one configuration."""
    digest = hashlib.sha256(repr(inbound).encode()).hexdigest()[:10]
    return f"{identity}#{digest}"


@dataclass
class BuildMemo:
    """What a build derived that the next build may take over, kept by the caller: a
    state made by `with_changes` keeps the objects of unchanged pods, so their identity
    and proxy UUID (a SHA-1) are looked up, not derived again; the class key of equal
    inbound ports (a digest of their text) likewise. Holds only what the last build used."""

    pods: dict[int, tuple[Pod, Identity, str]] = field(default_factory=dict)
    keys: dict[tuple[Identity, InboundTuple], str] = field(default_factory=dict)
    _pods_used: dict[int, tuple[Pod, Identity, str]] = field(default_factory=dict)
    _keys_used: dict[tuple[Identity, InboundTuple], str] = field(default_factory=dict)

    def pod(self, pod: Pod) -> tuple[Identity, str]:
        """The pod's identity and proxy UUID."""
        held = self.pods.get(id(pod))
        if held is None or held[0] is not pod:
            held = (pod, Identity(pod.meta.namespace, pod.service_account), proxy_uuid(pod))
        self._pods_used[id(pod)] = held
        return held[1], held[2]

    def key(self, identity: Identity, inbound: InboundTuple) -> str:
        found = self.keys.get((identity, inbound))
        if found is None:
            found = class_key(identity, inbound)
        self._keys_used[(identity, inbound)] = found
        return found

    def done(self) -> None:
        """The build is over: keep what it used, for the next."""
        self.pods, self._pods_used = self._pods_used, {}
        self.keys, self._keys_used = self._keys_used, {}


def build_policies(
    state: MeshState, trust_domain: str | None = None, memo: BuildMemo | None = None
) -> MeshPolicy:
    """`trust_domain`: the CA's, the one source of the SPIFFE IDs that RBAC principals and
    SAN matchers name (certificates carry it); a MeshConfig `trustDomain` that differs is
    reported and not used. None: the MeshConfig's (offline work without a CA).
    `memo`: carried across builds by the caller (see `BuildMemo`); the result is the same."""
    problems: list[Problem] = []

    def report(ref: ObjectRef, reason: str) -> None:
        problems.append(Problem(ref, reason))

    for route in state.udp_routes:
        report(route.ref, "UDPRoute is not supported (meshcp proxies TCP and HTTP)")
    config = state.mesh_config
    if trust_domain is not None and trust_domain != config.trust_domain:
        for mesh_config in state.mesh_configs:
            report(
                mesh_config.ref,
                f"trustDomain {config.trust_domain!r} is not the CA's {trust_domain!r} (--trust-domain), "
                "which certificates carry: the CA's is used",
            )
        config = replace(config, trust_domain=trust_domain)
    backends = Backends(state)
    targets = Targets.of(state)
    mesh_upstreams = upstreams(state, backends, report, targets if config.per_route_stats else None)
    reachable_from = reachable(state, mesh_upstreams, targets) if config.prune_unreachable_upstreams else None
    classes: dict[str, ProxyPolicy] = {}
    pod_classes: dict[tuple[str, str], str] = {}
    proxies: dict[str, tuple[str, str]] = {}
    # The pods of one service (same identity, local services and container ports) get
    # the same inbound ports: compute them and the class key once, not per pod.
    seen: dict[tuple[Identity, tuple[int, ...], tuple[ContainerPort, ...]], tuple[str, InboundTuple]] = {}
    #: Proxy UUIDs two pods claim: neither is served (a stream names its pod by UUID, so a
    #: duplicate would let one pod's proxy follow the other's configuration).
    clashed: set[str] = set()

    def claim(uuid: str, pod: Pod) -> None:
        here = (pod.meta.namespace, pod.meta.name)
        other = proxies.get(uuid)
        if uuid in clashed or other is not None:
            if other is not None:
                report(
                    ObjectRef("Pod", *other), f"proxy UUID {uuid} is also claimed by pod {here[0]}/{here[1]}"
                )
            report(pod.ref, f"proxy UUID {uuid} is also claimed by another pod: neither is served")
            proxies.pop(uuid, None)
            clashed.add(uuid)
            return
        proxies[uuid] = here

    memo = memo if memo is not None else BuildMemo()
    for pod in backends.meshed_pods:
        identity, uuid = memo.pod(pod)
        same = (identity, tuple(id(s) for s in backends.local_services(pod)), pod.ports)
        found = seen.get(same)
        if found is None:
            reported = len(problems)
            inbound = inbound_ports(state, backends, targets, pod, identity, report=report)
            found = (memo.key(identity, inbound), inbound)
            if len(problems) == reported:  # problems name the pod: others report theirs
                seen[same] = found
        key, inbound = found
        if key not in classes:
            classes[key] = ProxyPolicy(
                identity,
                inbound,
                mesh_upstreams if reachable_from is None else reachable_from(identity),
                config.egress_passthrough,
                config.trust_domain,
                None if reachable_from is None else mesh_upstreams,
            )
        pod_classes[(pod.meta.namespace, pod.meta.name)] = key
        claim(uuid, pod)
    memo.done()
    endpoints = {
        (ServiceKey(s.meta.namespace, s.meta.name), p.port): backends.endpoints(s, p)
        for s in backends.services
        for p in s.ports
        if p.transport == "TCP"
    }
    unique = tuple(dict.fromkeys(problems))
    return MeshPolicy(classes, pod_classes, proxies, endpoints, unique)
