"""What injection adds to a pod: the names of its containers, volume, files and Secret, and
`SidecarTemplate`, how the sidecar is built beyond what MeshConfig says.

The names are shared: the decision recognises an injected pod by its containers, the patch
mounts the Secret the bootstrap module fills, and `meshcp lab` writes those same files
itself in place of the Secret volume.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshcp.identity import ProxyIdentity

SIDECAR_CONTAINER = "envoy"
INIT_CONTAINER = "meshcp-init"
BOOTSTRAP_VOLUME = "meshcp-bootstrap"
BOOTSTRAP_DIR = "/etc/meshcp"
BOOTSTRAP_FILE = "bootstrap.json"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
CA_FILE = "ca.crt"
SECRET_PREFIX = "meshcp-bootstrap-"
#: A proxyless gRPC pod's Secret volume, mounted read-only into each of its containers,
#: and the environment variable gRPC finds its xDS bootstrap by.
PROXYLESS_VOLUME = "meshcp-grpc"
PROXYLESS_DIR = "/etc/meshcp/grpc"
GRPC_BOOTSTRAP_ENV = "GRPC_XDS_BOOTSTRAP"
#: OSM's init image: Alpine with `sh` and iptables, all the init container needs.
DEFAULT_INIT_IMAGE = "openservicemesh/init:v1.2.4"


def secret_name(proxy: ProxyIdentity) -> str:
    """The bootstrap Secret of a sidecar, named after its proxy UUID."""
    return SECRET_PREFIX + proxy.proxy_uuid


@dataclass(frozen=True, slots=True)
class SidecarTemplate:
    """How sidecars are built, beyond what MeshConfig says (image, log level)."""

    #: Where the controller's ADS server is reached from pods.
    xds_host: str
    xds_port: int
    #: The name on the controller's certificate (SNI); defaults to `xds_host`.
    xds_server_name: str = ""
    #: An image with `sh` and `iptables-restore` for the init container.
    init_image: str = DEFAULT_INIT_IMAGE
    #: Kubernetes ResourceRequirements of the Envoy container (None: none set).
    resources: Mapping[str, Any] | None = None
    image_pull_policy: str = "IfNotPresent"
    #: Incremental (delta) ADS instead of state of the world.
    delta_xds: bool = False
    #: Where the bootstrap volume is mounted in the sidecar. `meshcp lab` has no mount
    #: namespaces per container, so it mounts each pod's volume at a directory of its own.
    bootstrap_dir: str = BOOTSTRAP_DIR

    @property
    def server_name(self) -> str:
        return self.xds_server_name or self.xds_host
