"""Bootstraps for a real Envoy in tests: its node, its admin address and where it gets its
configuration (clusters and listeners over ADS from the controller, plaintext or mutual TLS).

    async with EnvoyProcess(ads_bootstrap("node-1", xds_port, delta=True)) as envoy: ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_PROTOCOL_OPTIONS_URL = "type.googleapis.com/" + HTTP_PROTOCOL_OPTIONS


def ads_bootstrap(
    node_id: str,
    xds_port: int,
    delta: bool,
    admin_port: int = 0,
    *,
    node_cluster: str = "meshcp-test",
    xds_host: str = "127.0.0.1",
) -> dict[str, Any]:
    """A bootstrap taking clusters and listeners (and through them everything else) over ADS.

    The xDS cluster speaks plaintext HTTP/2 (what grpclib serves); `delta` selects
    DeltaAggregatedResources instead of StreamAggregatedResources.
    """
    ads = {"ads": {}, "resource_api_version": "V3"}
    return {
        "node": {"id": node_id, "cluster": node_cluster},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
            },
            "cds_config": dict(ads),
            "lds_config": dict(ads),
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xds",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                    "typed_extension_protocol_options": {
                        HTTP_PROTOCOL_OPTIONS: {
                            "@type": HTTP_PROTOCOL_OPTIONS_URL,
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                }
            ]
        },
    }


UPSTREAM_TLS_CONTEXT_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def mtls_ads_bootstrap(
    node_id: str,
    xds_port: int,
    delta: bool,
    *,
    cert: Path,
    key: Path,
    ca: Path,
    server_name: str = "localhost",
    admin_port: int = 0,
    node_cluster: str = "meshcp-test",
    xds_host: str = "127.0.0.1",
) -> dict[str, Any]:
    """`ads_bootstrap` whose xDS cluster speaks mutual TLS: Envoy presents `cert`/`key` (its
    xDS client certificate, named like `node_id`), checks the server against the bundle in
    `ca` and its name `server_name` (sent as SNI and matched against the DNS SANs)."""
    bootstrap = ads_bootstrap(
        node_id, xds_port, delta, admin_port, node_cluster=node_cluster, xds_host=xds_host
    )
    xds = bootstrap["static_resources"]["clusters"][0]
    xds["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": UPSTREAM_TLS_CONTEXT_URL,
            "sni": server_name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificates": [
                    {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(ca)},
                    "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": server_name}}],
                },
            },
        },
    }
    return bootstrap
