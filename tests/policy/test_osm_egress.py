"""OSM's Egress: only its sources' outbound listeners change, rules of several Egresses
combine per port, conflicts and missing route groups are reported, and a change
re-encodes only its sources' listener and clusters."""

from __future__ import annotations

from meshcp._proto.envoy.config.listener.v3 import FilterChain, FilterChainMatch, Listener
from meshcp._proto.envoy.config.route.v3 import RouteConfiguration
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import HttpConnectionManager
from meshcp._proto.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
from meshcp.cache import Encoder, resource_types
from meshcp.compile import cds, lds, naming
from meshcp.model.meta import Meta
from meshcp.model.osm_policy import Egress, EgressPort
from meshcp.model.smi import HTTPMatch, IdentitySubject
from meshcp.model.state import MeshState
from meshcp.policy.types import EgressHost, EgressRule
from meshcp.runtime.reconcile import Reconciler
from tests.policy.mesh import Bookstore, routes
from tests.policy.test_osm_policies import _changed, _encoded, of, policies

GET = HTTPMatch("get", "/get", ("GET",))


def egress(
    name: str = "e",
    *ports: tuple[int, str],
    hosts: tuple[str, ...] = ("httpbin.org",),
    ips: tuple[str, ...] = (),
    matches: tuple[str, ...] = (),
    source: str = "bookbuyer",
) -> Egress:
    return Egress(
        Meta(name, "bookbuyer"),
        (IdentitySubject(source, source),),
        tuple(EgressPort(n, p) for n, p in ports or ((80, "http"),)),
        hosts,
        ips,
        matches,
    )


def _chains(listener: Listener) -> dict[str, FilterChain]:
    return {c.name: c for c in listener.filter_chains if c.name.startswith("egress:")}


def _match(chain: FilterChain) -> FilterChainMatch:
    assert chain.filter_chain_match is not None
    return chain.filter_chain_match


def _routes(chain: FilterChain) -> RouteConfiguration:
    assert chain.filters[0].typed_config is not None
    manager = chain.filters[0].typed_config.unpack()
    assert isinstance(manager, HttpConnectionManager) and manager.route_config is not None
    return manager.route_config


def test_an_egress_is_in_its_source_listener_only() -> None:
    policy = policies(egress())
    buyer, thief = of(policy, "bookbuyer"), of(policy, "bookthief")
    assert buyer.egress == (EgressRule(80, "http", (), (EgressHost("httpbin.org"),)),)
    assert thief.egress == ()
    chains = _chains(lds.outbound_listener(buyer))
    assert list(chains) == ["egress:http.80"]
    assert _match(chains["egress:http.80"]).destination_port == 80
    hosts = _routes(chains["egress:http.80"]).virtual_hosts
    assert [(h.name, h.domains) for h in hosts] == [
        ("egress|httpbin.org", ["httpbin.org"]),
        ("denied", ["*"]),
    ]
    assert (
        hosts[0].routes[0].route is not None
        and hosts[0].routes[0].route.cluster == naming.PASSTHROUGH_CLUSTER
    )
    assert hosts[1].routes[0].direct_response is not None and hosts[1].routes[0].direct_response.status == 403
    assert naming.PASSTHROUGH_CLUSTER in {c.name for c in cds.local_clusters(buyer)}
    assert naming.PASSTHROUGH_CLUSTER not in {c.name for c in cds.local_clusters(thief)}
    assert _chains(lds.outbound_listener(thief)) == {}
    assert lds.outbound_listener(thief).default_filter_chain is None  # unmatched: closed


