"""May pod SRC reach pod DST, and which object decides (pure): `meshcp policy check`.

Answered from the policy the proxies are compiled from (`build.build_policies`): DST's
class and its inbound ports, and for each port the TrafficTargets that name DST's identity,
each asked on its own with the builder's `targets.allowed`, so that the answer names the
TrafficTarget, the route and the match that let the request through, or says why none does.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from meshcp.identity import Identity
from meshcp.model.core import Pod, ServicePort
from meshcp.model.meta import ObjectRef
from meshcp.model.osm_policy import Egress, EgressPort
from meshcp.model.regex import full_match
from meshcp.model.smi import HTTPMatch, TrafficTarget
from meshcp.model.state import MeshState
from meshcp.policy.build import MeshPolicy
from meshcp.policy.membership import is_meshed
from meshcp.policy.targets import Targets, allowed
from meshcp.policy.types import InboundPort

ALLOWED, DENIED, SOME = "allowed", "denied", "some requests"


@dataclass(frozen=True)
class Request:
    """What is asked about: a port (None: each), an HTTP path, method and headers (None:
    any request)."""

    port: int | None = None
    path: str | None = None
    method: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def specific(self) -> bool:
        return self.path is not None or self.method is not None or bool(self.headers)


@dataclass(frozen=True)
class Verdict:
    """The answer for one port of DST: allowed, denied, or (no request given) allowed for
    some requests only; `by` names what decides, `reason` says it in a sentence."""

    service: str
    port: int
    protocol: str
    decision: str
    reason: str
    by: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "service": self.service,
            "port": self.port,
            "protocol": self.protocol,
            "decision": self.decision,
            "reason": self.reason,
            "decided_by": list(self.by),
        }


class CheckError(ValueError):
    """The question cannot be asked of these manifests (a pod that is not there)."""


def check(
    state: MeshState, policy: MeshPolicy, src: tuple[str, str], dst: tuple[str, str], request: Request
) -> list[Verdict]:
    """One verdict per inbound port of DST (the one asked for, with `request.port`)."""
    client, server = _pod(state, src), _pod(state, dst)
    meshed = state.meshed_namespaces
    if not is_meshed(server, meshed):
        config = state.mesh_config
        if not is_meshed(client, meshed):
            return [
                Verdict(
                    "-",
                    request.port or 0,
                    "-",
                    ALLOWED,
                    "neither pod is in the mesh: meshcp does not police this traffic",
                )
            ]
        egress = _egresses(state, client, server.ip, request.port)
        if egress and not config.egress_passthrough:
            return [_by_egress(src, dst, egress, request.port)]
        decision = ALLOWED if config.egress_passthrough else DENIED
        return [
            Verdict(
                "-",
                request.port or 0,
                "-",
                decision,
                f"{_name(dst)} is not in the mesh: {_name(src)}'s sidecar sends traffic out of the mesh only "
                f"with egress passthrough, which is {'on' if config.egress_passthrough else 'off'}, "
                "or as an OSM Egress allows (none names this address and port)",
                _mesh_config_names(state),
            )
        ]
    key = policy.pod_classes.get(dst)
    inbound = policy.classes[key].inbound if key is not None else ()
    ports = [p for p in inbound if request.port in (None, p.port, p.target_port)]
    if not ports:
        served = ", ".join(f"{p.service}:{p.port}" for p in inbound) or "none"
        raise CheckError(
            f"{_name(dst)} serves no port {request.port} (its services' ports: {served})"
            if request.port is not None
            else f"{_name(dst)} backs no Service port: nothing reaches it through the mesh"
        )
    if not is_meshed(client, meshed):
        return [
            Verdict(
                str(p.service),
                p.port,
                p.protocol,
                DENIED,
                f"{_name(src)} is not in the mesh: {_name(dst)}'s sidecar accepts only mTLS "
                "from mesh identities",
            )
            for p in ports
        ]
    source = Identity(client.meta.namespace, client.service_account)
    destination = Identity(server.meta.namespace, server.service_account)
    targets = Targets.of(state).naming(destination)
    return [
        _port(state, p, source=source, destination=destination, targets=targets, request=request)
        for p in ports
    ]


def _port(
    state: MeshState,
    port: InboundPort,
    *,
    source: Identity,
    destination: Identity,
    targets: list[TrafficTarget],
    request: Request,
) -> Verdict:
    def verdict(decision: str, reason: str, by: Iterable[str] = ()) -> Verdict:
        return Verdict(
            str(port.service), port.port, port.protocol, decision, reason, tuple(dict.fromkeys(by))
        )

    if port.any_source:
        namespace = port.service.namespace
        return verdict(
            ALLOWED,
            f"namespace {namespace} is permissive: every mesh identity may",
            (f"permissive mode of namespace {namespace}",),
        )
    service_port = _service_port(state, port)
    every: list[str] = []  # targets allowing every request (or connection) of the port
    matching: list[str] = []  # targets with a match that allows the request
    some: list[str] = []  # targets with matches, when no request was given
    covering: list[str] = []  # targets naming the source that cover this port at all
    lacking: list[str] = []  # matches the request misses only for want of headers
    for target in targets:
        rules, tcp_sources = allowed(
            state, [target], service_port, port.target_port, lambda ref, reason: None
        )
        name = f"TrafficTarget {target.meta.name}"
        if source in tcp_sources:
            every.append(f"{name} ({_routes(target, 'TCPRoute')})")
        for rule in rules:
            if source not in rule.sources:
                continue
            covering.append(name)
            if rule.match is None:
                every.append(f"{name} ({_routes(target, 'TCPRoute')}: every request)")
            elif _matches(rule.match, request):
                group = _group_of(state, target, rule.match)
                (matching if request.specific else some).append(
                    f"{name} (HTTPRouteGroup {group}, match {rule.match.name})"
                )
            elif rule.match.headers and _matches(rule.match, replace(request, headers={}), headers=False):
                lacking.append(
                    f"match {rule.match.name} needs headers {', '.join(sorted(rule.match.headers))}"
                )

    if every or matching:
        return verdict(ALLOWED, f"{source} is a source of a TrafficTarget that allows it", every + matching)
    if some:
        return verdict(
            SOME, "only requests matching these matches (--path, --method, --header ask about one)", some
        )
    if not targets:
        return verdict(DENIED, f"no TrafficTarget names {destination} as destination (default deny)")
    named = [t for t in targets if any(Identity(s.namespace, s.name) == source for s in t.sources)]
    if not named:
        return verdict(DENIED, f"no TrafficTarget to {destination} names {source} as a source (default deny)")
    if covering:
        asked = " ".join(filter(None, (request.method, request.path))) or "this request"
        hint = f" ({'; '.join(dict.fromkeys(lacking))})" if lacking else ""
        return verdict(
            DENIED, f"TrafficTargets name {source}, but none of their matches allows {asked}{hint}", covering
        )
    return verdict(
        DENIED,
        f"TrafficTargets name {source}, but none of their rules covers port {port.port} ({port.protocol})",
        (f"TrafficTarget {t.meta.name}" for t in named),
    )


def _matches(match: HTTPMatch, request: Request, *, headers: bool = True) -> bool:
    """Whether the request is one `match` allows (`headers`: whether its headers count)."""
    if (
        request.path is not None
        and match.path_regex
        and not full_match(f"(?:{match.path_regex}).*", request.path)
    ):
        return False
    if (
        request.method is not None
        and match.methods
        and "*" not in match.methods
        and request.method.upper() not in match.methods
    ):
        return False
    for name, pattern in (match.headers or {}).items() if headers else ():
        value = request.headers.get(name)
        if request.specific and (value is None or not full_match(pattern, value)):
            return False
    return True


def _routes(target: TrafficTarget, kind: str) -> str:
    names = [rule.name for rule in target.rules if rule.kind == kind]
    return f"{kind} {', '.join(names)}" if names else "its rules"


def _group_of(state: MeshState, target: TrafficTarget, match: HTTPMatch) -> str:
    for rule in target.rules:
        group = (
            state.http_route_groups.get((target.meta.namespace, rule.name))
            if rule.kind == "HTTPRouteGroup"
            else None
        )
        if group is not None and match in group.matches:
            return f"{target.meta.namespace}/{rule.name}"
    return "?"


def _service_port(state: MeshState, port: InboundPort) -> ServicePort:
    service = state.service_index[(port.service.namespace, port.service.name)]
    return next(p for p in service.ports if p.port == port.port)


def _egresses(
    state: MeshState, client: Pod, address: str, port: int | None
) -> list[tuple[Egress, EgressPort]]:
    """The OSM Egresses (and their ports) that let `client`'s identity reach `address` on
    `port` (None: any of their ports), by address and port: hosts and SNI are the
    request's, which this question does not carry."""
    identity = (client.meta.namespace, client.service_account)
    found = []
    for egress in state.egresses:
        if not any((s.namespace, s.name) == identity for s in egress.sources):
            continue
        if egress.ip_addresses and not _in_ranges(address, egress.ip_addresses):
            continue
        found += [(egress, p) for p in egress.ports if port in (None, p.number)]
    return found


