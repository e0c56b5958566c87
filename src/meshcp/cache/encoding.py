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
import threading
import warnings
import weakref
from collections.abc import Callable
from functools import cache
from typing import Any as AnyValue

import betterproto2

from meshcp._proto.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from meshcp._proto.google.protobuf import Any
from meshcp._proto.message_pool import default_message_pool
from meshcp.cache.resource import ComposedResource, Resource, resource_name
from meshcp.cache.wire import read_varint, varint

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
    return message_bytes(message)


# --- a faster path to betterproto2's own bytes --------------------------------------------
#
# betterproto2 0.10's `Message.__bytes__` asks for each field's default by calling its
# factory inside `warnings.catch_warnings()`, per field and per message: most of the cost
# of encoding a mesh. `message_bytes` walks the same metadata in the same order
# and makes the same decisions, with each class's defaults computed once; scalars are
# still encoded by betterproto2's own functions. tests/cache/test_fast_encoding.py holds
# it byte-equal to `bytes(message)`.

_BYTES = betterproto2.Message.__bytes__
_VARINT_TYPES = frozenset(betterproto2.WIRE_VARINT_TYPES)
_FIXED32_TYPES = frozenset(betterproto2.WIRE_FIXED_32_TYPES)
_FIXED64_TYPES = frozenset(betterproto2.WIRE_FIXED_64_TYPES)
_LENGTH_TYPES = frozenset(betterproto2.WIRE_LEN_DELIM_TYPES)
_PACKED_TYPES = frozenset(betterproto2.PACKED_TYPES)
_Field = tuple[str, AnyValue, AnyValue]  # (name, FieldMetadata, default)


@cache
def _plan(cls: type[betterproto2.Message]) -> tuple[_Field, ...] | None:
    """The fields of `cls` in betterproto2's writing order with their defaults, or None
    if its instances must be encoded by betterproto2 itself."""
    if cls.__bytes__ is not _BYTES:
        return None
    metadata = cls._betterproto  # type: ignore[arg-type]
    with warnings.catch_warnings():  # as betterproto2 does: deprecated fields warn
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        return tuple(
            (name, meta, metadata.default_gen[name]()) for name, meta in metadata.meta_by_field_name.items()
        )


@cache
def _key(number: int, proto_type: str) -> bytes:
    if proto_type in _VARINT_TYPES:
        wire = 0
    elif proto_type in _FIXED32_TYPES:
        wire = 5
    elif proto_type in _FIXED64_TYPES:
        wire = 1
    elif proto_type in _LENGTH_TYPES:
        wire = 2
    else:
        raise NotImplementedError(proto_type)
    return varint(number << 3 | wire)


def _value(proto_type: str, unwrap: Callable[[], AnyValue] | None, value: AnyValue) -> bytes:
    if proto_type == betterproto2.TYPE_MESSAGE:
        if unwrap is not None:
            value = unwrap().from_wrapped(value)
        return message_bytes(value)
    encoded: bytes = betterproto2._preprocess_single(proto_type, None, value)
    return encoded


def _single(
    number: int, proto_type: str, value: AnyValue, unwrap: Callable[[], AnyValue] | None = None
) -> bytes:
    data = _value(proto_type, unwrap, value)
    if proto_type in _LENGTH_TYPES:
        return _key(number, proto_type) + varint(len(data)) + data
    return _key(number, proto_type) + data


def message_bytes(message: betterproto2.Message) -> bytes:
    """`bytes(message)`, without betterproto2's per-field default lookups (see above)."""
    plan = _plan(type(message))
    if plan is None or message._is_pydantic():
        return bytes(message)
    parts: list[bytes] = []
    for name, meta, default in plan:
        value = getattr(message, name)
        if value is None or value == default:
            continue
        if meta.repeated:
            if meta.proto_type in _PACKED_TYPES:
                packed = b"".join(_value(meta.proto_type, None, item) for item in value)
                parts.append(_single(meta.number, betterproto2.TYPE_BYTES, packed))
            else:
                parts += [_single(meta.number, meta.proto_type, item, meta.unwrap) for item in value]
        elif meta.map_meta:
            key_meta, value_meta = meta.map_meta
            for k, v in value.items():
                entry = _single(1, key_meta.proto_type, k) + _single(
                    2, value_meta.proto_type, v, value_meta.unwrap
                )
                parts.append(_single(meta.number, meta.proto_type, entry))
        else:
            parts.append(_single(meta.number, meta.proto_type, value, meta.unwrap))
    parts.append(message._unknown_fields)
    return b"".join(parts)


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


