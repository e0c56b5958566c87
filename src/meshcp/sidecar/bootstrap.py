"""The Envoy bootstrap of a sidecar: who it is, where the controller is, how to trust it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from meshcp._proto.envoy.config.bootstrap.v3 import (
    Admin,
    Bootstrap,
    BootstrapDynamicResources,
    BootstrapStaticResources,
)
from meshcp._proto.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from meshcp._proto.envoy.config.core.v3 import (
    Address,
    AggregatedConfigSource,
    ApiConfigSource,
    ApiConfigSourceApiType,
    ApiVersion,
    ConfigSource,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    Http2ProtocolOptions,
    Node,
    SocketAddress,
    TransportSocket,
)
from meshcp._proto.envoy.config.endpoint.v3 import (
    ClusterLoadAssignment,
    Endpoint,
    LbEndpoint,
    LocalityLbEndpoints,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    TlsCertificate,
    UpstreamTlsContext,
)
from meshcp._proto.envoy.extensions.upstreams.http.v3 import (
    HttpProtocolOptions,
    HttpProtocolOptionsExplicitHttpConfig,
)
from meshcp.cache.encoding import pack

if TYPE_CHECKING:  # at run time: probes -> iptables -> bootstrap would be a cycle
    from meshcp.sidecar.probes import ProbeResources

CONTROLLER_CLUSTER = "meshcp-controller"
ADMIN_PORT = 15000


@dataclass(frozen=True)
class XdsTls:
    """Files (paths inside the sidecar) of the proxy's xDS client certificate and trust."""

    certificate: str
    private_key: str
    trust_bundle: str
    #: The name the controller's certificate carries (SNI and verification).
    server_name: str


def bootstrap(
    node_id: str,
    cluster: str,
    xds_host: str,
    xds_port: int,
    *,
    tls: XdsTls | None,
    delta: bool = False,
    admin_address: str = "127.0.0.1",
    admin_port: int = ADMIN_PORT,
    probes: ProbeResources | None = None,
) -> Bootstrap:
    """ADS (SotW or delta) to the controller; everything else arrives over it, except the
    static listeners and clusters serving the pod's rewritten probes
    (`sidecar.probes.probe_resources` of the injector's original-probes annotation).

    The node is sent only on the first request of the stream: decoding it on every ACK
    costs the controller ~50 µs each (../shared/DEPENDENCY-FACTS.md).
    """
    ads = ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)
    return Bootstrap(
        node=Node(id=node_id, cluster=cluster),
        admin=Admin(
            address=Address(socket_address=SocketAddress(address=admin_address, port_value=admin_port))
        ),
        dynamic_resources=BootstrapDynamicResources(
            ads_config=ApiConfigSource(
                api_type=ApiConfigSourceApiType.DELTA_GRPC if delta else ApiConfigSourceApiType.GRPC,
                transport_api_version=ApiVersion.V3,
                set_node_on_first_message_only=True,
                grpc_services=[GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=CONTROLLER_CLUSTER))],
            ),
            cds_config=ads,
            lds_config=ads,
        ),
        static_resources=BootstrapStaticResources(
            listeners=list(probes.listeners) if probes else [],
            clusters=[_controller(xds_host, xds_port, tls), *(probes.clusters if probes else [])],
        ),
    )


def _controller(host: str, port: int, tls: XdsTls | None) -> Cluster:
    try:
        ipaddress.ip_address(host)
        kind = ClusterDiscoveryType.STATIC
    except ValueError:
        kind = ClusterDiscoveryType.STRICT_DNS
    cluster = Cluster(
        name=CONTROLLER_CLUSTER,
        type=kind,
        connect_timeout=timedelta(seconds=1),
        load_assignment=ClusterLoadAssignment(
            cluster_name=CONTROLLER_CLUSTER,
            endpoints=[
                LocalityLbEndpoints(
                    lb_endpoints=[
                        LbEndpoint(
                            endpoint=Endpoint(
                                address=Address(socket_address=SocketAddress(address=host, port_value=port))
                            )
                        )
                    ]
                )
            ],
        ),
        typed_extension_protocol_options={
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(
                HttpProtocolOptions(
                    explicit_http_config=HttpProtocolOptionsExplicitHttpConfig(
                        http2_protocol_options=Http2ProtocolOptions()
                    )
                )
            )
        },
    )
    if tls is not None:
        context = UpstreamTlsContext(
            common_tls_context=CommonTlsContext(
                tls_certificates=[
                    TlsCertificate(
                        certificate_chain=DataSource(filename=tls.certificate),
                        private_key=DataSource(filename=tls.private_key),
                    )
                ],
                validation_context=CertificateValidationContext(
                    trusted_ca=DataSource(filename=tls.trust_bundle)
                ),
                alpn_protocols=["h2"],
            ),
            sni=tls.server_name,
        )
        cluster.transport_socket = TransportSocket(
            name="envoy.transport_sockets.tls", typed_config=pack(context)
        )
    return cluster


def as_dict(config: Bootstrap) -> dict[str, Any]:
    """The bootstrap as proto3 JSON (Envoy reads it as JSON or YAML)."""
    return config.to_dict()
