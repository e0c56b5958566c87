"""How one controller runs: its listeners, its CA, its source and its debounce."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

from meshcp.certs.setup import CaSettings
from meshcp.http.api_tls import API_PORT
from meshcp.http.app import IDLE_TIMEOUT
from meshcp.sidecar.ports import CONTROLLER_HTTP_PORT, XDS_PORT
from meshcp.sources.bootstrap_secrets import CollectorSettings
from meshcp.sources.kubernetes_watch import WatchSettings
from meshcp.sources.proxyless_renewal import RenewalSettings
from meshcp.xds.send_budget import DEFAULT_SEND_BUDGET


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """`host:port` (IPv6 as `[::1]:15128`); raises ValueError with a readable message."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return cls(host.strip("[]") or "0.0.0.0", int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class Settings:
    """How a controller runs. The defaults suit embedding and tests (plaintext xDS, CA in
    memory); `meshcp serve` asks for mutual TLS and a state directory."""

    #: gRPC (ADS) listener.
    xds_address: Address = field(default_factory=lambda: Address("127.0.0.1", XDS_PORT))
    #: HTTP listener for /healthz, /readyz, /metrics and /debug.
    http_address: Address = field(default_factory=lambda: Address("127.0.0.1", CONTROLLER_HTTP_PORT))
    #: HTTP listener for /debug (every proxy's name and configuration): loopback only; an
    #: ephemeral port here (several controllers in one test run), `meshcp serve` defaults
    #: to CONTROLLER_DEBUG_PORT.
    debug_address: Address = field(default_factory=lambda: Address("127.0.0.1", 0))
    #: Plaintext xDS with identities taken from node ids: local work only.
    insecure_xds: bool = True
    #: TLS of the xDS listener from files; None with `insecure_xds` off: issued by the mesh CA.
    xds_tls: ssl.SSLContext | None = None
    #: DNS names and IP addresses proxies dial the controller by (its certificate's SANs).
    xds_names: tuple[str, ...] = ("localhost", "127.0.0.1")
    #: New streams served their initial configuration at once (reconnect storms).
    admission: int = 256
    #: Response bytes being written at once over all streams (meshcp.xds.send_budget).
    send_budget: int = DEFAULT_SEND_BUDGET
    #: Seconds a new xDS connection has to open its first stream before it is closed (a
    #: client that connects and sends nothing, or half a frame, would hold a descriptor).
    xds_handshake_timeout: float = 10.0
    #: Seconds after which an xDS connection is told to go away (± 10 %), so that proxies
    #: reconnect and spread over the replicas, new ones included (0: never; `meshcp serve`
    #: defaults to 30 minutes).
    xds_max_connection_age: float = 0.0
    ca: CaSettings = field(default_factory=CaSettings)
    #: Seconds between trust-bundle checks (root rotation progress, `meshcp ca rotate`).
    trust_interval: float = 1.0
    #: Seconds each root rotation phase lasts at least while proxyless gRPC nodes are
    #: connected (their certificate files must be rewritten and re-read in each phase).
    proxyless_dwell: float = 300.0
    #: Directory of manifests to serve (None: snapshots are set by the embedding code).
    source: Path | None = None
    #: Watch the Kubernetes API instead (in-cluster, else the kubeconfig below).
    kubernetes: bool = False
    kubeconfig: str | None = None
    kube_context: str | None = None
    #: The mesh's name (`--mesh-name`): namespaces labelled `meshcp.dev/monitored-by` (or
    #: OSM's `openservicemesh.io/monitored-by`) with it are the mesh's, whatever a
    #: MeshConfig's `meshName` says. None: the MeshConfig's (default `meshcp`); the
    #: Kubernetes source then selects namespaces by `meshcp`.
    mesh_name: str | None = None
    #: With `kubernetes`: collecting the bootstrap Secrets of pods that are gone.
    secret_collection: CollectorSettings = field(default_factory=CollectorSettings)
    #: With `kubernetes`: renewing the certificates in proxyless gRPC pods' Secrets.
    proxyless_renewal: RenewalSettings = field(default_factory=RenewalSettings)
    #: Paging, timeouts and back-off of the Kubernetes watches.
    watch: WatchSettings = field(default_factory=WatchSettings)
    #: With `kubernetes`: the Lease replicas elect their leader with, "NAMESPACE/NAME" (""
    #: : no election, this controller always leads, as a single replica must).
    leader_lease: str = ""
    #: Seconds a Lease nobody renews stays held (renewed every 2 s, given up after 2/3).
    lease_duration: float = 15.0
    #: The Prometheus that scrapes the sidecars: the TrafficMetrics API and `/dashboard`
    #: read from it (None: both answer 503, saying so; xDS never depends on it).
    prometheus_url: str | None = None
    #: HTTPS listener of the same HTTP endpoint (the Kubernetes API aggregator calls the
    #: TrafficMetrics API over TLS); it listens only with `api_tls_cert` and `api_tls_key`.
    api_address: Address = field(default_factory=lambda: Address("127.0.0.1", API_PORT))
    #: PEM files of the HTTPS listener's certificate chain and key, re-read when they change
    #: (None: no HTTPS listener).
    api_tls_cert: Path | None = None
    api_tls_key: Path | None = None
    #: Seconds an HTTP(S) connection may go without a complete request (slow-loris).
    http_idle_timeout: float = IDLE_TIMEOUT
    #: Debounce of source changes: quiet window, and the longest a change may wait.
    debounce_window: float = 0.1
    debounce_max: float = 1.0
