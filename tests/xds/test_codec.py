"""The fast request decoder agrees with betterproto2 on every request it accepts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DeltaDiscoveryRequest, DiscoveryRequest
from meshcp._proto.google.rpc import Status
from meshcp.xds.codec import FramedCodec, NameCache, fast_parse

text = st.text(max_size=300)
names = st.lists(st.text(min_size=0, max_size=200), max_size=60)
nodes = st.none() | st.builds(Node, id=text, cluster=text)
errors = st.none() | st.builds(Status, code=st.integers(0, 16), message=text)


@settings(max_examples=300, deadline=None)
@given(version=text, type_url=text, nonce=text, resource_names=names, node=nodes, error=errors)
def test_sotw_requests_decode_as_betterproto_does(
    version: str,
    type_url: str,
    nonce: str,
    resource_names: list[str],
    node: Node | None,
    error: Status | None,
) -> None:
    request = DiscoveryRequest(
        version_info=version,
        type_url=type_url,
        response_nonce=nonce,
        resource_names=resource_names,
        node=node,
        error_detail=error,
    )
    data = bytes(request)
    assert FramedCodec().decode(data, DiscoveryRequest) == DiscoveryRequest.parse(data)


@settings(max_examples=300, deadline=None)
@given(type_url=text, nonce=text, subscribe=names, unsubscribe=names, node=nodes, error=errors)
def test_delta_requests_decode_as_betterproto_does(
    type_url: str,
    nonce: str,
    subscribe: list[str],
    unsubscribe: list[str],
    node: Node | None,
    error: Status | None,
) -> None:
    request = DeltaDiscoveryRequest(
        type_url=type_url,
        response_nonce=nonce,
        resource_names_subscribe=subscribe,
        resource_names_unsubscribe=unsubscribe,
        node=node,
        error_detail=error,
    )
    data = bytes(request)
    assert FramedCodec().decode(data, DeltaDiscoveryRequest) == DeltaDiscoveryRequest.parse(data)


def test_identical_name_lists_share_their_strings() -> None:
    cache = NameCache()
    data = bytes(DiscoveryRequest(type_url="t", resource_names=[f"cluster-{i}" for i in range(100)]))
    first = fast_parse(data, DiscoveryRequest, cache)
    second = fast_parse(data, DiscoveryRequest, cache)
    assert first.resource_names == second.resource_names
    assert first.resource_names is not second.resource_names  # each caller owns its list
    assert all(a is b for a, b in zip(first.resource_names, second.resource_names, strict=True))


def test_fields_it_does_not_handle_fall_back_to_betterproto() -> None:
    request = DeltaDiscoveryRequest(type_url="t", initial_resource_versions={"a": "1"})
    data = bytes(request)
    assert fast_parse(data, DeltaDiscoveryRequest, NameCache()) is None
    assert FramedCodec().decode(data, DeltaDiscoveryRequest) == request
