"""OSM's Egress: what each client identity may reach outside the mesh.

An Egress belongs to its sources: only their classes get its filter chains, in their
outbound listener. Several Egresses naming one identity add up; per port and protocol
they become one `EgressRule` (the union of their addresses and hosts), because the
listener has one place per port for them. A port that is tcp for an identity carries every
byte to the allowed addresses, so that identity's http and https Egresses on the same
port add nothing there: they are reported and the tcp one decides.
"""

from __future__ import annotations

from collections import defaultdict

from meshcp.identity import Identity
from meshcp.model.osm_policy import Egress
from meshcp.model.smi import HTTPMatch
from meshcp.model.state import MeshState
from meshcp.policy.types import EgressHost, EgressRule, Report

EgressTable = dict[Identity, tuple[EgressRule, ...]]


class _Port:
    """What the Egresses of one identity allow on one port with one protocol, so far."""

    def __init__(self) -> None:
        self.any_address = False
        self.ranges: set[str] = set()
        self.any_sni = False
        self.sni: set[str] = set()
        #: host -> its matches (None: every request)
        self.hosts: dict[str, set[HTTPMatch] | None] = {}
        self.egresses: list[Egress] = []

    def add(self, egress: Egress, protocol: str, matches: tuple[HTTPMatch, ...] | None) -> None:
        self.egresses.append(egress)
        if egress.ip_addresses:
            self.ranges.update(egress.ip_addresses)
        else:
            self.any_address = True
        if protocol == "https":
            if egress.hosts:
                self.sni.update(egress.hosts)
            else:
                self.any_sni = True
        if protocol == "http":
            for host in egress.hosts:
                if matches is None:
                    self.hosts[host] = None
                    continue
                held = self.hosts.setdefault(host, set())
                if held is not None:
                    held.update(matches)

    def rule(self, port: int, protocol: str) -> EgressRule | None:
        ranges = () if self.any_address else tuple(sorted(self.ranges))
        hosts = tuple(
            EgressHost(name, None if found is None else tuple(sorted(found, key=_match_order)))
            for name, found in sorted(self.hosts.items())
            if found is None or found
        )
        if protocol == "http" and not hosts:
            return None  # every host's matches name route groups that do not exist
        sni = () if self.any_sni else tuple(sorted(self.sni))
        return EgressRule(port, protocol, ranges, hosts, sni)


def _match_order(match: HTTPMatch) -> tuple[str, str, tuple[str, ...], tuple[tuple[str, str], ...]]:
    headers = tuple(sorted((match.headers or {}).items()))
    return (match.name, match.path_regex, match.methods, headers)


def egress_table(state: MeshState, report: Report) -> EgressTable:
    """Each source identity's rules, by port then protocol. `matches` naming a missing
    HTTPRouteGroup are reported; the group's requests are not allowed until it exists."""
    by_identity: dict[Identity, dict[tuple[int, str], _Port]] = defaultdict(dict)
    for egress in state.egresses:
        matches = _matches(state, egress, report)
        for source in egress.sources:
            ports = by_identity[Identity(source.namespace, source.name)]
            for port in egress.ports:
                found = ports.setdefault((port.number, port.protocol), _Port())
                found.add(egress, port.protocol, matches if port.protocol == "http" else None)
    table: EgressTable = {}
    for identity, ports in sorted(by_identity.items()):
        tcp = {number for number, protocol in ports if protocol == "tcp"}
        rules = []
        for (number, protocol), found in sorted(ports.items()):
            if protocol != "tcp" and number in tcp:
                for egress in found.egresses:
                    report(
                        egress.ref,
                        f"ports: {number} is tcp for {identity} in another Egress, which allows every "
                        f"byte to its addresses; this {protocol} rule adds nothing there",
                    )
                continue
            rule = found.rule(number, protocol)
            if rule is not None:
                rules.append(rule)
        table[identity] = tuple(rules)
    return table


def _matches(state: MeshState, egress: Egress, report: Report) -> tuple[HTTPMatch, ...] | None:
    """The requests the Egress's HTTPRouteGroups match (None: no `matches`, every request)."""
    if not egress.matches:
        return None
    found: list[HTTPMatch] = []
    for name in egress.matches:
        group = state.http_route_groups.get((egress.meta.namespace, name))
        if group is None:
            report(
                egress.ref,
                f"matches: HTTPRouteGroup {egress.meta.namespace}/{name} does not exist; its requests "
                "are allowed once it does",
            )
            continue
        found.extend(group.matches)
    return tuple(found)
