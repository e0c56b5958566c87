"""The sidecar's traffic redirection: the init container's iptables rules (pure).

The chains are OSM's, so operators who debugged OSM pods with `iptables -t nat -L` find
what they expect:

- `PREROUTING → PROXY_INBOUND → PROXY_IN_REDIRECT`: inbound TCP goes to Envoy's inbound
  listener (15003), except the ports that must stay reachable without mTLS: Envoy's
  Prometheus listener (15010), the probe listeners (15901-15903) and the user's exclusions.
- `OUTPUT → PROXY_OUTPUT → PROXY_REDIRECT`: outbound TCP of the application goes to Envoy's
  outbound listener (15001). Envoy's own traffic (UID 1500) is never redirected, or it would
  loop back into itself; neither is traffic to loopback addresses, which never leaves the
  pod. Traffic through `lo` to the pod's own IP *is* redirected: it is addressed like any
  other destination and gets the same policy.

Only IPv4 is redirected (iptables, not ip6tables). The rules are rendered as one
`iptables-restore` script for the `nat` table, applied with `--noflush` so that rules a CNI
plugin put in the pod's namespace survive.

The exclusion lists come from MeshConfig and from pod annotations; `redirection_for` merges
them and names the annotation and value of anything it cannot read.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

from meshcp.model.meshconfig import MeshConfig
from meshcp.model.osm_names import lookup
from meshcp.sidecar.ports import (
    ADMIN_PORT,
    INBOUND_PORT,
    OUTBOUND_PORT,
    PROBE_PORTS,
    PROMETHEUS_PORT,
    PROXY_UID,
)

OUTBOUND_PORT_EXCLUSIONS = "meshcp.dev/outbound-port-exclusion-list"
INBOUND_PORT_EXCLUSIONS = "meshcp.dev/inbound-port-exclusion-list"
OUTBOUND_IP_EXCLUSIONS = "meshcp.dev/outbound-ip-range-exclusion-list"
OUTBOUND_IP_INCLUSIONS = "meshcp.dev/outbound-ip-range-inclusion-list"

#: Every 127/8 address is on the pod's own `lo`: such traffic never reaches the mesh.
LOOPBACK = IPv4Network("127.0.0.0/8")

CHAINS = ("PROXY_INBOUND", "PROXY_IN_REDIRECT", "PROXY_OUTPUT", "PROXY_REDIRECT")

_PORT = re.compile(r"\d{1,5}")


class ExclusionError(ValueError):
    """An exclusion or inclusion list that cannot be read; names where it came from."""

    def __init__(self, source: str, value: str, reason: str) -> None:
        super().__init__(f"{source}: {reason} (value {value!r})")
        self.source = source
        self.value = value
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Redirection:
    """What the init container sets up in a pod's network namespace.

    `outbound_ip_inclusions`, when not empty, limits outbound redirection to those ranges;
    `outbound_ip_exclusions` win over inclusions. Port exclusions are destination ports.
    """

    proxy_uid: int = PROXY_UID
    inbound_port: int = INBOUND_PORT
    outbound_port: int = OUTBOUND_PORT
    inbound_port_exclusions: tuple[int, ...] = ()
    outbound_port_exclusions: tuple[int, ...] = ()
    outbound_ip_exclusions: tuple[IPv4Network, ...] = ()
    outbound_ip_inclusions: tuple[IPv4Network, ...] = ()

    def __post_init__(self) -> None:
        ports = (
            self.inbound_port,
            self.outbound_port,
            *self.inbound_port_exclusions,
            *self.outbound_port_exclusions,
        )
        for port in ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is out of range 1-65535")
        if self.proxy_uid < 0:
            raise ValueError(f"invalid proxy UID {self.proxy_uid}")
        for network in (*self.outbound_ip_exclusions, *self.outbound_ip_inclusions):
            if not isinstance(network, IPv4Network):
                raise ValueError(f"{network!r} is not an IPv4 network")

    @property
    def reserved_inbound_ports(self) -> tuple[int, ...]:
        """Inbound ports never redirected: the sidecar's own plaintext listeners.

        The outbound listener's port is *not* among them: reached from outside it would let
        other pods use this Envoy as an open proxy (and loop through passthrough).
        """
        return tuple(sorted({ADMIN_PORT, self.inbound_port, PROMETHEUS_PORT, *PROBE_PORTS.values()}))

    @property
    def reserved_outbound_ports(self) -> tuple[int, ...]:
        """Outbound ports never redirected: other sidecars' plaintext listeners (a meshed
        Prometheus scraping 15010, probes) and the proxy ports themselves."""
        ports = {ADMIN_PORT, self.inbound_port, self.outbound_port, PROMETHEUS_PORT, *PROBE_PORTS.values()}
        return tuple(sorted(ports))


def render(redirection: Redirection) -> str:
    """The `iptables-restore` script (nat table) for `redirection`, one rule a line.

    Deterministic: the same redirection always renders the same text, so re-injecting an
    unchanged pod yields an identical init container.
    """
    r = redirection
    lines = ["*nat", *(f":{chain} - [0:0]" for chain in CHAINS)]
    lines.append(f"-A PROXY_REDIRECT -p tcp -j REDIRECT --to-ports {r.outbound_port}")
    lines.append(f"-A PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-ports {r.inbound_port}")

    lines.append("-A PREROUTING -p tcp -j PROXY_INBOUND")
    for port in _merge_ports(r.reserved_inbound_ports, r.inbound_port_exclusions):
        lines.append(f"-A PROXY_INBOUND -p tcp --dport {port} -j RETURN")
    lines.append("-A PROXY_INBOUND -p tcp -j PROXY_IN_REDIRECT")

    lines.append("-A OUTPUT -p tcp -j PROXY_OUTPUT")
    lines.append(f"-A PROXY_OUTPUT -m owner --uid-owner {r.proxy_uid} -j RETURN")
    lines.append(f"-A PROXY_OUTPUT -d {LOOPBACK} -j RETURN")
    for port in _merge_ports(r.reserved_outbound_ports, r.outbound_port_exclusions):
        lines.append(f"-A PROXY_OUTPUT -p tcp --dport {port} -j RETURN")
    for network in _merge_networks(r.outbound_ip_exclusions):
        lines.append(f"-A PROXY_OUTPUT -d {network} -j RETURN")
    if r.outbound_ip_inclusions:
        for network in _merge_networks(r.outbound_ip_inclusions):
            lines.append(f"-A PROXY_OUTPUT -d {network} -j PROXY_REDIRECT")
    else:
        lines.append("-A PROXY_OUTPUT -j PROXY_REDIRECT")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def init_command(script: str) -> list[str]:
    """The init container's command: apply `script` with `iptables-restore --noflush`.

    A quoted here-document keeps the script readable in `kubectl get pod -o yaml` (as in
    OSM) and needs nothing from the image but `sh` and iptables.
    """
    if "\nEOF\n" in "\n" + script:
        raise ValueError("the script must not contain a line 'EOF'")
    return ["/bin/sh", "-c", f"iptables-restore --noflush <<'EOF'\n{script}EOF\n"]


def redirection_for(annotations: Mapping[str, str], mesh: MeshConfig) -> Redirection:
    """MeshConfig's exclusion lists merged with the pod's annotations.

    Raises `ExclusionError` naming the annotation (or MeshConfig field) and its value.
    MeshConfig's IPv6 ranges are ignored: the IPv4 rules cannot match them anyway. Each
    annotation may also be written under OSM's name (`model.osm_names`); meshcp's wins.
    """
    mesh_ranges = _mesh_networks("outboundIPRangeExclusions", mesh.outbound_ip_exclusions)
    mesh_inclusions = _mesh_networks("outboundIPRangeInclusions", mesh.outbound_ip_inclusions)
    for port in (*mesh.outbound_port_exclusions, *mesh.inbound_port_exclusions):
        if not 1 <= port <= 65535:
            raise ExclusionError("MeshConfig port exclusions", str(port), "ports are 1-65535")
    return Redirection(
        inbound_port_exclusions=_merge_ports(
            mesh.inbound_port_exclusions, parse_ports(INBOUND_PORT_EXCLUSIONS, annotations)
        ),
        outbound_port_exclusions=_merge_ports(
            mesh.outbound_port_exclusions, parse_ports(OUTBOUND_PORT_EXCLUSIONS, annotations)
        ),
        outbound_ip_exclusions=_merge_networks(
            mesh_ranges, parse_ranges(OUTBOUND_IP_EXCLUSIONS, annotations)
        ),
        outbound_ip_inclusions=_merge_networks(
            mesh_inclusions, parse_ranges(OUTBOUND_IP_INCLUSIONS, annotations)
        ),
    )


def _mesh_networks(field: str, texts: tuple[str, ...]) -> list[IPv4Network]:
    networks: list[IPv4Network] = []
    for text in texts:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ExclusionError(f"MeshConfig {field}", text, "not a CIDR") from None
        if isinstance(network, IPv4Network):
            networks.append(network)
    return networks


def parse_ports(annotation: str, annotations: Mapping[str, str]) -> tuple[int, ...]:
    """The comma-separated ports of `annotation` or its OSM alias (absent or empty: none)."""
    annotation, value = lookup(annotations, annotation) or (annotation, "")
    ports = []
    for item in _items(annotation, value):
        if not _PORT.fullmatch(item) or not 1 <= int(item) <= 65535:
            raise ExclusionError(annotation, value, f"{item!r} is not a port (1-65535)")
        ports.append(int(item))
    return tuple(ports)


def parse_ranges(annotation: str, annotations: Mapping[str, str]) -> tuple[IPv4Network, ...]:
    """The comma-separated IPv4 CIDRs of `annotation`; a bare address means /32, and host
    bits are dropped (`10.1.2.3/8` is `10.0.0.0/8`), as iptables itself would. OSM's name
    for `annotation` is read when meshcp's is absent."""
    annotation, value = lookup(annotations, annotation) or (annotation, "")
    networks = []
    for item in _items(annotation, value):
        try:
            networks.append(IPv4Network(item, strict=False))
        except ValueError:
            try:
                ipaddress.IPv6Network(item, strict=False)
            except ValueError:
                reason = f"{item!r} is not an IPv4 CIDR such as 10.0.0.0/8"
            else:
                reason = f"{item!r} is IPv6; meshcp redirects IPv4 only"
            raise ExclusionError(annotation, value, reason) from None
    return tuple(networks)


def _items(annotation: str, value: object) -> list[str]:
    if not isinstance(value, str):
        raise ExclusionError(annotation, repr(value), "must be a comma-separated string")
    return [item.strip() for item in value.split(",") if item.strip()]


def _merge_ports(*lists: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted({port for ports in lists for port in ports}))


def _merge_networks(*lists: Iterable[IPv4Network]) -> tuple[IPv4Network, ...]:
    return tuple(sorted({network for networks in lists for network in networks}))
