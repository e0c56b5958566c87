"""The proxyless gRPC shape (`compile.proxyless`): what gRPC's xDS client reads, and
nothing it would reject. The loopback tests (tests/test_proxyless_grpc.py) prove gRPC
accepts it; these pin the choices where the issue left room."""

from __future__ import annotations

from meshcp._proto.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterLbPolicy
from meshcp._proto.envoy.config.endpoint.v3 import ClusterLoadAssignment
from meshcp._proto.envoy.config.listener.v3 import Listener
from meshcp._proto.envoy.config.route.v3 import RouteConfiguration
from meshcp._proto.envoy.extensions.filters.http.fault.v3 import HttpFault
from meshcp._proto.envoy.extensions.filters.http.rbac.v3 import Rbac as HttpRbac
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import HttpConnectionManager
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import DownstreamTlsContext, UpstreamTlsContext
from meshcp._proto.envoy.type.v3 import FractionalPercent
from meshcp.cache.encoding import Encoder
from meshcp.compile import proxyless
from meshcp.identity import Identity
from meshcp.model.smi import HTTPMatch
from meshcp.policy.types import Endpoint, HttpRule, InboundPort, ProxyPolicy, ServiceKey, SplitRoute, Upstream

SHOP = "shop"
GREETER = ServiceKey(SHOP, "greeter")
V1, V2 = ServiceKey(SHOP, "greeter-v1"), ServiceKey(SHOP, "greeter-v2")
SERVER = Identity(SHOP, "greeter")
CLIENT = Identity(SHOP, "client")


def upstream(service: ServiceKey, port: int = 50051, protocol: str = "grpc", **kw: object) -> Upstream:
    return Upstream(service, port, protocol, ("10.96.0.10",), (SERVER,), **kw)  # type: ignore[arg-type]


def test_listener_names_are_every_name_a_client_may_dial() -> None:
    ups = [upstream(GREETER), upstream(GREETER, 8080, "http"), upstream(GREETER, 9000, "tcp")]
    names = [listener.name for listener in proxyless.client_listeners(ups, SHOP)]
    assert "greeter.shop.svc.cluster.local:50051" in names
    assert "greeter:8080" in names
    # Without a port: the service's gRPC port, not its HTTP one; TCP ports have no listener.
    assert {"greeter", "greeter.shop", "greeter.shop.svc", "greeter.shop.svc.cluster.local"} <= set(names)
    assert len(names) == 4 * 2 + 4 and not any(name.endswith(":9000") for name in names)
    # A client of another namespace cannot mean this service by its short name.
    other = [listener.name for listener in proxyless.client_listeners(ups, "elsewhere")]
    assert "greeter" not in other and "greeter:50051" not in other and "greeter.shop" in other


def test_api_listener_has_the_router_only_and_routes_over_ads() -> None:
    (listener, *_) = proxyless.client_listeners([upstream(GREETER)], SHOP)
    assert listener.api_listener is not None and not listener.filter_chains and listener.address is None
    any_ = listener.api_listener.api_listener
    assert any_ is not None
    manager = HttpConnectionManager.parse(any_.value)
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.router"]
    assert manager.rds is not None and manager.rds.route_config_name == "grpc-routes:shop/greeter|50051"
    assert manager.rds.config_source is not None and manager.rds.config_source.ads is not None


def test_virtual_host_domains_are_the_authorities_with_port() -> None:
    (config,) = proxyless.route_configurations([upstream(GREETER)])
    (host,) = config.virtual_hosts
    assert "greeter.shop.svc.cluster.local:50051" in host.domains
    assert "greeter.shop.svc.cluster.local" in host.domains  # the only port: dialled without it too


def test_a_split_is_weighted_clusters_with_zero_weights_left_out() -> None:
    match = HTTPMatch(name="hello", path_regex="/hello.Greeter/.*")
    split = SplitRoute(((V1, 80), (V2, 20), (ServiceKey(SHOP, "greeter-v3"), 0)), (match,))
    (config,) = proxyless.route_configurations([upstream(GREETER, split=split)])
    routes = config.virtual_hosts[0].routes
    weighted = routes[0].route.weighted_clusters  # type: ignore[union-attr]
    assert weighted is not None
    assert [(c.name, c.weight) for c in weighted.clusters] == [
        ("shop/greeter-v1|50051", 80),
        ("shop/greeter-v2|50051", 20),
    ]
    assert routes[0].match is not None and routes[0].match.safe_regex is not None  # the split's match
    assert routes[-1].route is not None and routes[-1].route.cluster == "shop/greeter|50051"  # the rest


