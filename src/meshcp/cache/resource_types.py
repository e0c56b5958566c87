"""The xDS resource types meshcp serves, and the protocol rules that depend on the type.

Kept in one small module below both `cache` and `xds` so that the rules (which types are
full-state, in which order types are pushed) are written down exactly once, next to a
link to the spec: https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol
"""

from typing import Final

_PREFIX: Final = "type.googleapis.com/"

CLUSTER: Final = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT: Final = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER: Final = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE: Final = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET: Final = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

#: Make-before-break push order on one ADS stream ("Eventual consistency
#: considerations" in the xDS protocol): clusters, then their endpoints, then
#: listeners, then their routes, then secrets.
PUSH_ORDER: Final[tuple[str, ...]] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)

#: Short names used in metrics labels, logs and the debug endpoint.
SHORT_NAMES: Final[dict[str, str]] = {
    CLUSTER: "cds",
    ENDPOINT: "eds",
    LISTENER: "lds",
    ROUTE: "rds",
    SECRET: "sds",
}


def is_full_state(type_url: str) -> bool:
    """Whether a SotW response of this type must list every resource.

    Listener and Cluster responses replace the client's whole set (a missing name is a
    deletion); the other types are named subscriptions answered per name.
    """
    return type_url in (LISTENER, CLUSTER)


def allows_legacy_wildcard(type_url: str) -> bool:
    """Whether a first request with no names means "everything" for this type.

    The spec keeps this legacy form for Listener and Cluster only.
    """
    return is_full_state(type_url)


def short_name(type_url: str) -> str:
    """A short label for a type URL; unknown types keep their message name."""
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


def push_rank(type_url: str) -> int:
    """Sort key giving PUSH_ORDER; unknown types go last, in name order."""
    try:
        return PUSH_ORDER.index(type_url)
    except ValueError:
        return len(PUSH_ORDER)
