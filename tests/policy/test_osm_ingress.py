"""OSM's IngressBackend: the chains it adds to its backends' inbound listener (http by peer
address, https with the mesh's certificates, principals and SNI), what is reported, that
an ingress pod moving is a full round, and that a change re-encodes only the backends'
inbound listeners."""

from __future__ import annotations

from dataclasses import replace

from meshcp._proto.envoy.config.listener.v3 import FilterChain, Listener
from meshcp._proto.envoy.config.rbac.v3 import Principal, Rbac
from meshcp._proto.envoy.extensions.filters.http.rbac.v3 import Rbac as HttpRbac
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import HttpConnectionManager
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import DownstreamTlsContext
from meshcp.cache import Encoder, resource_types
from meshcp.compile import lds
from meshcp.identity import Identity
from meshcp.model.meta import Meta
from meshcp.model.osm_policy import IngressBackend, IngressBackendPort, IngressSource
from meshcp.model.state import MeshObject, MeshState
from meshcp.policy.build import build_policies
from meshcp.policy.endpoint_change import endpoint_change
from meshcp.policy.ingress import principal
from meshcp.policy.types import IngressRule, ServiceKey
from meshcp.runtime.reconcile import Reconciler
from tests.policy.mesh import Bookstore, namespace, pod, service
from tests.policy.test_osm_policies import _bodies, _changed, of, policies

STORE = ServiceKey("bookstore", "bookstore")
CHAIN = "ingress:bookstore/bookstore|14001|local"
NGINX = IngressSource("Service", "nginx", "ingress")
EDGE: list[MeshObject] = [
    namespace("ingress", meshed=False),
    pod("ingress", "nginx-0", "nginx", "10.244.8.1", app="nginx"),
    service("ingress", "nginx", "10.96.8.1", (80, "http"), app="nginx"),
]


def ingress(
    name: str = "ib",
    *sources: IngressSource,
    backend: str = "bookstore",
    protocol: str = "http",
    skip: bool = False,
    sni: tuple[str, ...] = (),
    matches: tuple[str, ...] = (),
) -> IngressBackend:
    return IngressBackend(
        Meta(name, "bookstore"),
        (IngressBackendPort(backend, 14001, protocol, skip, sni),),
        sources or (NGINX,),
        matches,
    )


def chains(listener: Listener) -> dict[str, FilterChain]:
    return {c.name: c for c in listener.filter_chains}


def _rbac(chain: FilterChain) -> Rbac:
    assert chain.filters[-1].typed_config is not None
    manager = chain.filters[-1].typed_config.unpack()
    assert isinstance(manager, HttpConnectionManager)
    (rbac_filter, *_) = manager.http_filters
    assert rbac_filter.typed_config is not None
    found = rbac_filter.typed_config.unpack()
    assert isinstance(found, HttpRbac) and found.rules is not None
    return found.rules


def _admitted(rules: Rbac) -> Principal:
    (policy,) = rules.policies.values()
    (admitted,) = policy.principals
    return admitted


def test_http_ingress_admits_the_source_service_endpoints_on_the_backend_pods_only() -> None:
    policy = policies(*EDGE, ingress())
    store = of(policy, "bookstore")
    assert store.ingress == (IngressRule(STORE, 14001, 14001, "http", ("10.244.8.1/32",)),)
    found = chains(lds.inbound_listener(store))
    match = found[CHAIN].filter_chain_match
    assert match is not None
    assert (match.destination_port, match.transport_protocol, match.server_names) == (14001, "raw_buffer", [])
    assert found[CHAIN].transport_socket is None
    # the mesh's own chain on the same port stays as it was: TLS, by SNI
    mesh = found["inbound:bookstore/bookstore|14001|local"].filter_chain_match
    assert mesh is not None and mesh.transport_protocol == "tls"
    ip = _admitted(_rbac(found[CHAIN])).direct_remote_ip
    assert ip is not None and (ip.address_prefix, ip.prefix_len) == ("10.244.8.1", 32)
    assert of(policy, "warehouse", "bookstore").ingress == ()
    assert of(policy, "bookbuyer").ingress == ()
    assert not policy.problems