def test_clusters_use_the_certificate_provider_and_match_the_servers_sans() -> None:
    specs = proxyless.cluster_specs([upstream(GREETER)])
    cluster = proxyless.cluster(specs[0], "cluster.local")
    assert cluster.lb_policy == ClusterLbPolicy.ROUND_ROBIN and cluster.type == ClusterDiscoveryType.EDS
    assert cluster.transport_socket is not None and cluster.transport_socket.typed_config is not None
    tls = UpstreamTlsContext.parse(cluster.transport_socket.typed_config.value).common_tls_context
    assert tls is not None and not tls.tls_certificate_sds_secret_configs  # gRPC has no SDS
    assert tls.tls_certificate_provider_instance is not None
    assert tls.tls_certificate_provider_instance.instance_name == "meshcp"
    validation = tls.validation_context
    assert validation is not None and validation.ca_certificate_provider_instance is not None
    assert sorted(str(m.exact) for m in validation.match_subject_alt_names) == [
        "greeter.shop.cluster.local",
        "spiffe://cluster.local/ns/shop/sa/greeter",
    ]


def test_endpoints_sit_in_one_weighted_locality() -> None:
    found = proxyless.load_assignment(GREETER, 50051, [Endpoint("127.0.0.3", 1), Endpoint("127.0.0.2", 1)])
    (locality,) = found.endpoints
    assert locality.load_balancing_weight == 1  # gRPC drops a locality without a weight
    assert [e.endpoint.address.socket_address.address for e in locality.lb_endpoints] == [  # type: ignore[union-attr]
        "127.0.0.2",
        "127.0.0.3",
    ]
    assert proxyless.load_assignment(GREETER, 50051, []).endpoints == []


def test_server_listeners_require_client_certificates_and_end_with_the_router() -> None:
    rule = HttpRule(HTTPMatch(name="echo", path_regex="/meshtest.Echo/.*"), frozenset({CLIENT}))
    port = InboundPort(GREETER, 50051, 41001, "grpc", (rule,))
    tcp = InboundPort(GREETER, 9000, 9000, "tcp")
    listeners = proxyless.server_listeners(ProxyPolicy(SERVER, (port, tcp), (), False, "cluster.local"))
    assert [listener.name for listener in listeners] == [
        "grpc/server?xds.resource.listening_address=0.0.0.0:41001",
        "grpc/server?xds.resource.listening_address=[::]:41001",
    ]
    listener = listeners[0]
    assert listener.address is not None and listener.address.socket_address is not None
    assert listener.address.socket_address.address == "0.0.0.0"
    (chain,) = listener.filter_chains
    assert chain.transport_socket is not None and chain.transport_socket.typed_config is not None
    tls = DownstreamTlsContext.parse(chain.transport_socket.typed_config.value)
    assert tls.require_client_certificate
    (hcm,) = chain.filters
    assert hcm.typed_config is not None
    manager = HttpConnectionManager.parse(hcm.typed_config.value)
    assert [f.name for f in manager.http_filters] == ["envoy.filters.http.rbac", "envoy.filters.http.router"]
    rbac_any = manager.http_filters[0].typed_config
    assert rbac_any is not None
    rules = HttpRbac.parse(rbac_any.value).rules
    assert rules is not None
    assert b"spiffe://cluster.local/ns/shop/sa/client" in bytes(rules)
    (route,) = manager.route_config.virtual_hosts[0].routes  # type: ignore[union-attr]
    assert route.non_forwarding_action is not None  # what gRPC requires of a server's routes


