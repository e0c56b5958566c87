"""The configuration the fan-out benchmark serves: realistic small OSM-shaped resources.

Per proxy class: R EDS clusters `bench/svc-NNNN|PORT` with upstream mTLS, their R
ClusterLoadAssignments (3 endpoints each), `outbound-listener` and `inbound-listener`
with one HTTP filter chain per port (RDS), and one outbound and one inbound route
configuration per port. Classes share every resource except their inbound listener and
inbound routes, as proxies of different identities in one mesh do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta

import betterproto2

from meshcp._proto.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType, ClusterEdsClusterConfig
from meshcp._proto.envoy.config.core.v3 import (
    Address,
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
    SocketAddress,
    TransportSocket,
)
from meshcp._proto.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from meshcp._proto.envoy.config.listener.v3 import Filter, FilterChain, FilterChainMatch, Listener
from meshcp._proto.envoy.config.route.v3 import (
    Route,
    RouteAction,
    RouteConfiguration,
    RouteMatch,
    VirtualHost,
)
from meshcp._proto.envoy.extensions.filters.http.router.v3 import Router
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    HttpFilter,
    Rds,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    CommonTlsContextCombinedCertificateValidationContext,
    SdsSecretConfig,
    UpstreamTlsContext,
)
from meshcp.cache import Encoder, Resource, Snapshot, pack
from meshcp.compile import naming
from meshcp.compile.cds import server_sans
from meshcp.identity import Identity

NAMESPACE = "bench"
PORTS = (8080, 8081, 8082, 8083, 8084)


def service(index: int) -> str:
    return f"svc-{index:04d}"


def port_of(index: int) -> int:
    return PORTS[index % len(PORTS)]


def cluster_name(index: int) -> str:
    return f"{NAMESPACE}/{service(index)}|{port_of(index)}"


def endpoint_names(resources: int) -> list[str]:
    """The EDS names every client subscribes to (one per cluster)."""
    return [cluster_name(i) for i in range(resources)]


def route_names() -> list[str]:
    """The RDS names every client subscribes to (named by the listeners)."""
    return [f"rds-{direction}.{port}" for direction in ("outbound", "inbound") for port in PORTS]


def _ads() -> ConfigSource:
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def cluster(index: int) -> Cluster:
    svc = service(index)
    tls = UpstreamTlsContext(
        sni=f"{svc}.{NAMESPACE}.svc.cluster.local",
        common_tls_context=CommonTlsContext(
            alpn_protocols=["h2", "http/1.1"],
            tls_certificate_sds_secret_configs=[SdsSecretConfig(name=naming.SERVICE_CERT, sds_config=_ads())],
            # As meshcp compiles it: the shared trust bundle plus the service's own SANs.
            combined_validation_context=CommonTlsContextCombinedCertificateValidationContext(
                default_validation_context=CertificateValidationContext(
                    match_typed_subject_alt_names=server_sans([Identity(NAMESPACE, svc)], "cluster.local")
                ),
                validation_context_sds_secret_config=SdsSecretConfig(
                    name=naming.ROOT_CERT, sds_config=_ads()
                ),
            ),
        ),
    )
    return Cluster(
        name=cluster_name(index),
        type=ClusterDiscoveryType.EDS,
        eds_cluster_config=ClusterEdsClusterConfig(eds_config=_ads()),
        connect_timeout=timedelta(seconds=1),
        transport_socket=TransportSocket(name="envoy.transport_sockets.tls", typed_config=pack(tls)),
    )


def endpoints(index: int, generation: int = 0) -> ClusterLoadAssignment:
    """Three endpoints; `generation` moves the first one (the benchmark's one-resource change)."""
    hosts = [f"10.{index // 250}.{index % 250}.{n}" for n in (11, 12, 13)]
    if generation:
        hosts[0] = f"10.200.{generation // 250 % 250}.{generation % 250}"
    return ClusterLoadAssignment(
        cluster_name=cluster_name(index),
        endpoints=[
            LocalityLbEndpoints(
                lb_endpoints=[
                    LbEndpoint(
                        endpoint=Endpoint(
                            address=Address(
                                socket_address=SocketAddress(address=host, port_value=port_of(index))
                            )
                        )
                    )
                    for host in hosts
                ]
            )
        ],
    )


def _hcm(route: str, stat_prefix: str) -> Filter:
    manager = HttpConnectionManager(
        stat_prefix=stat_prefix,
        rds=Rds(config_source=_ads(), route_config_name=route),
        http_filters=[HttpFilter(name="envoy.filters.http.router", typed_config=pack(Router()))],
    )
    return Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(manager))


