"""Readable dumps of compiled configuration, for `meshcp compile` and /debug/config.

Private keys never appear: secrets are shown by name, with the certificate's subject
alternative names and trust data summarised.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import Secret
from meshcp._proto.google.protobuf import Any as AnyMessage
from meshcp.cache import resource_types
from meshcp.cache.resource import Resource

SECTIONS = {
    resource_types.CLUSTER: "clusters",
    resource_types.ENDPOINT: "endpoints",
    resource_types.LISTENER: "listeners",
    resource_types.ROUTE: "routes",
    resource_types.SECRET: "secrets",
}


def _secret(message: Secret) -> dict[str, Any]:
    summary: dict[str, Any] = {"name": message.name}
    if message.tls_certificate is not None:
        summary["tls_certificate"] = "<certificate chain and private key, not shown>"
    if message.validation_context is not None:
        context = message.validation_context
        summary["validation_context"] = {
            "trusted_ca": "<trust bundle, not shown>",
            "match_typed_subject_alt_names": [m.to_dict() for m in context.match_typed_subject_alt_names],
        }
    return summary


def dump(resources: Iterable[Resource]) -> dict[str, list[dict[str, Any]]]:
    """Resources by section (clusters, endpoints, listeners, routes, secrets), by name."""
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in SECTIONS.values()}
    for resource in sorted(resources, key=lambda r: (resource_types.push_rank(r.type_url), r.name)):
        message = AnyMessage.parse(resource.body).unpack()
        section = SECTIONS.get(resource.type_url, resource.type_url)
        if isinstance(message, Secret):
            entry = _secret(message)
        elif message is not None:
            entry = message.to_dict()
        else:
            entry = {"name": resource.name}
        entry = {"version": resource.version, **entry}
        out.setdefault(section, []).append(entry)
    return out
