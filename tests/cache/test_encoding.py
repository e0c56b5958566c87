"""Canonical encoding: equal content has equal bytes and version, whatever the build order."""

from __future__ import annotations

from meshcp._proto.envoy.config.core.v3 import Metadata, Node
from meshcp._proto.envoy.config.route.v3 import RouteConfiguration, VirtualHost
from meshcp._proto.google.protobuf import Struct, Value
from meshcp.cache import Encoder, canonical_bytes, pack
from meshcp.cache.encoding import digest


def _metadata(order: list[str]) -> Metadata:
    return Metadata(
        filter_metadata={
            key: Struct(fields={f"{key}-{i}": Value(string_value=str(i)) for i in (3, 1, 2)}) for key in order
        }
    )


def test_map_insertion_order_does_not_change_bytes() -> None:
    one = Node(id="n", metadata=Struct(fields={"b": Value(string_value="2"), "a": Value(string_value="1")}))
    two = Node(id="n", metadata=Struct(fields={"a": Value(string_value="1"), "b": Value(string_value="2")}))
    assert bytes(one) != bytes(two)  # betterproto2 itself keeps insertion order
    assert canonical_bytes(one) == canonical_bytes(two)


def test_nested_maps_inside_repeated_messages_are_sorted() -> None:
    def build(order: list[str]) -> RouteConfiguration:
        hosts = [
            VirtualHost(
                name=f"vh{i}",
                domains=["x"],
                typed_per_filter_config={k: pack(_metadata(order)) for k in order},
            )
            for i in range(2)
        ]
        return RouteConfiguration(name="r", virtual_hosts=hosts)

    encoder = Encoder()
    first = encoder.encode(build(["z", "a", "m"]))
    second = encoder.encode(build(["m", "z", "a"]))
    assert first.version == second.version
    assert first.body == second.body
    assert first is second  # equal content is interned: one object shared by every proxy
    assert encoder.encodes == 2


def test_different_content_has_different_versions() -> None:
    encoder = Encoder()
    assert (
        encoder.encode(RouteConfiguration(name="r")).version
        != encoder.encode(RouteConfiguration(name="r", virtual_hosts=[VirtualHost(name="v")])).version
    )


def test_version_is_sha256_of_the_any_bytes_and_stable_across_encoders() -> None:
    a = Encoder().encode(RouteConfiguration(name="r"))
    b = Encoder().encode(RouteConfiguration(name="r"))
    assert a.version == b.version == digest(a.body)
    assert len(a.version) == 32
    assert a.type_url == "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    assert a.name == "r"


def test_pack_uses_canonical_bytes() -> None:
    one = pack(
        Node(id="n", metadata=Struct(fields={"b": Value(bool_value=True), "a": Value(bool_value=True)}))
    )
    two = pack(
        Node(id="n", metadata=Struct(fields={"a": Value(bool_value=True), "b": Value(bool_value=True)}))
    )
    assert bytes(one) == bytes(two)
    assert one.type_url == "type.googleapis.com/envoy.config.core.v3.Node"
