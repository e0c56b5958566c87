"""A grpclib codec that sends pre-framed bytes as they are and decodes with betterproto2."""

from __future__ import annotations

from typing import Any

from grpclib.encoding.base import CodecBase

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DeltaDiscoveryRequest, DiscoveryRequest
from meshcp._proto.google.rpc import Status
from meshcp.cache.wire import read_varint

# The scalar fields of each request kind, by field number (discovery.proto).
_SOTW = {1: "version_info", 4: "type_url", 5: "response_nonce"}
_DELTA = {2: "type_url", 6: "response_nonce"}


class NameCache:
    """Decoded name lists by their exact wire bytes, bounded by total size.

    Thousands of proxies send the same list (and SotW repeats every name in every ACK),
    so each distinct list is decoded once and its strings are shared by every stream.
    """

    def __init__(self, max_bytes: int = 8 << 20) -> None:
        self._lists: dict[bytes, tuple[str, ...]] = {}
        self._bytes = 0
        self._max_bytes = max_bytes

    def names(self, data: bytes, start: int, end: int) -> list[str]:
        """The names in `data[start:end]`, a run of one repeated string field."""
        key = data[start:end]
        found = self._lists.get(key)
        if found is None:
            decoded = []
            pos = start
            while pos < end:
                pos += 1  # the tag (a single byte for fields 3 and 4)
                length, pos = read_varint(data, pos)
                decoded.append(data[pos : pos + length].decode())
                pos += length
            if self._bytes + len(key) > self._max_bytes:
                self._lists.clear()
                self._bytes = 0
            found = self._lists[key] = tuple(decoded)
            self._bytes += len(key)
        return list(found)  # the strings are shared; the list is the caller's


def fast_parse(data: bytes, message_type: Any, cache: NameCache) -> Any:
    """Decode a (Delta)DiscoveryRequest without betterproto2's per-field machinery.

    Names and scalars are read directly; `node` and `error_detail` (first request, NACKs)
    go through betterproto2. Returns None for anything else (resource locators,
    `initial_resource_versions`, unknown fields), which the caller decodes normally.
    betterproto2's per-field machinery dominates the cost of an ACK that repeats a long
    list of names; reading them directly avoids it.
    """
    delta = message_type is DeltaDiscoveryRequest
    strings = _DELTA if delta else _SOTW
    node_field, error_field = (1, 7) if delta else (2, 6)
    name_fields = (3, 4) if delta else (3,)
    values: dict[str, Any] = {}
    pos, end = 0, len(data)
    while pos < end:
        tag = data[pos]
        if tag & 0x80 or tag & 7 != 2:
            return None
        number = tag >> 3
        if number in name_fields:
            run = pos
            while run < end and data[run] == tag:
                length = data[run + 1]
                if length & 0x80:
                    length, after = read_varint(data, run + 1)
                    run = after + length
                else:
                    run += 2 + length
            attr = (
                "resource_names"
                if not delta
                else ("resource_names_subscribe" if number == 3 else "resource_names_unsubscribe")
            )
            if attr in values:
                return None
            values[attr] = cache.names(data, pos, run)
            pos = run
            continue
        length, start = read_varint(data, pos + 1)
        pos = start + length
        if number in strings:
            values[strings[number]] = data[start:pos].decode()
        elif number == node_field:
            values["node"] = Node.parse(data[start:pos])
        elif number == error_field:
            values["error_detail"] = Status.parse(data[start:pos])
        else:
            return None
    return message_type(**values)


class FramedCodec(CodecBase):
    """Lets handlers send `bytes` (a response framed from cached resources) unchanged.

    grpclib's ProtoCodec insists on message objects; re-encoding a response we already
    hold as bytes would cost a full encoding per resource per proxy.
    """

    __content_subtype__ = "proto"

    def __init__(self) -> None:
        self._names = NameCache()

    def encode(self, message: Any, message_type: Any) -> bytes:
        if isinstance(message, bytes):
            return message
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        if message_type is DiscoveryRequest or message_type is DeltaDiscoveryRequest:
            parsed = fast_parse(data, message_type, self._names)
            if parsed is None:
                parsed = message_type.parse(data)
                check_request(parsed)
            else:  # its strings and names are strings; the nested messages may not be
                _check_nested(parsed)
            return parsed
        return message_type.parse(data)


#: The scalar and repeated fields of requests the server reads, and their Python types.
_STRINGS = ("version_info", "type_url", "response_nonce")
_NAME_LISTS = ("resource_names", "resource_names_subscribe", "resource_names_unsubscribe")


def check_request(request: Any) -> None:
    """Raise ValueError if a field the server reads has the wrong type. betterproto2 decodes
    leniently: a field sent with another wire type than its own comes out as an int (a
    `node` of 18), which would fail deep in the handler instead of refusing the request."""
    for name in _STRINGS:
        if not isinstance(getattr(request, name, ""), str):
            raise ValueError(f"{name} is not a string")
    for name in _NAME_LISTS:
        names = getattr(request, name, [])
        if not isinstance(names, list) or not all(isinstance(item, str) for item in names):
            raise ValueError(f"{name} is not a list of strings")
    versions = getattr(request, "initial_resource_versions", {})
    if not isinstance(versions, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in versions.items()
    ):
        raise ValueError("initial_resource_versions is not a map of strings")
    _check_nested(request)


def _check_nested(request: Any) -> None:
    node, error = request.node, request.error_detail
    if node is not None and not (
        isinstance(node, Node) and isinstance(node.id, str) and isinstance(node.cluster, str)
    ):
        raise ValueError("node is not a Node")
    if error is not None and not (
        isinstance(error, Status) and isinstance(error.code, int) and isinstance(error.message, str)
    ):
        raise ValueError("error_detail is not a Status")
