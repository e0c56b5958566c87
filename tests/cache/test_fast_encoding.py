"""The faster encoding paths give exactly betterproto2's bytes.

Versions are SHA-256 over the encoded bytes, so a path that differed in one byte from
`bytes(message)` would make a replica running the other path push every resource again.
`message_bytes` is checked on random messages of the Envoy types we serve (every field
type, oneofs, maps, wrappers, repeated and packed fields) and on everything the compiler
emits for a mesh; `Template` fills against freshly encoded messages.
"""

from __future__ import annotations

import enum
import warnings
from typing import Any as AnyValue

import betterproto2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshcp._proto.envoy.config.cluster.v3 import Cluster
from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.config.endpoint.v3 import ClusterLoadAssignment
from meshcp._proto.envoy.config.listener.v3 import Listener
from meshcp._proto.envoy.config.rbac.v3 import Rbac
from meshcp._proto.envoy.config.route.v3 import RouteConfiguration, VirtualHost
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import Secret, UpstreamTlsContext
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryResponse
from meshcp.cache import Encoder, pack
from meshcp.cache.encoding import Template, canonical_bytes, message_bytes
from meshcp.cli import offline
from meshcp.compile import cds, eds, lds, naming, rds
from meshcp.policy.build import build_policies
from tests.golden.test_bookstore import EXAMPLE

INT_RANGES = {
    betterproto2.TYPE_INT32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_SINT32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    betterproto2.TYPE_UINT32: (0, 2**32 - 1),
    betterproto2.TYPE_FIXED32: (0, 2**32 - 1),
    betterproto2.TYPE_INT64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_SINT64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    betterproto2.TYPE_UINT64: (0, 2**64 - 1),
    betterproto2.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(proto_type: str, cls: AnyValue) -> st.SearchStrategy[AnyValue]:
    if proto_type in INT_RANGES:
        low, high = INT_RANGES[proto_type]
        return st.one_of(st.integers(-3, 300), st.integers(low, high))
    if proto_type == betterproto2.TYPE_BOOL:
        return st.booleans()
    if proto_type == betterproto2.TYPE_STRING:
        return st.text(max_size=6)
    if proto_type == betterproto2.TYPE_BYTES:
        return st.binary(max_size=6)
    if proto_type == betterproto2.TYPE_FLOAT:
        return st.floats(width=32, allow_nan=False)
    if proto_type == betterproto2.TYPE_DOUBLE:
        return st.floats(allow_nan=False)
    if proto_type == betterproto2.TYPE_ENUM:
        assert isinstance(cls, type) and issubclass(cls, enum.Enum)
        return st.sampled_from(list(cls))
    raise AssertionError(proto_type)


def _wrapped(wrapper: type[betterproto2.Message], depth: int) -> st.SearchStrategy[AnyValue]:
    def unwrap(message: betterproto2.Message) -> st.SearchStrategy[AnyValue]:
        try:
            return st.just(message.to_wrapped())  # type: ignore[attr-defined]
        except (OverflowError, ValueError):  # e.g. a Duration beyond timedelta
            return st.nothing()

    return messages(wrapper, depth).flatmap(unwrap)


def _field_value(meta: AnyValue, cls: AnyValue, depth: int) -> st.SearchStrategy[AnyValue]:
    if meta.proto_type == betterproto2.TYPE_MESSAGE:
        if meta.unwrap is not None:
            return _wrapped(meta.unwrap(), depth + 1)
        return messages(cls, depth + 1)
    return _scalar(meta.proto_type, cls)


@st.composite
def _message(draw: st.DrawFn, cls: type[betterproto2.Message], depth: int) -> betterproto2.Message:
    metadata = cls._betterproto  # type: ignore[arg-type]
    kwargs: dict[str, AnyValue] = {}
    chosen_oneofs = {
        group: draw(st.one_of(st.none(), st.sampled_from(sorted(f.name for f in fields))))
        for group, fields in metadata.oneof_field_by_group.items()
    }
    for name, meta in metadata.meta_by_field_name.items():
        if meta.group and chosen_oneofs[meta.group] != name:
            continue
        if depth >= 3 and meta.proto_type in (betterproto2.TYPE_MESSAGE, betterproto2.TYPE_MAP):
            continue
        if not draw(st.booleans()):
            continue
        cls_of = metadata.cls_by_field.get(name)
        if meta.map_meta:
            key_meta, value_meta = meta.map_meta
            value_cls = metadata.cls_by_field.get(f"{name}.value")
            kwargs[name] = draw(
                st.dictionaries(
                    _scalar(key_meta.proto_type, None),
                    _field_value(value_meta, value_cls, depth),
                    max_size=3,
                )
            )
        elif meta.repeated:
            kwargs[name] = draw(st.lists(_field_value(meta, cls_of, depth), max_size=3))
        else:
            kwargs[name] = draw(_field_value(meta, cls_of, depth))
    with warnings.catch_warnings():  # deprecated Envoy fields are still fields to encode
        warnings.simplefilter("ignore", DeprecationWarning)
        return cls(**kwargs)


def messages(cls: type[betterproto2.Message], depth: int = 0) -> st.SearchStrategy[betterproto2.Message]:
    return _message(cls, depth)


SERVED = [
    Cluster,
    ClusterLoadAssignment,
    Listener,
    RouteConfiguration,
    Secret,
    HttpConnectionManager,
    UpstreamTlsContext,
    Rbac,
    Node,
    DiscoveryResponse,
]


@pytest.mark.parametrize("cls", SERVED, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_message_bytes_equals_betterproto2(cls: type[betterproto2.Message], data: st.DataObject) -> None:
    message = data.draw(messages(cls))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert message_bytes(message) == bytes(message)


async def test_every_compiled_resource_of_the_bookstore_encodes_identically() -> None:
    state = await offline.load(EXAMPLE)
    found = 0
    for policy in build_policies(state).classes.values():
        for message in [
            *cds.clusters(policy),
            *lds.listeners(policy),
            *rds.routes(policy),
            # a class that may reach nothing (pruned by default) has no load assignment
            *(eds.load_assignment(u.service, u.port, ()) for u in policy.upstreams[:1]),
        ]:
            packed = pack(message)
            assert message_bytes(packed) == bytes(packed)
            assert canonical_bytes(message) == bytes(message)  # maps sorted by the first call
            found += 1
    assert found > 40


# --- templates ------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.text(max_size=200).filter(lambda t: "\0" not in t), max_size=6))
def test_a_template_fills_a_repeated_field_with_any_number_of_entries(names: list[str]) -> None:
    marker = VirtualHost(name="\0hosts\0")
    shell = RouteConfiguration(
        name=naming.outbound_routes(80), virtual_hosts=[marker], validate_clusters=False
    )
    template = Encoder().template(shell, bytes(marker))
    hosts = [VirtualHost(name=n, domains=[n, n + ":80"]) for n in names]
    composed = template.compose(b"".join(template.field(bytes(h)) for h in hosts))
    full = RouteConfiguration(name=naming.outbound_routes(80), virtual_hosts=hosts, validate_clusters=False)
    assert composed == bytes(pack(full))


def test_a_marker_must_occur_once() -> None:
    cluster = Cluster(name="\0m\0", alt_stat_name="\0m\0")
    with pytest.raises(ValueError, match="exactly once"):
        Template(bytes(cluster), b"\0m\0", "t", "n")