def test_servers_bound_to_their_pod_ip_get_listeners_of_it() -> None:
    port = InboundPort(GREETER, 50051, 41001, "grpc")
    policy = ProxyPolicy(SERVER, (port,), (), False, "cluster.local")
    listeners = proxyless.server_listeners(policy, ["10.244.1.7", "fd00::7", "10.244.1.7"])
    assert [listener.name.rsplit("=", 1)[1] for listener in listeners] == [
        "0.0.0.0:41001",
        "10.244.1.7:41001",
        "[::]:41001",
        "[fd00::7]:41001",
    ]
    addresses = [listener.address.socket_address.address for listener in listeners]  # type: ignore[union-attr]
    assert addresses == ["0.0.0.0", "10.244.1.7", "::", "fd00::7"]


def test_resources_encode_without_deprecation_warnings() -> None:
    """gRPC reads the deprecated `match_subject_alt_names`; encoding must not warn (the
    test configuration turns warnings into errors)."""
    encoder = Encoder()
    spec = proxyless.cluster_specs([upstream(GREETER)])[0]
    assert encoder.encode(proxyless.cluster(spec, "cluster.local")).name == "shop/greeter|50051"


def test_denied_services_get_listeners_aborting_with_permission_denied_on_one_shared_route() -> None:
    other = ServiceKey(SHOP, "vault")
    reachable = [upstream(GREETER)]
    everything = (
        upstream(GREETER),
        upstream(other),
        upstream(other, 8080, "http"),
        upstream(other, 9000, "tcp"),
    )
    policy = ProxyPolicy(CLIENT, (), tuple(reachable), False, "cluster.local", listener_upstreams=everything)
    denied = proxyless.denied_upstreams(policy)
    assert [(u.service, u.port) for u in denied] == [(other, 50051), (other, 8080)]
    listeners = {listener.name: listener for listener in proxyless.client_listeners(reachable, SHOP, denied)}
    # The names a reachable port has, for the denied ones too; TCP ports have none.
    assert {"vault", "vault:50051", "vault.shop.svc:8080", "greeter"} <= set(listeners)
    assert len(listeners) == 4 * 2 + 4 * 2 + 4 * 1
    routes = set()
    for name in ("vault", "vault.shop.svc.cluster.local:8080"):
        manager = HttpConnectionManager.parse(listeners[name].api_listener.api_listener.value)  # type: ignore[union-attr]
        assert [f.name for f in manager.http_filters] == [
            "envoy.filters.http.fault",
            "envoy.filters.http.router",
        ]
        fault = HttpFault.parse(manager.http_filters[0].typed_config.value)  # type: ignore[union-attr]
        assert fault.abort is not None and fault.abort.grpc_status == 7 and fault.abort.http_status is None
        assert fault.abort.percentage == FractionalPercent(numerator=100)  # of HUNDRED, the default
        assert fault.delay is None and not fault.headers and fault.max_active_faults is None
        assert manager.rds is not None
        routes.add(manager.rds.route_config_name)
    greeter = _manager(listeners["greeter"])
    assert [f.name for f in greeter.http_filters] == ["envoy.filters.http.router"]
    # One route configuration for every denied name, to a cluster that exists, empty.
    route, cluster, assignment = proxyless.denied_resources(denied)
    assert isinstance(route, RouteConfiguration) and routes == {route.name}
    (host,) = route.virtual_hosts
    assert host.domains == ["*"] and len(host.routes) == 1 and host.routes[0].route is not None
    assert isinstance(cluster, Cluster) and host.routes[0].route.cluster == cluster.name
    assert cluster.type == ClusterDiscoveryType.EDS and cluster.transport_socket is None
    assert isinstance(assignment, ClusterLoadAssignment) and assignment.cluster_name == cluster.name
    assert not assignment.endpoints
    # Without pruning, or with nothing denied: none of it.
    assert proxyless.denied_upstreams(ProxyPolicy(CLIENT, (), tuple(reachable), False, "cluster.local")) == ()
    assert proxyless.denied_resources(()) == []
    # A name a reachable port already has stays the reachable port's.
    same = proxyless.client_listeners(reachable, SHOP, [upstream(GREETER, 50052)])
    plain = _manager(next(listener for listener in same if listener.name == "greeter"))
    assert [f.name for f in plain.http_filters] == ["envoy.filters.http.router"]


def _manager(listener: Listener) -> HttpConnectionManager:
    assert listener.api_listener is not None and listener.api_listener.api_listener is not None
    return HttpConnectionManager.parse(listener.api_listener.api_listener.value)
