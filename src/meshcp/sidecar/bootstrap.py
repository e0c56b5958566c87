"""The Envoy bootstrap of a sidecar: who it is, where the controller is, how to trust it,
and which of its stats it keeps, labelled how.

Stats (`stats_config`), served as Prometheus text on the sidecar's Prometheus port:

- **Identity labels** stamped at the proxy on every series (fixed-value tags):
  `source_namespace`, `source_pod`, `source_service_account`. The names follow OSM's
  `source_namespace`/`source_pod` (dashboards written for OSM know them) and Prometheus'
  snake_case; the service account is the mesh identity, so it is a label of its own.
- **Destination labels** on the stats of upstream clusters (`<ns>/<svc>|<port>`, see
  `compile.naming.cluster`): `destination_namespace`, `destination_service`,
  `destination_port`, extracted by regex from the stat name
  (`cluster.<ns>/<svc>|<port>.<stat>`; Envoy keeps '/' and '|' in stat names and in tag
  values). Each regex's capture group is both the value and the part removed from the
  name; it lies inside the cluster name, which Envoy's default `envoy.cluster_name` tag
  removes anyway, so the series name stays `envoy_cluster_<stat>`. The local cluster
  (`...|local`), `passthrough-outbound` and the metrics cluster get no destination. The
  inbound HTTP managers' stats (`http.inbound.<port>.<stat>`, `compile.lds`) get the
  called local port as `destination_port`, so that the port leaves the series name. The
  local cluster's stats get `local_service`: the service this proxy serves, so that the
  server's identity of an edge is measured (its `source_service_account`), not guessed.
- **A keep-list** (`stats_matcher.inclusion_list`) bounds the export to what golden
  metrics need: per upstream cluster `upstream_rq_<N>xx` (Envoy's default
  `envoy.response_code_class` tag makes it `envoy_cluster_upstream_rq_xx`; success is
  "not 5xx" of `upstream_rq_total`), `upstream_rq_time`, `upstream_cx_total`,
  `upstream_cx_active`; the inbound HTTP connection managers' `downstream_rq_<N>xx`,
  `downstream_rq_total` and `downstream_rq_time`; the local clusters' `upstream_cx_total`
  (one series per served port: who serves what); every `ssl.handshake` (an edge is
  SECURED when its cluster's connections handshook TLS; the lab's demo reads the
  inbound listener's from admin `/stats`, which the matcher filters as well);
  and a few liveness basics. Everything else is never created, so it costs no memory
  either.
- **Per-route stats** (MeshConfig `observability.enablePerRouteStats`): outbound routes
  then carry a stat prefix `<group>/<match>` (`compile.rds.route_stat_prefix`), and Envoy
  counts `vhost.<ns>/<svc>|<port>.route.<group>/<match>.upstream_rq_*`. Their series,
  `envoy_vhost_route_upstream_rq_xx|_total|_time`, get the destination labels above plus
  `route_group` and `route_match` (`*` for the catch-all route). The keep-list admits
  them always: they exist only while routes carry a prefix, so the setting changes over
  RDS alone, without a new bootstrap or a restart.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, TypedDict

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
from meshcp._proto.envoy.config.metrics.v3 import StatsConfig, StatsMatcher, TagSpecifier
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    CommonTlsContext,
    TlsCertificate,
    UpstreamTlsContext,
)
from meshcp._proto.envoy.type.matcher.v3 import ListStringMatcher, RegexMatcher, StringMatcher
from meshcp.sidecar.envoy_parts import LOOPBACK, ads, http2_only, socket_address, static_cluster, tls_socket
from meshcp.sidecar.ports import ADMIN_PORT
from meshcp.sidecar.probes import ProbeResources

CONTROLLER_CLUSTER = "meshcp-controller"

SOURCE_NAMESPACE = "source_namespace"
SOURCE_POD = "source_pod"
SOURCE_SERVICE_ACCOUNT = "source_service_account"
DESTINATION_NAMESPACE = "destination_namespace"
DESTINATION_SERVICE = "destination_service"
DESTINATION_PORT = "destination_port"
LOCAL_SERVICE = "local_service"
ROUTE_GROUP = "route_group"
ROUTE_MATCH = "route_match"

#: One segment of an upstream cluster name: a Kubernetes name, never '.', '/' or '|'.
_SEGMENT = r"[^./|]+"
#: An outbound virtual host (named as its upstream cluster) and a route's stat prefix
#: (`<group>/<match>`, `compile.rds.route_stat_prefix`: no '.').
_ROUTE = rf"^vhost\.{_SEGMENT}/{_SEGMENT}\|\d+\.route\."
#: Destination tags of `cluster.<ns>/<svc>|<port>.<stat>` (std::regex, partial match; the
#: one capture group is the value and the part removed from the name).
_DESTINATION_TAGS = (
    (DESTINATION_NAMESPACE, rf"^cluster\.({_SEGMENT})/{_SEGMENT}\|\d+\."),
    (DESTINATION_SERVICE, rf"^cluster\.{_SEGMENT}/({_SEGMENT})\|\d+\."),
    (DESTINATION_PORT, rf"^cluster\.{_SEGMENT}/{_SEGMENT}\|(\d+)\."),
    # The inbound HTTP managers' `http.inbound.<port>.<stat>` (`compile.lds`): the port of
    # the local service called. The first group ("<port>.") is removed, the second is the value.
    (DESTINATION_PORT, r"^http\.inbound\.((\d+)\.)"),
    # The local cluster `<ns>/<svc>|<port>|local` of a served service: which service this
    # proxy's identity serves, the server side of an edge (`kpi.queries.servers`).
    (LOCAL_SERVICE, rf"^cluster\.{_SEGMENT}/({_SEGMENT})\|\d+\|local\."),
    # Per-route stats `vhost.<ns>/<svc>|<port>.route.<group>/<match>.<stat>` (MeshConfig
    # `observability.enablePerRouteStats`): the same destination labels as the cluster's,
    # and the HTTPRouteGroup and match. Envoy's default `envoy.virtual_host` and
    # `envoy.route` tags remove the host and the prefix from the name.
    (DESTINATION_NAMESPACE, rf"^vhost\.({_SEGMENT})/{_SEGMENT}\|\d+\.route\."),
    (DESTINATION_SERVICE, rf"^vhost\.{_SEGMENT}/({_SEGMENT})\|\d+\.route\."),
    (DESTINATION_PORT, rf"^vhost\.{_SEGMENT}/{_SEGMENT}\|(\d+)\.route\."),
    (ROUTE_GROUP, rf"{_ROUTE}([^./]+)/[^.]+\."),
    (ROUTE_MATCH, rf"{_ROUTE}[^./]+/([^.]+)\."),
)
#: The stats kept (RE2, matched against the whole stat name before tag extraction).
_KEEP_REGEXES = (
    rf"cluster\.{_SEGMENT}/{_SEGMENT}\|\d+\.(upstream_rq_([1-5]xx|total|time)|upstream_cx_(total|active))",
    r"http\.inbound\.\d+\.downstream_rq_([1-5]xx|total|time)",
    rf"cluster\.{_SEGMENT}/{_SEGMENT}\|\d+\|local\.upstream_cx_total",
    # Per-route stats exist only when routes carry a stat prefix (MeshConfig): always kept,
    # so turning them on needs no new bootstrap.
    rf"{_ROUTE.removeprefix('^')}[^.]+\.upstream_rq_([1-5]xx|total|time)",
)
_KEEP_SUFFIXES = (".ssl.handshake",)
_KEEP_EXACT = ("server.live", "server.uptime", "control_plane.connected_state")


class Workload(TypedDict):
    """The keyword arguments of `bootstrap` and `stats_config` naming the sidecar's pod."""

    namespace: str
    pod: str
    service_account: str


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
    namespace: str,
    pod: str,
    service_account: str,
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
    `namespace`, `pod` and `service_account` label every stat (`stats_config`).
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
        stats_config=stats_config(namespace=namespace, pod=pod, service_account=service_account),
    )


