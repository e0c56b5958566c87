"""Names of Envoy resources, as OSM spelled them (users' dashboards know them)."""

from __future__ import annotations

from meshcp.identity import Identity

SERVICE_CERT = "service-cert"
ROOT_OUTBOUND = "root-cert-for-mtls-outbound"
ROOT_INBOUND = "root-cert-for-mtls-inbound"


def service_cert(identity: Identity) -> str:
    """`service-cert:<ns>/<sa>`: a proxy's own certificate chain and key."""
    return f"{SERVICE_CERT}:{identity}"


def root_inbound(identity: Identity) -> str:
    """`root-cert-for-mtls-inbound:<ns>/<sa>`: the trust bundle inbound mTLS checks against."""
    return f"{ROOT_INBOUND}:{identity}"


def root_outbound(namespace: str, service: str) -> str:
    """`root-cert-for-mtls-outbound:<ns>/<svc>`: trust bundle plus the SANs a service may present."""
    return f"{ROOT_OUTBOUND}:{namespace}/{service}"


def secret_owner(name: str) -> Identity | None:
    """The identity a secret name is private to, or None for public trust data.

    A proxy may only receive its own `service-cert` (the key) and its own inbound root;
    outbound roots hold nothing secret and any proxy may ask for any of them.
    """
    kind, sep, rest = name.partition(":")
    if not sep or kind not in (SERVICE_CERT, ROOT_INBOUND):
        return None
    try:
        return Identity.parse(rest)
    except ValueError:
        return None


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
