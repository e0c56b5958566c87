"""Reader of meshcp's own MeshConfig kind: every field is known, so an unknown one is refused.

Unlike the Kubernetes and SMI kinds, whose other fields belong to someone else, a field of
MeshConfig that meshcp does not know is almost always a typo of one it does, and ignoring
it would silently run the mesh with a default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any

from meshcp.model.durations import parse_duration
from meshcp.model.fields import Field, describe
from meshcp.model.meshconfig import CERT_PROVIDERS, SIDECAR_LOG_LEVELS, MeshConfig
from meshcp.model.meta import Meta
from meshcp.model.names import dns_label, dns_subdomain

_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$")


def read_mesh_config(root: Field, meta: Meta, version: str) -> MeshConfig:
    spec = root.field("spec")
    values: dict[str, Any] = {}
    for key in spec.mapping():
        reader = MESH_CONFIG_FIELDS.get(key)
        if reader is None:
            spec.field(key).fail(f"unknown field (known: {', '.join(MESH_CONFIG_FIELDS)})")
        attribute, read = reader
        if spec.field(key).present:
            if attribute in _SECTIONS:
                values.update(read(spec.field(key)))
            else:
                values[attribute] = read(spec.field(key))
    config = MeshConfig(meta=meta, **values, explicit=frozenset(values))
    if config.debounce_max < config.debounce_window:
        spec.field("debounceMax").fail(
            f"{config.debounce_max:g}s must not be shorter than debounceWindow ({config.debounce_window:g}s)"
        )
    return config


def duration(node: Field) -> float:
    value = node.value
    if not isinstance(value, str):
        node.fail(f'must be a duration such as "100ms", "1s" or "24h", got {describe(value)}')
    try:
        return parse_duration(value)
    except ValueError:
        node.fail(
            f'must be a duration such as "100ms", "1s" or "24h" (ns, us, ms, s, m, h), got {describe(value)}'
        )


def cert_validity(node: Field) -> int:
    seconds = duration(node)
    if seconds < 1:
        node.fail("must be at least 1s")
    return int(seconds)


def choice(choices: tuple[str, ...]) -> Callable[[Field], str]:
    return lambda node: node.one_of(choices)


def cidrs(node: Field) -> tuple[str, ...]:
    cidrs: list[str] = []
    for item in node.items():
        value = item.string(required=True)
        try:
            cidrs.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            item.fail(f"must be a CIDR such as 10.0.0.0/8, got {describe(value)}")
    return tuple(cidrs)


def ports(node: Field) -> tuple[int, ...]:
    return tuple(item.port() for item in node.items())


def non_empty(node: Field) -> str:
    return node.string(required=True)


def _resources(node: Field, part: str) -> tuple[tuple[str, str], ...]:
    """`sidecarResources.requests|limits`: resource name → Kubernetes quantity."""
    values = node.field(part)
    if not values.present:
        return ()
    out = []
    for name in sorted(values.mapping()):
        item = values.field(name)
        quantity = item.string(required=True)
        if not _QUANTITY.match(quantity):
            item.fail(f"must be a Kubernetes quantity such as 100m or 64Mi, got {describe(quantity)}")
        out.append((name, quantity))
    return tuple(out)


def sidecar_resources(node: Field) -> dict[str, Any]:
    for key in node.mapping():
        if key not in ("requests", "limits"):
            node.field(key).fail("unknown field (known: requests, limits)")
    return {"sidecar_requests": _resources(node, "requests"), "sidecar_limits": _resources(node, "limits")}


def _observability(node: Field) -> dict[str, Any]:
    """`observability`, a section as in OSM's MeshConfig (`spec.observability`), whose
    booleans are `enable...` as OSM's are."""
    known = {"enablePerRouteStats": "per_route_stats"}
    values: dict[str, Any] = {}
    for key in node.mapping():
        attribute = known.get(key)
        if attribute is None:
            node.field(key).fail(f"unknown field (known: {', '.join(known)})")
        values[attribute] = node.field(key).boolean(False)
    return values


#: Fields whose reader returns several MeshConfig attributes (a section of the spec).
_SECTIONS = ("sidecar_resources", "observability")

#: spec field → (MeshConfig attribute, reader): the fields the MeshConfig CRD declares.
MESH_CONFIG_FIELDS: dict[str, tuple[str, Callable[[Field], Any]]] = {
    "meshName": ("mesh_name", dns_label),
    "trustDomain": ("trust_domain", dns_subdomain),
    "permissive": ("permissive", lambda node: node.boolean(False)),
    "egressPassthrough": ("egress_passthrough", lambda node: node.boolean(False)),
    "pruneUnreachableUpstreams": ("prune_unreachable_upstreams", lambda node: node.boolean(True)),
    "certValidity": ("cert_validity_seconds", cert_validity),
    "certProvider": ("cert_provider", choice(CERT_PROVIDERS)),
    "debounceWindow": ("debounce_window", duration),
    "debounceMax": ("debounce_max", duration),
    "outboundIPRangeExclusions": ("outbound_ip_exclusions", cidrs),
    "outboundIPRangeInclusions": ("outbound_ip_inclusions", cidrs),
    "outboundPortExclusions": ("outbound_port_exclusions", ports),
    "inboundPortExclusions": ("inbound_port_exclusions", ports),
    "sidecarImage": ("sidecar_image", non_empty),
    "sidecarLogLevel": ("sidecar_log_level", choice(SIDECAR_LOG_LEVELS)),
    "sidecarResources": ("sidecar_resources", sidecar_resources),
    "observability": ("observability", _observability),
}
