"""Discovery responses framed from cached resource bytes, never re-encoded.

Re-encoding a response with betterproto2 walks every field of every resource again even
when each `Any` is ready; joining the cached bytes is a copy.
Field numbers are those of envoy/service/discovery/v3/discovery.proto.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from meshcp.cache.resource import Resource
from meshcp.cache.wire import length_delimited

# DiscoveryResponse
_VERSION_INFO, _RESOURCES, _TYPE_URL, _NONCE = 1, 2, 4, 5
# DeltaDiscoveryResponse
_SYSTEM_VERSION_INFO, _DELTA_RESOURCES, _DELTA_TYPE_URL, _DELTA_NONCE, _REMOVED = 1, 2, 4, 5, 6


def sotw_body(version: str, type_url: str, resources: Iterable[Resource]) -> bytes:
    """A DiscoveryResponse without its nonce; append `nonce_field(nonce)` to send it."""
    parts = [length_delimited(_VERSION_INFO, version.encode())]
    parts.extend(length_delimited(_RESOURCES, resource.body) for resource in resources)
    parts.append(length_delimited(_TYPE_URL, type_url.encode()))
    return b"".join(parts)


def nonce_field(nonce: str) -> bytes:
    return length_delimited(_NONCE, nonce.encode())


def delta_response(
    version: str,
    type_url: str,
    nonce: str,
    resources: Sequence[Resource] = (),
    removed: Sequence[str] = (),
) -> bytes:
    """A complete DeltaDiscoveryResponse."""
    parts = [length_delimited(_SYSTEM_VERSION_INFO, version.encode())]
    parts.extend(length_delimited(_DELTA_RESOURCES, resource.delta_entry()) for resource in resources)
    parts.append(length_delimited(_DELTA_TYPE_URL, type_url.encode()))
    parts.append(length_delimited(_DELTA_NONCE, nonce.encode()))
    parts.extend(length_delimited(_REMOVED, name.encode()) for name in removed)
    return b"".join(parts)