def identity_tags(*, namespace: str, pod: str, service_account: str) -> list[TagSpecifier]:
    """The proxy's own identity as fixed-value tags: the first tags of `stats_config`."""
    return [
        TagSpecifier(tag_name=SOURCE_NAMESPACE, fixed_value=namespace),
        TagSpecifier(tag_name=SOURCE_POD, fixed_value=pod),
        TagSpecifier(tag_name=SOURCE_SERVICE_ACCOUNT, fixed_value=service_account),
    ]


def stats_config(*, namespace: str, pod: str, service_account: str, keep_list: bool = True) -> StatsConfig:
    """Identity tags, destination tags of upstream clusters, and (unless `keep_list` is
    False: the baseline of `benchmarks/sidecar_series.py`) the keep-list."""
    tags = identity_tags(namespace=namespace, pod=pod, service_account=service_account)
    tags += [TagSpecifier(tag_name=name, regex=regex) for name, regex in _DESTINATION_TAGS]
    return StatsConfig(stats_tags=tags, stats_matcher=_keep_list() if keep_list else None)


def _keep_list() -> StatsMatcher:
    patterns = [StringMatcher(safe_regex=RegexMatcher(regex=regex)) for regex in _KEEP_REGEXES]
    patterns += [StringMatcher(suffix=suffix) for suffix in _KEEP_SUFFIXES]
    patterns += [StringMatcher(exact=name) for name in _KEEP_EXACT]
    return StatsMatcher(inclusion_list=ListStringMatcher(patterns=patterns))


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
