"""MeshConfig (config.meshcp.dev/v1alpha1): the mesh-wide settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshcp.model.meta import Meta, ObjectRef

MESH_LABEL = "meshcp.dev/monitored-by"
PERMISSIVE_ANNOTATION = "meshcp.dev/permissive"

#: Who signs workload certificates (`certProvider`): the CA layer's providers, one of which
#: the controller is started with (`--ca-provider`).
CERT_PROVIDERS = ("internal", "cfssl", "vault", "cert-manager")
#: Envoy's `--log-level` values (`sidecarLogLevel`).
SIDECAR_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")


@dataclass(frozen=True, slots=True)
class MeshConfig:
    """Every field has the default a mesh without a MeshConfig object runs with."""

    meta: Meta = field(default_factory=lambda: Meta(name="meshcp"))
    mesh_name: str = "meshcp"
    trust_domain: str = "cluster.local"
    #: Everything in the mesh may talk (still over mTLS); SMI objects are then ignored.
    permissive: bool = False
    #: Traffic to destinations outside the mesh passes through; off: refused.
    egress_passthrough: bool = False
    #: Give each proxy only the upstream services its identity may reach (a TrafficTarget
    #: of one of their identities names it, or their namespace is permissive); requests to
    #: the others get 403 from the client's own sidecar (TCP: the connection is closed).
    #: On by default (OSM's behaviour, and what keeps a large mesh's configuration per proxy
    #: small); off, every proxy gets every service and the destination answers 403.
    prune_unreachable_upstreams: bool = True
    #: `observability.enablePerRouteStats`: outbound routes count their requests per
    #: HTTPRouteGroup match (Envoy's `Route.stat_prefix`), so each proxy exports golden
    #: metrics per route as well as per upstream service. Off by default: it costs series.
    #: The sidecar's keep-list always admits these stats, so it takes effect without a
    #: proxy restart.
    per_route_stats: bool = False
    cert_validity_seconds: int = 24 * 3600
    #: The CA the mesh expects (OSM chose it when installing, `--certificate-manager`):
    #: the controller signs with the one it was started with (`--ca-provider`), and reports
    #: a MeshConfig that sets another (`runtime.mesh_checks`).
    cert_provider: str = "internal"
    #: Debounce: a change is compiled after `debounce_window` of quiet, at most `debounce_max`
    #: after the first change of a burst.
    debounce_window: float = 0.1
    debounce_max: float = 1.0
    outbound_ip_exclusions: tuple[str, ...] = ()
    #: When not empty, the only ranges outbound traffic is redirected to (exclusions win).
    outbound_ip_inclusions: tuple[str, ...] = ()
    outbound_port_exclusions: tuple[int, ...] = ()
    inbound_port_exclusions: tuple[int, ...] = ()
    sidecar_image: str = "envoyproxy/envoy:v1.40.0"
    sidecar_log_level: str = "info"
    #: Kubernetes resource requests and limits of the Envoy sidecar, as (name, quantity)
    #: pairs (e.g. ("cpu", "100m")); empty: the injector's own defaults.
    sidecar_requests: tuple[tuple[str, str], ...] = ()
    sidecar_limits: tuple[tuple[str, str], ...] = ()
    #: The attributes the manifest set (its spec's fields), as opposed to defaults: only
    #: these may override the controller's own settings or disagree with them.
    explicit: frozenset[str] = frozenset()

    def is_set(self, attribute: str) -> bool:
        """Whether the manifest set `attribute` (a default is not a choice to honour)."""
        return attribute in self.explicit

    def sidecar_resources(self) -> dict[str, dict[str, str]]:
        """The container's `resources` (empty when MeshConfig sets none)."""
        out: dict[str, dict[str, str]] = {}
        if self.sidecar_requests:
            out["requests"] = dict(self.sidecar_requests)
        if self.sidecar_limits:
            out["limits"] = dict(self.sidecar_limits)
        return out

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("MeshConfig", self.meta.namespace, self.meta.name)
