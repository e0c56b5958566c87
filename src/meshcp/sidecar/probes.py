"""The sidecar's probe listeners: where kubelet's rewritten probes land (pure, no I/O).

The injector points HTTP(S) probes at `<pod>:1590x/meshcp/<kind>/<container>` and a TCP probe
(when it is the only probe of its kind) at `<pod>:1590x`, and records the originals in the
`meshcp.dev/original-probes` annotation (a JSON list; see `injector.pod_patch`). From that same
list this module builds static Envoy listeners and clusters, one listener per probe kind that
has probes:

- HTTP(S) kinds: an HTTP connection manager whose routes match `/meshcp/<kind>/<container>`
  exactly and forward to cluster `probe-<kind>-<container>` (127.0.0.1:<original port>) with
  the path rewritten to the original one (query string included). The Host header is kept as
  kubelet sent it. HTTPS probes use upstream TLS without verification, as kubelet does.
- A TCP kind: a tcp_proxy to its cluster.

Kubelet reaches these listeners without mTLS (iptables lets 15901-15903 through), and Envoy
(UID 1500) reaches the application on loopback without being redirected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshcp._proto.envoy.config.bootstrap.v3 import BootstrapStaticResources
from meshcp._proto.envoy.config.cluster.v3 import Cluster
from meshcp._proto.envoy.config.listener.v3 import Listener
from meshcp._proto.envoy.config.route.v3 import Route, RouteAction, RouteMatch
from meshcp._proto.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import CommonTlsContext, UpstreamTlsContext
from meshcp.sidecar.envoy_parts import (
    HCM,
    LOOPBACK,
    TCP_PROXY,
    network_filter,
    plaintext_listener,
    static_cluster,
    static_http_manager,
    tls_socket,
)
from meshcp.sidecar.ports import PROBE_PORTS

SCHEMES = ("HTTP", "HTTPS", "TCP")


@dataclass(frozen=True, slots=True)
class OriginalProbe:
    """One entry of the original-probes annotation."""

    container: str
    kind: str  # liveness, readiness or startup
    scheme: str  # HTTP, HTTPS or TCP
    port: int
    #: HTTP(S) only: the application's path (may carry a query string)...
    path: str = ""
    #: ...and the path kubelet now requests from the sidecar.
    sidecar_path: str = ""

    @property
    def cluster_name(self) -> str:
        return f"probe-{self.kind}-{self.container}"

    @classmethod
    def parse(cls, entry: Mapping[str, Any]) -> OriginalProbe:
        """An annotation entry; raises ValueError saying what is wrong."""
        if not isinstance(entry, Mapping):
            raise ValueError(f"a probe entry must be an object, got {type(entry).__name__}")
        container, kind, scheme, port = (entry.get(k) for k in ("container", "probe", "scheme", "port"))
        if not isinstance(container, str) or not container:
            raise ValueError(f"probe entry {entry!r:.80}: container must be a non-empty string")
        if kind not in PROBE_PORTS:
            raise ValueError(f"probe entry {entry!r:.80}: probe must be one of {', '.join(PROBE_PORTS)}")
        if scheme not in SCHEMES:
            raise ValueError(f"probe entry {entry!r:.80}: scheme must be one of {', '.join(SCHEMES)}")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ValueError(f"probe entry {entry!r:.80}: port must be an integer in 1-65535")
        assert isinstance(kind, str) and isinstance(scheme, str)
        if scheme == "TCP":
            return cls(container, kind, scheme, port)
        path, sidecar_path = entry.get("path", "/"), entry.get("sidecarPath", f"/meshcp/{kind}/{container}")
        for name, value in (("path", path), ("sidecarPath", sidecar_path)):
            if not isinstance(value, str) or not value.startswith("/"):
                raise ValueError(f"probe entry {entry!r:.80}: {name} must be a string starting with /")
        assert isinstance(path, str) and isinstance(sidecar_path, str)
        return cls(container, kind, scheme, port, path, sidecar_path)


@dataclass(frozen=True, slots=True)
class ProbeResources:
    """The static listeners and clusters serving a pod's probes (empty when it has none);
    `sidecar.bootstrap.bootstrap(..., probes=...)` adds them to static_resources."""

    listeners: list[Listener]
    clusters: list[Cluster]

    def __bool__(self) -> bool:
        return bool(self.listeners or self.clusters)

    def as_dicts(self) -> tuple[list[Any], list[Any]]:
        """The listeners and clusters as `bootstrap.as_dict` renders them in static_resources
        (for renderers that convert the rest of the bootstrap only once)."""
        static = BootstrapStaticResources(listeners=self.listeners, clusters=self.clusters).to_dict()
        return list(static.get("listeners", [])), list(static.get("clusters", []))


def parse_probes(entries: Sequence[Mapping[str, Any]]) -> list[OriginalProbe]:
    """The annotation's entries, checked: one probe per (kind, container), and a TCP probe
    only as the only probe of its kind (it has no path to tell several apart)."""
    probes = [OriginalProbe.parse(entry) for entry in entries]
    seen: set[tuple[str, str]] = set()
    for probe in probes:
        if (probe.kind, probe.container) in seen:
            raise ValueError(f"two {probe.kind} probes for container {probe.container}")
        seen.add((probe.kind, probe.container))
        if probe.scheme == "TCP" and sum(p.kind == probe.kind for p in probes) > 1:
            raise ValueError(
                f"the {probe.kind} TCP probe of {probe.container} is not the only {probe.kind} probe"
            )
    return probes


def probe_resources(entries: Sequence[Mapping[str, Any]]) -> ProbeResources:
    """Listeners on 0.0.0.0:15901-15903 (only for kinds with probes) and their clusters,
    from the original-probes annotation's entries."""
    probes = parse_probes(entries)
    listeners: list[Listener] = []
    for kind in PROBE_PORTS:  # liveness, readiness, startup: a stable order
        of_kind = [p for p in probes if p.kind == kind]
        if of_kind:
            listeners.append(_listener(kind, of_kind))
    clusters = [_cluster(p) for kind in PROBE_PORTS for p in probes if p.kind == kind]
    return ProbeResources(listeners, clusters)


def listener_name(kind: str) -> str:
    return f"probe-{kind}"


def _listener(kind: str, probes: Sequence[OriginalProbe]) -> Listener:
    name = listener_name(kind)
    if probes[0].scheme == "TCP":  # then it is the only one (parse_probes)
        network = network_filter(TCP_PROXY, TcpProxy(stat_prefix=name, cluster=probes[0].cluster_name))
    else:
        network = network_filter(HCM, static_http_manager(name, _routes(probes)))
    return plaintext_listener(name, PROBE_PORTS[kind], network)


def _routes(probes: Sequence[OriginalProbe]) -> list[Route]:
    return [
        Route(
            name=probe.cluster_name,
            match=RouteMatch(path=probe.sidecar_path),
            # With a `path` match the whole path is replaced; no host rewrite: Host is kept.
            route=RouteAction(cluster=probe.cluster_name, prefix_rewrite=probe.path),
        )
        for probe in probes
    ]


def _cluster(probe: OriginalProbe) -> Cluster:
    """The application's port, on loopback: Envoy's own traffic there is not redirected."""
    cluster = static_cluster(probe.cluster_name, LOOPBACK, probe.port)
    if probe.scheme == "HTTPS":
        # No validation context: kubelet does not verify the application's certificate either.
        cluster.transport_socket = tls_socket(UpstreamTlsContext(common_tls_context=CommonTlsContext()))
    return cluster
