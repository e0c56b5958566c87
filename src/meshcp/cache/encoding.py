"""Canonical protobuf encoding: equal content gives equal bytes, whatever the build order.

betterproto2 writes fields in field-number order but map entries in dict insertion
order, so two equal configurations built in different orders would hash differently
and cause spurious pushes. We sort every map (recursively, also inside unwrapped
`Struct` values) before encoding. `Any` payloads are opaque bytes to the encoder, so
nested messages must be packed with `pack` (which canonicalises first), never with
`Any.pack` directly.
"""

from __future__ import annotations

import hashlib
import weakref
from functools import cache
from typing import Any as AnyValue

import betterproto2

from meshcp._proto.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from meshcp._proto.google.protobuf import Any
from meshcp._proto.message_pool import default_message_pool
from meshcp.cache.resource import Resource, resource_name

_MAP, _MESSAGE, _PLAIN = 0, 1, 2


@cache
def _walkable_fields(cls: type[betterproto2.Message]) -> tuple[tuple[str, int], ...]:
    """The fields of a message class that may contain maps, with how to walk them."""
    fields: list[tuple[str, int]] = []
    metadata = cls._betterproto  # type: ignore[arg-type]
    for name, meta in metadata.meta_by_field_name.items():
        if meta.proto_type == betterproto2.TYPE_MAP:
            fields.append((name, _MAP))
        elif meta.proto_type == betterproto2.TYPE_MESSAGE:
            fields.append((name, _MESSAGE))
    return tuple(fields)


def _sorted(value: AnyValue) -> AnyValue:
    if isinstance(value, betterproto2.Message):
        sort_maps_in_place(value)
        return value
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def sort_maps_in_place(message: betterproto2.Message) -> None:
    """Reorder every map field below `message` by key.

    In place because the cache owns a message once it is handed over for encoding,
    and copying every message first would double the cost of the hottest path.
    """
    for name, kind in _walkable_fields(type(message)):
        value = getattr(message, name)
        if value is None:
            continue
        if kind == _MAP:
            if value:
                setattr(message, name, _sorted(value))
        elif isinstance(value, list):
            for item in value:
                _sorted(item)
        else:
            _sorted(value)


def canonical_bytes(message: betterproto2.Message) -> bytes:
    """The canonical wire encoding of `message` (maps sorted by key)."""
    sort_maps_in_place(message)
    return bytes(message)


def pack(message: betterproto2.Message) -> Any:
    """`Any.pack` with canonical bytes: use it for every nested typed_config."""
    return Any(type_url=type_url(message), value=canonical_bytes(message))


def type_url(message: betterproto2.Message) -> str:
    """The `type.googleapis.com/...` URL of a generated message."""
    return default_message_pool.type_to_url[type(message)]


def digest(data: bytes) -> str:
    """The version string of a resource: SHA-256 of its canonical `Any` bytes.

    Truncated to 128 bits (32 hex characters): collisions stay out of reach and the
    strings are half as long in every delta response and debug page.
    """
    return hashlib.sha256(data).hexdigest()[:32]


class Encoder:
    """Turns messages into `Resource`s and shares one object per unique content.

    `encodes` counts serialisations, so tests and benchmarks can prove that a change
    encodes exactly what it touched.
    """

    def __init__(self) -> None:
        self.encodes = 0
        self._interned: weakref.WeakValueDictionary[tuple[str, str, str], Resource] = (
            weakref.WeakValueDictionary()
        )

    def encode(self, message: betterproto2.Message, name: str | None = None) -> Resource:
        """Encode `message` once; equal content returns the already interned Resource."""
        self.encodes += 1
        packed = pack(message)
        body = bytes(packed)
        version = digest(body)
        key = (packed.type_url, name if name is not None else resource_name(message), version)
        found = self._interned.get(key)
        if found is not None:
            return found
        resource = Resource(key[0], key[1], version, body, _endpoints_name(message))
        self._interned[key] = resource
        return resource


def _endpoints_name(message: betterproto2.Message) -> str | None:
    """The ClusterLoadAssignment an EDS cluster depends on (xDS ordering, rule 19)."""
    if isinstance(message, Cluster) and message.type == ClusterDiscoveryType.EDS:
        config = message.eds_cluster_config
        return (config.service_name if config is not None and config.service_name else "") or message.name
    return None
