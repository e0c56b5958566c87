"""The outbound listener of a proxy with no upstream services (Envoy's own rules)."""

from __future__ import annotations

from meshcp.compile import lds, naming
from meshcp.identity import Identity
from meshcp.policy.types import ProxyPolicy


def _policy(egress: bool) -> ProxyPolicy:
    return ProxyPolicy(Identity("shop", "idle"), (), (), egress, "cluster.local")


def test_no_upstreams_and_no_egress_still_has_a_filter_chain_that_denies() -> None:
    # Envoy NACKs a listener without filter chains ("no filter chains specified"); found by
    # a lab pod in a namespace with no services.
    listener = lds.outbound_listener(_policy(egress=False))
    assert listener.filter_chains == []
    default = listener.default_filter_chain
    assert default is not None and default.name == "outbound:denied"
    assert [f.name for f in default.filters] == [
        "envoy.filters.network.rbac",
        "envoy.filters.network.tcp_proxy",
    ]


def test_no_upstreams_with_egress_passes_through() -> None:
    default = lds.outbound_listener(_policy(egress=True)).default_filter_chain
    assert default is not None and default.name == "outbound:passthrough"
    assert naming.PASSTHROUGH_CLUSTER.encode() in bytes(default)