_sha256 = hashlib.sha256


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
        #: The reconciler may encode in a worker thread while the publisher encodes
        #: secrets on the event loop: the index and the count are shared.
        self._lock = threading.Lock()

    def encode(self, message: betterproto2.Message, name: str | None = None) -> Resource:
        """Encode `message` once; equal content returns the already interned Resource."""
        packed = pack(message)
        body = message_bytes(packed)
        version = digest(body)
        key = (packed.type_url, name if name is not None else resource_name(message), version)
        with self._lock:
            self.encodes += 1
            found = self._interned.get(key)
            if found is not None:
                return found
            resource = Resource(key[0], key[1], version, body, _endpoints_name(message))
            self._interned[key] = resource
            return resource

    def fragment(self, message: betterproto2.Message) -> bytes:
        """The canonical bytes of a part of a resource, to fill a template with."""
        with self._lock:
            self.encodes += 1
        return canonical_bytes(message)

    def template(self, message: betterproto2.Message, marker: bytes) -> Template:
        """Encode `message` once, leaving open the field whose value is `marker`."""
        with self._lock:
            self.encodes += 1
        packed = pack(message)
        return Template(
            message_bytes(packed), marker, packed.type_url, resource_name(message), _endpoints_name(message)
        )

    def fill(self, template: Template, field: bytes, *, intern: bool = False) -> Resource:
        """The resource `template` describes with its open field replaced by `field`
        (see `Template.field`): the bytes betterproto2 would give, without building or
        encoding a message.

        Interned only on request: a caller that memoises what it fills needs no index,
        whose weak references can cost more memory than a small resource itself.
        """
        head = template._heads.get(len(field)) or template.head(len(field))
        tail = template.tail
        version = _sha256(head + field + tail).hexdigest()[:32]  # digest(), inlined
        if not intern:
            with self._lock:
                self.encodes += 1
            return ComposedResource(
                template.type_url, template.name, version, (head, field, tail), template.endpoints
            )
        key = (template.type_url, template.name, version)
        with self._lock:
            self.encodes += 1
            found = self._interned.get(key)
            if found is None:
                found = self._interned[key] = ComposedResource(
                    key[0], key[1], version, (head, field, tail), template.endpoints
                )
            return found


class Template:
    """The canonical `Any` bytes of a resource with one field left open.

    Why: at scale many resources differ from each other in one field only (the outbound
    route configuration of a port exists per client namespace and differs in its virtual
    hosts, each encoded once). The typed message is built and encoded once with a marker
    in that field; each variant splices its field in. Protobuf messages are concatenations
    of fields, so the result is byte for byte what betterproto2 gives for the variant,
    once the lengths of the enclosing messages are rewritten; those depend only on the
    length of the field, so the bytes before it are kept per length.
    """

    __slots__ = ("_heads", "_levels", "endpoints", "name", "tag", "tail", "type_url")

    def __init__(
        self, encoded: bytes, marker: bytes, type_url: str, name: str, endpoints: str | None = None
    ) -> None:
        if encoded.count(marker) != 1:
            raise ValueError("the marker must occur exactly once in the encoding")
        self.type_url = type_url
        self.name = name
        self.endpoints = endpoints
        #: Per enclosing message, outermost first: (bytes before the field holding the
        #: open field, that field's tag, length of the bytes after it).
        self._levels: list[tuple[bytes, bytes, int]] = []
        tails: list[bytes] = []
        buf = encoded
        while True:
            start, tag_end, payload_start, end = _field_holding(buf, marker)
            tails.append(buf[end:])
            payload = buf[payload_start:end]
            if payload == marker:
                self.tag = buf[start:tag_end]
                self._levels.append((buf[:start], b"", len(buf) - end))
                break
            self._levels.append((buf[:start], buf[start:tag_end], len(buf) - end))
            buf = payload
        self.tail = b"".join(reversed(tails))
        self._heads: dict[int, bytes] = {}

    def field(self, value: bytes) -> bytes:
        """`value` as the open field (tag, length, value); several such fields joined also
        fill a repeated field."""
        return self.tag + varint(len(value)) + value

    def head(self, length: int) -> bytes:
        """The bytes before the open field when it takes `length` bytes."""
        found = self._heads.get(length)
        if found is not None:
            return found
        before, _, after = self._levels[-1]
        inner = len(before) + length + after  # the message holding the open field
        parts = [before]
        for before, tag, after in reversed(self._levels[:-1]):
            size = varint(inner)
            parts.append(before + tag + size)
            inner = len(before) + len(tag) + len(size) + inner + after
        found = self._heads[length] = b"".join(reversed(parts))
        return found

    def compose(self, fields: bytes) -> bytes:
        """The whole encoding with the open field replaced by `fields` (joined bytes)."""
        return self.head(len(fields)) + fields + self.tail


def _field_holding(buf: bytes, marker: bytes) -> tuple[int, int, int, int]:
    """(start, end of tag, start of payload, end) of the one length-delimited field of
    message `buf` whose payload contains `marker`."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = read_varint(buf, pos)
        tag_end = pos
        wire_type = key & 7
        if wire_type == 0:
            _, pos = read_varint(buf, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, payload_start = read_varint(buf, pos)
            pos = payload_start + length
            if pos <= len(buf) and marker in buf[payload_start:pos]:
                return start, tag_end, payload_start, pos
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    raise ValueError("the marker is not the value of a length-delimited field")


def _endpoints_name(message: betterproto2.Message) -> str | None:
    """The ClusterLoadAssignment an EDS cluster depends on (xDS ordering, rule 19)."""
    if isinstance(message, Cluster) and message.type == ClusterDiscoveryType.EDS:
        config = message.eds_cluster_config
        return (config.service_name if config is not None and config.service_name else "") or message.name
    return None
