"""How `meshcp inject` runs: `InjectorSettings`, filled from the command line (plain data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcp.certs.setup import CaSettings
from meshcp.injector.template import DEFAULT_INIT_IMAGE, SidecarTemplate
from meshcp.sidecar.ports import WEBHOOK_PORT, XDS_PORT

#: Seconds to answer in: the API server's webhook timeout is 10 s by default.
DEFAULT_DEADLINE = 8.0


@dataclass
class InjectorSettings:
    """How `meshcp inject` runs."""

    #: PEM certificate chain and key the webhook serves (re-read when they change).
    tls_cert: Path
    tls_key: Path
    host: str = "0.0.0.0"
    port: int = WEBHOOK_PORT
    #: None: in-cluster credentials in a pod, else the default kubeconfig.
    kubeconfig: Path | None = None
    #: Where sidecars reach the controller's ADS server.
    xds_host: str = "meshcp-controller.meshcp-system.svc"
    xds_port: int = XDS_PORT
    #: The name on the controller's certificate (SNI); default `xds_host`.
    xds_server_name: str = ""
    #: PEM bundle sidecars trust for the controller; default the mesh CA's (as `serve` uses).
    xds_trust_bundle: Path | None = None
    #: Incremental (delta) ADS in the sidecars' bootstrap.
    delta_xds: bool = False
    init_image: str = DEFAULT_INIT_IMAGE
    #: Kubernetes ResourceRequirements of the Envoy container.
    sidecar_resources: Mapping[str, Any] | None = None
    #: The cluster-scoped MeshConfig object to read (its defaults when absent).
    mesh_config_name: str = "meshcp"
    #: The mesh's name (`--mesh-name`), as the controller's: it wins over the MeshConfig's
    #: `meshName` (None: the MeshConfig's, default `meshcp`).
    mesh_name: str | None = None
    #: Seconds to answer one admission request in.
    deadline: float = DEFAULT_DEADLINE
    #: Seconds a connection may go without a complete request (idle, or trickling its
    #: headers: slow-loris) before it is closed; aiohttp's own default is an hour.
    idle_timeout: float = 15.0
    #: The CA that signs xDS client certificates: the controller's (same provider; for the
    #: internal CA, the same state directory).
    ca: CaSettings = field(default_factory=CaSettings)
    #: Seconds between checks for a root rotation committed by the controller (internal CA).
    ca_reload_interval: float = 10.0
    #: The MutatingWebhookConfiguration whose caBundle the injector keeps ("" : someone
    #: else does, e.g. cert-manager's cainjector).
    webhook_config: str = ""
    #: The PEM CA written there (default: `ca.crt` beside `tls_cert`, else its chain's last).
    webhook_ca: Path | None = None
    #: Seconds between checks of that caBundle (and at once when the certificate reloads).
    webhook_check_interval: float = 10.0

    def template(self) -> SidecarTemplate:
        return SidecarTemplate(
            xds_host=self.xds_host,
            xds_port=self.xds_port,
            xds_server_name=self.xds_server_name,
            init_image=self.init_image,
            resources=self.sidecar_resources,
            delta_xds=self.delta_xds,
        )