def test_https_with_principals_ranges_and_sni() -> None:
    sources = (
        IngressSource("AuthenticatedPrincipal", "nginx.ingress.cluster.local"),
        IngressSource("IPRange", "10.244.8.0/24"),
    )
    policy = policies(*EDGE, ingress("ib", *sources, protocol="https", sni=("books.example.com",)))
    (rule,) = of(policy, "bookstore").ingress
    assert rule.principals == (Identity("ingress", "nginx"),)
    assert (rule.source_ranges, rule.validate_client) == (("10.244.8.0/24",), True)
    chain = chains(lds.inbound_listener(of(policy, "bookstore")))[CHAIN]
    match = chain.filter_chain_match
    assert match is not None and (match.transport_protocol, match.server_names) == (
        "tls",
        ["books.example.com"],
    )
    assert chain.transport_socket is not None and chain.transport_socket.typed_config is not None
    tls = chain.transport_socket.typed_config.unpack()
    assert isinstance(tls, DownstreamTlsContext) and tls.require_client_certificate
    assert tls.common_tls_context is not None and tls.common_tls_context.validation_context_sds_secret_config
    both = _admitted(_rbac(chain)).and_ids
    assert both is not None
    address, names = both.ids
    assert address.direct_remote_ip is not None
    assert names.or_ids is not None  # the principal's URI and DNS SANs
    exact = [p.authenticated.principal_name for p in names.or_ids.ids if p.authenticated]
    assert {m.exact for m in exact if m is not None} == {
        "spiffe://cluster.local/ns/ingress/sa/nginx",
        "nginx.ingress.cluster.local",
    }


def test_skip_client_certificate_validation_and_any_source() -> None:
    anywhere = IngressSource("IPRange", "0.0.0.0/0")
    policy = policies(ingress("ib", anywhere, protocol="https", skip=True))
    chain = chains(lds.inbound_listener(of(policy, "bookstore")))[CHAIN]
    assert chain.transport_socket is not None and chain.transport_socket.typed_config is not None
    tls = chain.transport_socket.typed_config.unpack()
    assert isinstance(tls, DownstreamTlsContext) and not tls.require_client_certificate
    assert tls.common_tls_context is not None
    assert tls.common_tls_context.validation_context_sds_secret_config is None


def test_principals() -> None:
    assert principal("nginx.ingress.cluster.local", "cluster.local") == Identity("ingress", "nginx")
    assert principal("ingress.nginx.ingress.cluster.local", "cluster.local") == Identity(
        "ingress", "ingress.nginx"
    )
    assert principal("spiffe://cluster.local/ns/ingress/sa/nginx", "cluster.local") == Identity(
        "ingress", "nginx"
    )
    assert principal("nginx.ingress.example.org", "cluster.local") is None
    assert principal("spiffe://other/ns/ingress/sa/nginx", "cluster.local") is None


def test_what_is_reported() -> None:
    policy = policies(
        *EDGE,
        ingress("missing", IngressSource("Service", "gone", "ingress"), backend="nowhere", matches=("get",)),
        ingress("foreign", IngressSource("AuthenticatedPrincipal", "x.y.example.org"), protocol="https"),
    )
    reasons = {(p.ref.name, p.reason) for p in policy.problems}
    assert (
        "missing",
        "backends: Service bookstore/nowhere does not exist; the ingress applies once it does",
    ) in reasons
    assert any(
        n == "missing" and r.startswith("sources: Service ingress/gone does not exist") for n, r in reasons
    )
    assert any(n == "missing" and r.startswith("matches: not applied") for n, r in reasons)
    assert any(n == "foreign" and "is no identity of the mesh's trust domain" in r for n, r in reasons)
    # a principal that names nobody admits nobody (any address: none is named)
    (rule,) = of(policy, "bookstore").ingress
    assert (rule.principals, rule.source_ranges) == ((), None)
    assert _rbac(chains(lds.inbound_listener(of(policy, "bookstore")))[CHAIN]).policies == {}


def test_a_source_service_without_endpoints_admits_nobody_until_it_has() -> None:
    idle = service("ingress", "idle", "10.96.8.2", (80, "http"), app="idle")
    policy = policies(idle, ingress("ib", IngressSource("Service", "idle", "ingress")))
    (rule,) = of(policy, "bookstore").ingress
    assert rule.source_ranges == ()
    assert _rbac(chains(lds.inbound_listener(of(policy, "bookstore")))[CHAIN]).policies == {}
    assert any("has no ready endpoint" in p.reason for p in policy.problems)