def test_https_by_sni_and_tcp_by_address_with_the_tls_inspector_on_https_ports_only() -> None:
    policy = policies(
        egress("tls", (443, "https"), hosts=("api.example.com",)),
        egress("db", (5432, "tcp"), hosts=(), ips=("203.0.113.0/24",)),
    )
    listener = lds.outbound_listener(of(policy, "bookbuyer"))
    chains = _chains(listener)
    https, tcp = _match(chains["egress:https.443"]), _match(chains["egress:tcp.5432"])
    assert (https.destination_port, https.server_names, https.transport_protocol) == (
        443,
        ["api.example.com"],
        "tls",
    )
    assert [(r.address_prefix, r.prefix_len) for r in tcp.prefix_ranges] == [("203.0.113.0", 24)]
    for chain in chains.values():
        assert chain.filters[0].typed_config is not None
        proxy = chain.filters[0].typed_config.unpack()
        assert isinstance(proxy, TcpProxy) and proxy.cluster == naming.PASSTHROUGH_CLUSTER
    (inspector,) = [f for f in listener.listener_filters if f.name == "envoy.filters.listener.tls_inspector"]
    disabled = inspector.filter_disabled
    assert disabled is not None and disabled.not_match is not None
    port_range = disabled.not_match.destination_port_range
    assert port_range is not None and (port_range.start, port_range.end) == (443, 444)


def test_egresses_combine_per_port_and_matches_come_from_route_groups() -> None:
    policy = policies(
        routes("bookbuyer", "get", GET),
        egress("a", hosts=("a.example.com",), matches=("get",)),
        egress("b", hosts=("a.example.com", "b.example.com"), ips=("198.51.100.0/24",)),
        egress("c", hosts=("c.example.com",), matches=("missing",)),
    )
    (rule,) = of(policy, "bookbuyer").egress
    # a's matches, and b's every request, for a.example.com: every request; c's group is missing
    assert rule == EgressRule(80, "http", (), (EgressHost("a.example.com"), EgressHost("b.example.com")))
    assert any("HTTPRouteGroup bookbuyer/missing does not exist" in p.reason for p in policy.problems)
    only = policies(routes("bookbuyer", "get", GET), egress("a", matches=("get",)))
    (rule,) = of(only, "bookbuyer").egress
    assert rule.hosts == (EgressHost("httpbin.org", (GET,)),)
    (host, _) = _routes(_chains(lds.outbound_listener(of(only, "bookbuyer")))["egress:http.80"]).virtual_hosts
    assert [r.direct_response.status if r.direct_response else "route" for r in host.routes] == ["route", 403]
    assert host.routes[0].match is not None and host.routes[0].match.safe_regex is not None


def test_a_tcp_port_shadows_http_on_it_and_is_reported() -> None:
    policy = policies(egress("web"), egress("raw", (80, "tcp"), hosts=()))
    assert [r.protocol for r in of(policy, "bookbuyer").egress] == ["tcp"]
    assert any(p.ref.name == "web" and "80 is tcp" in p.reason for p in policy.problems)


def test_a_range_exactly_a_mesh_address_is_left_to_the_mesh() -> None:
    # bookstore's ClusterIP on its port: Envoy would refuse two chains with one match
    store = next(u for u in of(policies(), "bookbuyer").upstreams if u.service.name == "bookstore")
    address = store.addresses[0]
    policy = policies(egress("x", (store.port, "tcp"), hosts=(), ips=(f"{address}/32",)))
    assert _chains(lds.outbound_listener(of(policy, "bookbuyer"))) == {}


def test_an_egress_re_encodes_only_its_source_listener_and_local_clusters() -> None:
    for prune in (False, True):
        changed = _changed(egress(), prune=prune)
        assert {(i, t) for i, t, _ in changed} == {
            ("bookbuyer/bookbuyer", resource_types.LISTENER),
            ("bookbuyer/bookbuyer", resource_types.CLUSTER),
        }, changed
        assert {n for _, _, n in changed} == {naming.OUTBOUND_LISTENER, naming.PASSTHROUGH_CLUSTER}


def test_classes_allowed_the_same_share_one_listener() -> None:
    objects = Bookstore(extra=[egress(), egress("t", source="bookthief")]).objects()
    encoded = _encoded(Reconciler(Encoder()).apply(MeshState().with_changes(objects)))
    buyer = encoded[("bookbuyer/bookbuyer", resource_types.LISTENER, naming.OUTBOUND_LISTENER)]
    thief = encoded[("bookthief/bookthief", resource_types.LISTENER, naming.OUTBOUND_LISTENER)]
    assert buyer is thief
