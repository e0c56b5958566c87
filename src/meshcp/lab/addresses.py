"""Pod addresses, Services' ClusterIPs and the pods' veth interface numbers.

What was handed out is kept across `lab apply` in the `Allocation`: a pod that stays keeps
its address (and its sidecar its identity), so that running pods are not disturbed by an
apply that does not concern them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from meshcp.injector import fields
from meshcp.lab import layout
from meshcp.lab.manifests import Manifest


@dataclass(frozen=True)
class Allocation:
    """Addresses and proxy UUIDs handed out so far, by `namespace/name`: a pod that stays
    keeps its address (and its sidecar its identity) across `lab apply`."""

    pod_ips: Mapping[str, str] = field(default_factory=dict)
    service_ips: Mapping[str, str] = field(default_factory=dict)
    proxy_uuids: Mapping[str, str] = field(default_factory=dict)
    #: Interface numbers of the node side of each pod's veth pair (`mlab<n>`).
    interfaces: Mapping[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "pod_ips": dict(self.pod_ips),
            "service_ips": dict(self.service_ips),
            "proxy_uuids": dict(self.proxy_uuids),
            "interfaces": dict(self.interfaces),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Allocation:
        return cls(
            dict(data.get("pod_ips", {})),
            dict(data.get("service_ips", {})),
            dict(data.get("proxy_uuids", {})),
            {key: int(value) for key, value in dict(data.get("interfaces", {})).items()},
        )


def allocate_services(
    manifests: Sequence[Manifest], allocation: Allocation, problems: list[str]
) -> dict[str, str]:
    """ClusterIPs: the manifest's own when it lies in the service CIDR, else the one the
    service had, else the next free one. Headless services (`None`) get none."""
    taken: set[str] = set()
    wanted: dict[str, str] = {}
    order: list[str] = []
    for manifest in manifests:
        key = f"{manifest.namespace}/{manifest.name}"
        spec = fields.mapping(manifest.body.get("spec"))
        requested = spec.get("clusterIP")
        if requested == "None":
            continue
        order.append(key)
        if isinstance(requested, str) and requested and _in(requested, layout.SERVICE_CIDR):
            if requested in taken:
                problems.append(
                    f"{manifest.display}: clusterIP {requested} is already taken; another is assigned"
                )
            else:
                wanted[key] = requested
                taken.add(requested)
        elif isinstance(requested, str) and requested:
            problems.append(
                f"{manifest.display}: clusterIP {requested} is outside the lab's service range "
                f"{layout.SERVICE_CIDR}; another is assigned"
            )
    for key in order:
        previous = allocation.service_ips.get(key)
        if key not in wanted and previous and previous not in taken:
            wanted[key] = previous
            taken.add(previous)
    return _fill(order, wanted, taken, layout.FIRST_SERVICE)


def allocate_pods(
    manifests: Sequence[Manifest], allocation: Allocation, problems: list[str]
) -> tuple[dict[str, str], dict[str, int]]:
    """Pod addresses (the one the pod had, else its manifest's `status.podIP` when usable,
    else the next free one) and veth interface numbers, by `namespace/name`."""
    taken: set[str] = {str(layout.GATEWAY)}
    wanted: dict[str, str] = {}
    order: list[str] = []
    for manifest in manifests:
        key = f"{manifest.namespace}/{manifest.name}"
        if key in order:
            problems.append(f"{manifest.display}: a second pod {key}; the first is kept")
            continue
        order.append(key)
        previous = allocation.pod_ips.get(key)
        requested = fields.mapping(manifest.body.get("status")).get("podIP")
        for candidate in (previous, requested):
            usable = isinstance(candidate, str) and _in(candidate, layout.POD_CIDR) and candidate not in taken
            if usable and IPv4Address(str(candidate)) >= layout.FIRST_POD:
                wanted[key] = str(candidate)
                taken.add(str(candidate))
                break
    ips = _fill(order, wanted, taken, layout.FIRST_POD)
    used = {index for key, index in allocation.interfaces.items() if key in ips}
    interfaces: dict[str, int] = {}
    next_index = 0
    for key in order:
        index = allocation.interfaces.get(key)
        if index is None:
            while next_index in used:
                next_index += 1
            index = next_index
            used.add(index)
        interfaces[key] = index
    return ips, interfaces


def with_cluster_ip(body: Mapping[str, Any], ip: str | None) -> Mapping[str, Any]:
    """A Service's manifest with its allocated ClusterIP, as the API server reports it."""
    if ip is None:
        return body
    out = dict(body)
    out["spec"] = {**fields.mapping(body.get("spec")), "clusterIP": ip}
    return out


def _fill(
    order: Sequence[str], wanted: dict[str, str], taken: set[str], first: IPv4Address
) -> dict[str, str]:
    out: dict[str, str] = {}
    candidate = first
    for key in order:
        if key in wanted:
            out[key] = wanted[key]
            continue
        while str(candidate) in taken:
            candidate += 1
        out[key] = str(candidate)
        taken.add(str(candidate))
    return out


def _in(address: str, network: IPv4Network) -> bool:
    try:
        return IPv4Address(address) in network
    except ValueError:
        return False