def listener(direction: str, klass: int) -> Listener:
    port = 15001 if direction == "outbound" else 15003
    return Listener(
        name=f"{direction}-listener",
        address=Address(socket_address=SocketAddress(address="0.0.0.0", port_value=port)),
        filter_chains=[
            FilterChain(
                name=f"{direction}-http-{p}",
                filter_chain_match=FilterChainMatch(destination_port=p),
                filters=[_hcm(f"rds-{direction}.{p}", f"{direction}-{p}-class-{klass}")],
            )
            for p in PORTS
        ],
    )


def outbound_routes(port: int, resources: int) -> RouteConfiguration:
    hosts = []
    for index in (i for i in range(resources) if port_of(i) == port):
        svc = service(index)
        names = [svc, f"{svc}.{NAMESPACE}", f"{svc}.{NAMESPACE}.svc", f"{svc}.{NAMESPACE}.svc.cluster.local"]
        hosts.append(
            VirtualHost(
                name=f"{NAMESPACE}/{svc}",
                domains=[d for name in names for d in (name, f"{name}:{port}")],
                routes=[Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster=cluster_name(index)))],
            )
        )
    return RouteConfiguration(name=f"rds-outbound.{port}", virtual_hosts=hosts)


def inbound_routes(port: int, klass: int) -> RouteConfiguration:
    local = f"{NAMESPACE}/local-{klass}|{port}|local"
    return RouteConfiguration(
        name=f"rds-inbound.{port}",
        virtual_hosts=[
            VirtualHost(
                name=f"inbound-{klass}",
                domains=["*"],
                routes=[Route(match=RouteMatch(prefix="/"), route=RouteAction(cluster=local))],
            )
        ],
    )


def messages(
    resources: int, classes: int
) -> tuple[list[betterproto2.Message], list[list[betterproto2.Message]]]:
    """(messages shared by every class, messages specific to each class)."""
    shared: list[betterproto2.Message] = [cluster(i) for i in range(resources)]
    shared += [endpoints(i) for i in range(resources)]
    shared.append(listener("outbound", 0))
    shared += [outbound_routes(p, resources) for p in PORTS]
    specific: list[list[betterproto2.Message]] = [
        [listener("inbound", k), *(inbound_routes(p, k) for p in PORTS)] for k in range(classes)
    ]
    return shared, specific


def class_key(klass: int) -> str:
    return f"class-{klass}"


@dataclass
class Build:
    snapshots: dict[str, Snapshot]
    encodes: int
    seconds: float


class Workload:
    """Encodes the configuration once and builds the snapshot of every class.

    `change` moves one endpoint of cluster 0 and rebuilds every class's snapshot by
    reusing the already encoded `Resource` objects, encoding only the changed message.
    Each new snapshot is built relative to the one it replaces (`previous=`), as the
    publisher builds them, so that streams look at the changed names only.
    """

    def __init__(self, resources: int, classes: int, encoder: Encoder) -> None:
        self.resources = resources
        self.classes = classes
        self.encoder = encoder
        self.generation = 0
        shared, specific = messages(resources, classes)
        self._shared = [encoder.encode(m) for m in shared]
        self._specific = [[encoder.encode(m) for m in ms] for ms in specific]
        self._current: dict[str, Snapshot] = {}

    def build(self) -> Build:
        started, before = time.perf_counter(), self.encoder.encodes
        snapshots = self._snapshots()
        return Build(snapshots, self.encoder.encodes - before, time.perf_counter() - started)

    def change(self) -> Build:
        """The one-resource change: a new ClusterLoadAssignment for cluster 0, encoded once."""
        started, before = time.perf_counter(), self.encoder.encodes
        self.generation += 1
        changed = self.encoder.encode(endpoints(0, self.generation))
        self._shared = [changed if _same_slot(r, changed) else r for r in self._shared]
        snapshots = self._snapshots()
        return Build(snapshots, self.encoder.encodes - before, time.perf_counter() - started)

    def _snapshots(self) -> dict[str, Snapshot]:
        """Every class's snapshot of the current resources, each related to its last one."""
        self._current = {
            class_key(k): Snapshot(
                [*self._shared, *self._specific[k]], previous=self._current.get(class_key(k))
            )
            for k in range(self.classes)
        }
        return self._current

    def total(self) -> int:
        return len(self._shared) + len(self._specific[0])

    def naive_rebuild(self) -> Build:
        """The baseline of the encode column: construct and encode every message again."""
        started, before = time.perf_counter(), self.encoder.encodes
        shared, specific = messages(self.resources, self.classes)
        resources: list[Resource] = [self.encoder.encode(m) for m in shared]
        for ms in specific:
            resources += [self.encoder.encode(m) for m in ms]
        return Build({}, self.encoder.encodes - before, time.perf_counter() - started)


def _same_slot(a: Resource, b: Resource) -> bool:
    return a.type_url == b.type_url and a.name == b.name
