"""The xDS bootstrap of a proxyless gRPC application (gRFC A27, A29, A36, A65).

gRPC reads it from the file `GRPC_XDS_BOOTSTRAP` names: where the controller is and how
to reach it (mTLS with the pod's xDS client certificate), the node (id, cluster, and the
metadata that makes the controller serve it proxyless resources), the certificate
provider the TLS contexts of those resources name, and the template of its server
listeners' names. A pure function of its inputs; `meshcp bootstrap --proxyless` writes
it with the certificate files it points at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Node metadata key (and pod annotation) saying a node is a proxyless gRPC application.
PROXYLESS_KEY = "meshcp.dev/proxyless"
PROXYLESS_GRPC = "grpc"
#: The certificate provider instance every proxyless TLS context names
#: (`compile.proxyless`): a `file_watcher` over the pod's certificate, key and bundle.
CERTIFICATE_PROVIDER = "meshcp"
#: What gRPC substitutes a server's listening `host:port` into.
SERVER_LISTENER_TEMPLATE = "grpc/server?xds.resource.listening_address=%s"
#: How often gRPC's file watcher looks at the certificate files again (rotation).
REFRESH_INTERVAL = "60s"


@dataclass(frozen=True)
class ProxylessFiles:
    """Absolute paths of the files the bootstrap points at."""

    #: The workload's certificate chain and key (its mesh identity) and the trust bundle.
    certificate: str
    private_key: str
    ca_bundle: str
    #: The xDS client certificate, key and the bundle that signs the controller's
    #: certificate; None: plaintext xDS (`--insecure-xds`).
    xds_certificate: str | None = None
    xds_private_key: str | None = None
    xds_ca: str | None = None


def grpc_bootstrap(
    node_id: str,
    cluster: str,
    server_uri: str,
    files: ProxylessFiles,
    *,
    namespace: str,
    pod: str,
    service_account: str,
    server_listener_template: str = SERVER_LISTENER_TEMPLATE,
    refresh_interval: str = REFRESH_INTERVAL,
) -> dict[str, Any]:
    """The bootstrap JSON document (as a dict)."""
    if files.xds_certificate and files.xds_private_key and files.xds_ca:
        creds: dict[str, Any] = {
            "type": "tls",
            "config": {
                "ca_certificate_file": files.xds_ca,
                "certificate_file": files.xds_certificate,
                "private_key_file": files.xds_private_key,
                "refresh_interval": refresh_interval,
            },
        }
    else:
        creds = {"type": "insecure"}
    return {
        "xds_servers": [{"server_uri": server_uri, "channel_creds": [creds], "server_features": ["xds_v3"]}],
        "node": {
            "id": node_id,
            "cluster": cluster,
            "metadata": {
                PROXYLESS_KEY: PROXYLESS_GRPC,
                "namespace": namespace,
                "pod": pod,
                "service_account": service_account,
            },
            "locality": {},
        },
        "certificate_providers": {
            CERTIFICATE_PROVIDER: {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": files.certificate,
                    "private_key_file": files.private_key,
                    "ca_certificate_file": files.ca_bundle,
                    "refresh_interval": refresh_interval,
                },
            }
        },
        "server_listener_resource_name_template": server_listener_template,
    }
