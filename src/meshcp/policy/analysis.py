"""Every problem meshcp knows about a mesh, each with a stable code, a severity, the object
and the field it is in: what `meshcp analyze` prints and `compile` counts (pure).

The policy builder reports what it has to skip while it builds, and only for what it
builds: a TrafficTarget is looked at only for identities that have pods. This looks at
every object, whether or not a pod uses it yet, and says also what is legal but surely
not meant: a TrafficTarget that allows nothing or that another one already covers, a port
whose protocol was guessed. The builder's own problems are merged in (each under its
code), so nothing it reports is lost; the codes are documented in docs/cli.md.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace

from meshcp.identity import Identity
from meshcp.model.core import PROTOCOLS, Service, ServicePort
from meshcp.model.locate import path_of
from meshcp.model.meta import ObjectRef
from meshcp.model.read_core import SERVICE_NAME_LABEL, protocol_decided
from meshcp.model.smi import HTTPMatch, TrafficTarget
from meshcp.model.state import MeshState, Problem
from meshcp.policy.backends import Backends, target_port
from meshcp.policy.build import MeshPolicy, build_policies
from meshcp.policy.findings import ERROR, Finding
from meshcp.policy.membership import PROXY_UUID_LABEL, is_meshed
from meshcp.policy.targets import allowed

#: Namespaces every cluster has, declared or not.
BUILTIN_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


def analyze(
    state: MeshState, trust_domain: str | None = None, policy: MeshPolicy | None = None
) -> list[Finding]:
    """Every finding about `state`, sorted by object, then code. `trust_domain`: the CA's,
    to check MeshConfig's against (None: not checked). `policy`: the state's, if built."""
    found = [_source_problem(problem) for problem in state.problems]
    checks = _Checks(state)
    checks.run()
    found.extend(checks.found)
    built = build_policies(state, trust_domain) if policy is None else policy
    found.extend(merged_problems(built.problems, checks.found))
    unique = {(f.code, f.ref, f.field, f.message): f for f in found}
    return sorted(unique.values(), key=lambda f: (f.ref, f.code, f.field, f.message))


def _source_problem(problem: Problem) -> Finding:
    """A problem a source reported (syntax, invalid field, duplicate), under its code."""
    reason = problem.reason
    if problem.ref.kind == "File":
        code = "MCP0005" if problem.ref.name == "." else "MCP0001"
        return Finding(code, problem.ref, reason, location=problem.location)
    if reason.startswith(("unsupported kind", "unsupported apiVersion")):
        return Finding("MCP0003", problem.ref, reason, location=problem.location)
    if "defined again" in reason:
        return Finding("MCP0004", problem.ref, reason, location=problem.location)
    field = path_of(reason)
    message = reason[len(field) + 2 :] if field else reason
    return Finding("MCP0002", problem.ref, message, field, problem.location)


#: The builder's messages, by code; one this module also finds is dropped as a duplicate.
_BUILT: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), code)
    for pattern, code in (
        (r"^(TCPRoute|HTTPRouteGroup) .* does not exist", "MCP0103"),
        (r"^(TCPRoute|HTTPRouteGroup) .* is invalid", "MCP0104"),
        (r"^HTTPRouteGroup .* has no match named", "MCP0105"),
        (r"UDPRoute", "MCP0205"),
        (r"^proxy UUID .* claimed", "MCP0206"),
        (r"^trustDomain .* is not the CA's", "MCP0207"),
        (r": not supported by meshcp, ignored", "MCP0210"),
        (r"\(meshcp's MeshConfig wins where both set a setting\)$", "MCP0211"),
        (r"^not used: .* is the OSM MeshConfig read", "MCP0212"),
        (r"disagree: meshcp's \S+ is used$", "MCP0213"),
        (r"^port \d+: pod .* has no port", "MCP0107"),
        (r"has no clusterIP", "MCP0303"),
        (r"lacks the apex port", "MCP0401"),
        (r"(apex|backend) service .* does not exist", "MCP0402"),
        (r"several TrafficSplits", "MCP0403"),
        (r"weights are zero", "MCP0404"),
    )
)
#: Codes that describe one fault two ways.
_SAME = {"MCP0103": {"MCP0103", "MCP0104"}, "MCP0104": {"MCP0103", "MCP0104"}}


def merged_problems(problems: Iterable[Problem], own: list[Finding]) -> list[Finding]:
    mine = {(f.ref, f.code) for f in own}
    out = []
    for problem in problems:
        code = next((code for pattern, code in _BUILT if pattern.search(problem.reason)), "MCP0900")
        if any((problem.ref, same) in mine for same in _SAME.get(code, {code})):
            continue
        reason, field = problem.reason, ""
        if code in _WITH_FIELD and (field := path_of(reason)):
            reason = reason[len(field) + 2 :]
        out.append(Finding(code, problem.ref, reason, field, problem.location))
    return out


#: Builder codes whose message starts with the field it is about.
_WITH_FIELD = frozenset({"MCP0210", "MCP0211"})


class _Checks:
    """The checks of one state; each appends to `found`."""

    def __init__(self, state: MeshState) -> None:
        self.state = state
        self.backends = Backends(state)
        self.found: list[Finding] = []
        self.namespaces = {ns.meta.name for ns in state.namespaces} | BUILTIN_NAMESPACES
        self.accounts = {(a.meta.namespace, a.meta.name) for a in state.service_accounts}
        self.invalid = {problem.ref for problem in state.problems}

    def add(self, code: str, ref: ObjectRef, message: str, field: str = "") -> None:
        self.found.append(Finding(code, ref, message, field))

    def run(self) -> None:
        self.mesh_configs()
        for target in self.state.traffic_targets:
            self.target_references(target)
        self.target_grants()
        self.services()
        self.splits()
        self.pods()
        self.endpoint_slices()

    def account_exists(self, namespace: str, name: str) -> bool:
        # Kubernetes makes `default` in every namespace.
        return (namespace, name) in self.accounts or (name == "default" and namespace in self.namespaces)

    def mesh_configs(self) -> None:
        configs = self.state.mesh_configs
        for extra in configs[1:]:
            self.add("MCP0208", extra.ref, f"MeshConfig {configs[0].meta.name} is used, not this one")

    def target_references(self, target: TrafficTarget) -> None:
        ns = target.meta.namespace
        if ns not in self.state.meshed_namespaces:
            self.add(
                "MCP0204", target.ref, f"namespace {ns} is not in the mesh: nothing enforces this target"
            )
        subjects = [("spec.destination", target.destination)]
        subjects += [(f"spec.sources[{i}]", source) for i, source in enumerate(target.sources)]
        for where, subject in subjects:
            if subject.namespace not in self.namespaces:
                self.add(
                    "MCP0102",
                    target.ref,
                    f"namespace {subject.namespace} is not known (it does not exist, or is not in the mesh)",
                    f"{where}.namespace",
                )
            elif not self.account_exists(subject.namespace, subject.name):
                self.add(
                    "MCP0101",
                    target.ref,
                    f"ServiceAccount {subject.namespace}/{subject.name} does not exist",
                    f"{where}.name",
                )
            elif where != "spec.destination" and subject.namespace not in self.state.meshed_namespaces:
                self.add(
                    "MCP0209",
                    target.ref,
                    f"namespace {subject.namespace} is not in the mesh: its pods have no mesh identity",
                    f"{where}.namespace",
                )
        for index, rule in enumerate(target.rules):
            field = f"spec.rules[{index}]"
            if rule.kind == "UDPRoute":
                self.add(
                    "MCP0205", target.ref, f"rule on UDPRoute {ns}/{rule.name} is skipped", f"{field}.kind"
                )
                continue
            if not self.route_exists(target.ref, rule.kind, ns, rule.name, f"{field}.name"):
                continue
            if rule.kind == "HTTPRouteGroup":
                group = self.state.http_route_groups[(ns, rule.name)]
                names = {match.name for match in group.matches}
                for position, name in enumerate(rule.matches):
                    if name not in names:
                        known = ", ".join(sorted(names)) or "none"
                        self.add(
                            "MCP0105",
                            target.ref,
                            f"HTTPRouteGroup {ns}/{rule.name} has no match named {name!r} (it has: {known})",
                            f"{field}.matches[{position}]",
                        )

    def route_exists(self, ref: ObjectRef, kind: str, ns: str, name: str, field: str) -> bool:
        routes: Mapping[tuple[str, str], object] = (
            self.state.http_route_groups if kind == "HTTPRouteGroup" else self.state.tcp_routes
        )
        if (ns, name) in routes:
            return True
        if ObjectRef(kind, ns, name) in self.invalid:
            self.add(
                "MCP0104", ref, f"{kind} {ns}/{name} is invalid (see its own problem); rule skipped", field
            )
        else:
            self.add("MCP0103", ref, f"{kind} {ns}/{name} does not exist; rule skipped", field)
        return False

    def target_grants(self) -> None:
        """Per destination identity: targets allowing nothing, and targets another covers."""
        ports: dict[Identity, dict[tuple[str, str, int], tuple[ServicePort, int]]] = defaultdict(dict)
        for pod in self.backends.meshed_pods:
            identity = Identity(pod.meta.namespace, pod.service_account)
            for service in self.backends.local_services(pod):
                for port in service.ports:
                    number = target_port(port, pod)
                    if port.transport == "TCP" and number is not None:
                        ports[identity][(service.meta.namespace, service.meta.name, port.port)] = (
                            port,
                            number,
                        )
        by_destination: dict[Identity, list[TrafficTarget]] = defaultdict(list)
        for target in self.state.traffic_targets:
            destination = Identity(target.destination.namespace, target.destination.name)
            by_destination[destination].append(target)
        erring = {f.ref for f in self.found if f.severity == ERROR}
        for destination, targets in by_destination.items():
            served = ports.get(destination)
            if not served:
                if self.account_exists(destination.namespace, destination.service_account):
                    for target in targets:
                        self.add(
                            "MCP0203",
                            target.ref,
                            f"no meshed pod runs as {destination}: the target applies to nothing yet",
                            "spec.destination.name",
                        )
                continue
            grants = {target.ref: self.grants(target, served) for target in targets}
            described = ", ".join(
                f"{key[1]}:{port}/{sp.protocol}"
                for key, (sp, _) in sorted(served.items())
                for port in (key[2],)
            )
            for target in targets:
                if not grants[target.ref] and target.ref not in erring:
                    self.add(
                        "MCP0201",
                        target.ref,
                        f"no rule applies to a port the pods of {destination} serve ({described})",
                        "spec.rules",
                    )
            for target in targets:
                mine = grants[target.ref]
                for other in targets:
                    if other is target or not mine:
                        continue
                    theirs = grants[other.ref]
                    if _covers(theirs, mine) and (not _covers(mine, theirs) or other.ref < target.ref):
                        self.add(
                            "MCP0202",
                            target.ref,
                            f"TrafficTarget {other.meta.name} already allows everything this one allows",
                        )
                        break

    def grants(
        self, target: TrafficTarget, served: Mapping[tuple[str, str, int], tuple[ServicePort, int]]
    ) -> frozenset[tuple[tuple[str, str, int], Identity, HTTPMatch | None]]:
        """(port, source, HTTP match or None for every request) the target allows."""
        out: set[tuple[tuple[str, str, int], Identity, HTTPMatch | None]] = set()
        for key, (port, number) in served.items():
            rules, tcp_sources = allowed(self.state, [target], port, number, lambda ref, reason: None)
            for rule in rules:
                out.update((key, source, rule.match) for source in rule.sources)
            out.update((key, source, None) for source in tcp_sources)
        return frozenset(out)

    def services(self) -> None:
        for service in self.state.services:
            if service.meta.namespace not in self.state.meshed_namespaces:
                continue
            for index, port in enumerate(service.ports):
                self.port_protocol(service, index, port)

    def port_protocol(self, service: Service, index: int, port: ServicePort) -> None:
        if port.transport != "TCP":
            return
        field = f"spec.ports[{index}]"
        known = ", ".join(PROTOCOLS)
        if not protocol_decided(port.app_protocol, port.name):
            said = f"name {port.name!r}" if port.name else "no name"
            self.add(
                "MCP0301",
                service.ref,
                f"port {port.port} has {said} and no appProtocol meshcp knows: http is assumed "
                f"(set appProtocol, or a name starting with one of {known} and '-')",
                f"{field}.name" if port.name else f"{field}.port",
            )
        elif port.app_protocol and port.app_protocol.lower() not in PROTOCOLS:
            self.add(
                "MCP0302",
                service.ref,
                f"port {port.port}: appProtocol {port.app_protocol!r} is not one of {known}; "
                f"the name makes it {port.protocol}",
                f"{field}.appProtocol",
            )

    def splits(self) -> None:
        services = self.state.service_index
        by_apex: dict[tuple[str, str], list[str]] = defaultdict(list)
        for split in self.state.traffic_splits:
            by_apex[(split.meta.namespace, split.service)].append(split.meta.name)
        for split in self.state.traffic_splits:
            ns = split.meta.namespace
            sharing = by_apex[(ns, split.service)]
            if len(sharing) > 1:
                self.add(
                    "MCP0403",
                    split.ref,
                    f"TrafficSplits {', '.join(sharing)} share the apex service {ns}/{split.service}",
                    "spec.service",
                )
            apex = services.get((ns, split.service))
            if apex is None:
                self.add(
                    "MCP0402", split.ref, f"apex service {ns}/{split.service} does not exist", "spec.service"
                )
            if split.backends and sum(b.weight for b in split.backends) <= 0:
                self.add(
                    "MCP0404",
                    split.ref,
                    "all backend weights are zero: traffic goes to the apex service",
                    "spec.backends",
                )
            for index, backend in enumerate(split.backends):
                field = f"spec.backends[{index}].service"
                service = services.get((ns, backend.service))
                if service is None:
                    self.add(
                        "MCP0402", split.ref, f"backend service {ns}/{backend.service} does not exist", field
                    )
                elif apex is not None:
                    missing = sorted({p.port for p in apex.ports} - {p.port for p in service.ports})
                    if missing:
                        self.add(
                            "MCP0401",
                            split.ref,
                            f"backend {ns}/{backend.service} lacks the apex port(s) {missing}; "
                            "the split does not apply",
                            field,
                        )
            for index, match in enumerate(split.matches):
                self.route_exists(split.ref, match.kind, ns, match.name, f"spec.matches[{index}].name")

    def pods(self) -> None:
        seen: dict[str, ObjectRef] = {}
        for pod in self.state.pods:
            if not is_meshed(pod, self.state.meshed_namespaces):
                continue
            if not self.account_exists(pod.meta.namespace, pod.service_account):
                self.add(
                    "MCP0106",
                    pod.ref,
                    f"ServiceAccount {pod.meta.namespace}/{pod.service_account} does not exist",
                    "spec.serviceAccountName",
                )
            label = pod.meta.labels.get(PROXY_UUID_LABEL)
            if label:
                other = seen.get(label)
                if other is not None:
                    self.add(
                        "MCP0206",
                        pod.ref,
                        f"proxy UUID {label} is also claimed by {other}: neither is served",
                        f"metadata.labels.{PROXY_UUID_LABEL}",
                    )
                seen[label] = pod.ref

    def endpoint_slices(self) -> None:
        services = self.state.service_index
        for endpoint_slice in self.state.endpoint_slices:
            ns = endpoint_slice.meta.namespace
            if (ns, endpoint_slice.service) not in services:
                self.add(
                    "MCP0108",
                    endpoint_slice.ref,
                    f"Service {ns}/{endpoint_slice.service} does not exist: its endpoints reach no one",
                    f"metadata.labels.{SERVICE_NAME_LABEL}",
                )


def _covers(
    big: frozenset[tuple[tuple[str, str, int], Identity, HTTPMatch | None]],
    small: frozenset[tuple[tuple[str, str, int], Identity, HTTPMatch | None]],
) -> bool:
    return all(grant in big or (grant[0], grant[1], None) in big for grant in small)


def with_locations(findings: Iterable[Finding], located: Mapping[ObjectRef, str]) -> list[Finding]:
    """`findings`, each without a location given the `file:line` of its object (if known)."""
    return [
        f if f.location or f.ref not in located else replace(f, location=located[f.ref]) for f in findings
    ]