def _in_ranges(address: str, ranges: Iterable[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(cidr) for cidr in ranges)


def _by_egress(
    src: tuple[str, str], dst: tuple[str, str], egress: list[tuple[Egress, EgressPort]], port: int | None
) -> Verdict:
    """What OSM Egresses allow to a destination outside the mesh: tcp every connection,
    http and https only the hosts (Host, SNI) they name."""
    ports = ", ".join(
        f"{p.number}/{p.protocol}" + (f" to {', '.join(e.hosts)}" if e.hosts and p.protocol != "tcp" else "")
        for e, p in egress
    )
    whole = all(p.protocol == "tcp" or (p.protocol == "https" and not e.hosts) for e, p in egress)
    return Verdict(
        "-",
        port or 0,
        "-",
        ALLOWED if whole else SOME,
        f"{_name(dst)} is not in the mesh: {_name(src)}'s Egresses allow {ports}",
        tuple(dict.fromkeys(str(e.ref) for e, _ in egress)),
    )


def _pod(state: MeshState, pod: tuple[str, str]) -> Pod:
    found = state.get(ObjectRef("Pod", *pod))
    if not isinstance(found, Pod):
        raise CheckError(f"there is no pod {_name(pod)} in the manifests")
    return found


def _name(pod: tuple[str, str]) -> str:
    return f"{pod[0]}/{pod[1]}"


def _mesh_config_names(state: MeshState) -> tuple[str, ...]:
    """The MeshConfig objects the mesh's settings come from (meshcp's, then OSM's)."""
    used = [str(config.ref) for config in state.mesh_configs[:1]]
    used += [str(config.ref) for config in state.osm_mesh_configs[:1]]
    return tuple(used) or ("MeshConfig (defaults)",)
