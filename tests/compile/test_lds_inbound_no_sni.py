"""The inbound listener's chain for mesh clients that send no SNI (proxyless gRPC): one per
target port, the SNI chain's mTLS and filters without `server_names`, and none where the
port's services would make the callee ambiguous or an IngressBackend already takes such
connections."""

from __future__ import annotations

from meshcp._proto.envoy.config.listener.v3 import FilterChain
from meshcp.compile import lds
from meshcp.model.core import Service, ServicePort
from meshcp.model.meta import Meta, frozen_map
from meshcp.model.state import MeshObject
from tests.policy.test_osm_ingress import EDGE, ingress
from tests.policy.test_osm_policies import of, policies


def chains(*extra: MeshObject, identity: str, namespace: str = "bookstore") -> dict[str, FilterChain]:
    policy = of(policies(*extra), identity, namespace)
    return {c.name: c for c in lds.inbound_listener(policy).filter_chains}


def test_a_port_of_services_sharing_one_route_configuration_gets_one_chain_without_sni() -> None:
    # bookstore-v1's pods serve bookstore and bookstore-v1 on 14001: one rds-inbound.14001,
    # whose virtual hosts pick the service (and its RBAC) by authority.
    found = chains(identity="bookstore")
    no_sni = found["inbound-no-sni:14001"]
    match = no_sni.filter_chain_match
    assert match is not None
    assert (match.destination_port, match.transport_protocol, match.server_names) == (14001, "tls", [])
    sni = found["inbound:bookstore/bookstore|14001|local"]
    assert sni.filter_chain_match is not None and sni.filter_chain_match.server_names
    assert (no_sni.filters, no_sni.transport_socket) == (sni.filters, sni.transport_socket)


def test_tcp_and_http_ports_of_one_service_each_get_one() -> None:
    found = chains(identity="warehouse", namespace="bookstore")
    assert {"inbound-no-sni:5432", "inbound-no-sni:8080"} <= set(found)
    assert found["inbound-no-sni:5432"].filters == found["inbound:bookstore/warehouse|5432|local"].filters


def test_an_ambiguous_port_gets_none() -> None:
    # A second service on the warehouse's target ports under other service ports: its
    # TCP proxy and its routes differ from the warehouse's, so who is called is unknown.
    ledger = Service(
        Meta("ledger", "bookstore"),
        (ServicePort(9000, 5432, "tcp"), ServicePort(9080, 8080, "http")),
        frozen_map({"app": "warehouse"}),
        "10.96.0.30",
    )
    found = chains(ledger, identity="warehouse", namespace="bookstore")
    assert "inbound:bookstore/ledger|9000|local" in found
    assert not [name for name in found if name.startswith("inbound-no-sni:")]


def test_an_https_ingress_chain_without_sni_names_takes_such_connections() -> None:
    found = chains(*EDGE, ingress(protocol="https"), identity="bookstore")
    assert "inbound-no-sni:14001" not in found
    assert "ingress:bookstore/bookstore|14001|local" in found
    with_names = chains(*EDGE, ingress(protocol="https", sni=("books.test",)), identity="bookstore")
    assert "inbound-no-sni:14001" in with_names
