"""The Envoy bootstrap of a sidecar: who it is, where the controller is, how to trust it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from meshcp._proto.envoy.config.bootstrap.v3 import (
    Admin,
    Bootstrap,
    BootstrapDynamicResources,
    BootstrapStaticResources,
)
from meshcp._proto.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from meshcp._proto.envoy.config.core.v3 import (
    ApiConfigSource,
    ApiConfigSourceApiType,
    ApiVersion,
    DataSource,
    GrpcService,
    GrpcServiceEnvoyGrpc,
    Node,
)
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    TlsCertificate,
    UpstreamTlsContext,
)
from meshcp.sidecar.envoy_parts import LOOPBACK, ads, http2_only, socket_address, static_cluster, tls_socket
from meshcp.sidecar.ports import ADMIN_PORT
from meshcp.sidecar.probes import ProbeResources

CONTROLLER_CLUSTER = "meshcp-controller"


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
    admin_address: str = LOOPBACK,
    admin_port: int = ADMIN_PORT,
    probes: ProbeResources | None = None,
) -> Bootstrap:
    """ADS (SotW or delta) to the controller; everything else arrives over it, except the
    static listeners and clusters serving the pod's rewritten probes
    (`sidecar.probes.probe_resources` of the injector's original-probes annotation).

    The node is sent only on the first request of the stream: the controller would
    otherwise decode it again with every ACK, and it never changes within a stream.
    """
    return Bootstrap(
        node=Node(id=node_id, cluster=cluster),
        admin=Admin(address=socket_address(admin_address, admin_port)),
        dynamic_resources=BootstrapDynamicResources(
            ads_config=ApiConfigSource(
                api_type=ApiConfigSourceApiType.DELTA_GRPC if delta else ApiConfigSourceApiType.GRPC,
                transport_api_version=ApiVersion.V3,
                set_node_on_first_message_only=True,
                grpc_services=[GrpcService(envoy_grpc=GrpcServiceEnvoyGrpc(cluster_name=CONTROLLER_CLUSTER))],
            ),
            cds_config=ads(),
            lds_config=ads(),
        ),
        static_resources=BootstrapStaticResources(
            listeners=list(probes.listeners) if probes else [],
            clusters=[_controller(xds_host, xds_port, tls), *(probes.clusters if probes else [])],
        ),
    )


def _controller(host: str, port: int, tls: XdsTls | None) -> Cluster:
    """The controller over HTTP/2 (gRPC), at an IP address or a name Envoy resolves."""
    try:
        ipaddress.ip_address(host)
        kind = ClusterDiscoveryType.STATIC
    except ValueError:
        kind = ClusterDiscoveryType.STRICT_DNS
    cluster = static_cluster(CONTROLLER_CLUSTER, host, port, kind)
    cluster.typed_extension_protocol_options = http2_only()
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
        cluster.transport_socket = tls_socket(context)
    return cluster


def as_dict(config: Bootstrap) -> dict[str, Any]:
    """The bootstrap as proto3 JSON (Envoy reads it as JSON or YAML)."""
    return config.to_dict()
