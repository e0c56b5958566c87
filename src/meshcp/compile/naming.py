"""Names of Envoy resources, as OSM spelled them (users' dashboards know them), except
the secrets: OSM named a proxy's certificate and trust per identity and per service
(`service-cert:<ns>/<sa>`, `root-cert-for-mtls-outbound:<ns>/<svc>`), which made every
cluster differ per client; meshcp's names do not vary by client."""

from __future__ import annotations

#: The proxy's own certificate chain and key. One name for every proxy: each class's
#: snapshot holds its own identity's certificate under it, and a stream is only ever
#: served the snapshot of a class of its verified identity (`runtime.classify`), so the
#: name resolves to the stream's own key and to no other. Resources that name it are
#: the same bytes for every client (see docs/certificates.md).
SERVICE_CERT = "service-cert"
#: The mesh's trust bundle, for both ends of mTLS: the same secret for every proxy. Which
#: server identities a client accepts is matched in each upstream cluster's own
#: validation context, not in this secret; who may call a server is decided by RBAC.
ROOT_CERT = "root-cert"
#: Every secret name the mesh serves: any other name a proxy asks for is refused.
SECRETS = frozenset({SERVICE_CERT, ROOT_CERT})


OUTBOUND_LISTENER = "outbound-listener"
INBOUND_LISTENER = "inbound-listener"
PROMETHEUS_LISTENER = "inbound-prometheus-listener"
PASSTHROUGH_CLUSTER = "passthrough-outbound"
METRICS_CLUSTER = "envoy-metrics-cluster"
CLUSTER_DOMAIN = "cluster.local"


def cluster(namespace: str, service: str, port: int) -> str:
    """`<ns>/<svc>|<port>`: an upstream service port (EDS)."""
    return f"{namespace}/{service}|{port}"


def local_cluster(namespace: str, service: str, port: int) -> str:
    """`<ns>/<svc>|<port>|local`: the application behind this sidecar. It differs from the
    upstream cluster of the same port only by the suffix, as in OSM."""
    return f"{cluster(namespace, service, port)}|local"


def outbound_routes(port: int) -> str:
    """`rds-outbound.<port>`: the routes of every upstream HTTP service on that port, a
    virtual host each. The HTTP chains of the port share it; the Host header picks."""
    return f"rds-outbound.{port}"


def inbound_routes(port: int) -> str:
    """`rds-inbound.<port>`: the routes, with their RBAC, of every local HTTP service on
    that port, a virtual host each."""
    return f"rds-inbound.{port}"


def service_host(namespace: str, service: str) -> str:
    """`<svc>.<ns>.svc.cluster.local`: the SNI clients send and inbound chains match."""
    return f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}"