def test_two_ingress_backends_on_one_backend_port_are_both_reported_and_none_applies() -> None:
    policy = policies(*EDGE, ingress("a"), ingress("b"))
    reasons = {p.ref.name: p.reason for p in policy.problems}
    assert reasons["a"] == reasons["b"]
    assert (
        reasons["a"]
        == "several IngressBackends (a, b) admit ingress to bookstore/bookstore port 14001; none applies"
    )
    assert all(not p.ingress for p in policy.classes.values())


def test_services_landing_on_one_pod_port_conflict_on_those_pods_only() -> None:
    # bookstore-v1's pods also back bookstore, on the same port: a and b meet there only
    policy = policies(*EDGE, ingress("a"), ingress("b", backend="bookstore-v1"))
    classes = [p for p in policy.classes.values() if p.identity == Identity("bookstore", "bookstore")]
    by_services = {tuple(sorted(str(p.service) for p in c.inbound)): c.ingress for c in classes}
    assert by_services[("bookstore/bookstore", "bookstore/bookstore-v1")] == ()
    (rule,) = by_services[("bookstore/bookstore", "bookstore/bookstore-v2")]
    assert rule.service == STORE
    reported = {p.ref.name for p in policy.problems if "listen on one port (14001)" in p.reason}
    assert reported == {"a", "b"}


def test_an_sni_name_of_the_mesh_is_left_to_the_mesh() -> None:
    policy = policies(*EDGE, ingress("ib", protocol="https", sni=("bookstore.bookstore.svc.cluster.local",)))
    assert of(policy, "bookstore").ingress == ()
    assert any("is a mesh service's own name" in p.reason for p in policy.problems)


def test_an_ingress_backend_re_encodes_only_its_backends_inbound_listener() -> None:
    for prune in (False, True):
        changed = _changed(ingress("ib", IngressSource("IPRange", "10.244.8.0/24")), prune=prune)
        assert changed == {("bookstore/bookstore", resource_types.LISTENER, "inbound-listener")}, changed
    # counted: one listener per bookstore class (v1 pods and v2 pods), nothing else
    encoder = Encoder()
    reconciler = Reconciler(encoder)
    state = MeshState().with_changes(Bookstore(extra=list(EDGE)).objects())
    reconciler.apply(state)
    count = encoder.encodes
    reconciler.apply(state.with_changes(upserts=[ingress()]))
    assert encoder.encodes - count == 2


def test_the_ingress_pod_moving_is_a_full_round_with_its_new_address() -> None:
    before = MeshState().with_changes(Bookstore(extra=[*EDGE, ingress()]).objects())
    moved = pod("ingress", "nginx-0", "nginx", "10.244.8.9", app="nginx")
    after = before.with_changes(upserts=[moved])
    policy = build_policies(before)
    assert endpoint_change(before, after, [moved.ref], policy) is None
    (rule,) = of(build_policies(after), "bookstore").ingress
    assert rule.source_ranges == ("10.244.8.9/32",)
    # a pod that is no ingress source still moves in an endpoints-only round
    buyer = pod("bookbuyer", "bookbuyer", "bookbuyer", "10.244.1.9")
    assert endpoint_change(before, before.with_changes(upserts=[buyer]), [buyer.ref], policy) is not None


def test_every_round_of_ingress_changes_equals_a_fresh_compile() -> None:
    moved = pod("ingress", "nginx-0", "nginx", "10.244.8.9", app="nginx")
    steps: list[list[MeshObject]] = [
        [*EDGE],
        [*EDGE, ingress()],
        [*EDGE[:1], moved, *EDGE[2:], ingress()],
        [*EDGE, ingress(protocol="https", sni=("books.test",))],
        [*EDGE, ingress("a"), ingress("b", backend="bookstore-v1")],
        [*EDGE],
    ]
    for prune in (False, True):
        reconciler = Reconciler(Encoder())
        state = MeshState().with_changes(Bookstore(prune=prune).objects())
        before: list[MeshObject] = []
        for extra in steps:
            gone = [o.ref for o in before if o.ref not in {e.ref for e in extra}]
            state = state.with_changes(upserts=extra, deletes=gone)
            fresh = MeshState().with_changes(state.objects.values())
            assert _bodies(reconciler.apply(state)) == _bodies(Reconciler(Encoder()).apply(fresh)), extra
            before = extra


def test_classes_keep_their_keys() -> None:
    # an IngressBackend changes what a class gets, never which pods share a class
    without = policies(*EDGE)
    with_ingress = policies(*EDGE, ingress())
    assert without.pod_classes == with_ingress.pod_classes
    assert replace(of(with_ingress, "bookstore"), ingress=()) == of(without, "bookstore")
