"""Who a proxy is, and which secret names it may ask for."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp.certs.clock import utc_now
from meshcp.certs.xds_identity import XdsClientRejected, verify_xds_client
from meshcp.compile.naming import SECRETS
from meshcp.identity import DEFAULT_TRUST_DOMAIN, ProxyIdentity
from meshcp.xds.auth import Authorizer, PeerCertificate, StreamRejected

log = logging.getLogger("meshcp.runtime.access")


def verified_identity(
    xds_trust_bundle: Callable[[], str],
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    clock: Callable[[], datetime] = utc_now,
) -> Authorizer:
    """mTLS: the node id must be the sidecar name the mesh CA signed into the client
    certificate, which must be valid now and chain to the current *xDS* trust bundle
    (`TrustCoordinator.xds_bundle`). That bundle keeps roots retired by a rotation until
    they expire, because the client certificate sits in the proxy's bootstrap and cannot
    be renewed over xDS; workload mTLS trusts the current roots only."""

    def authorize(node: Node, peer: PeerCertificate) -> str | None:
        try:
            proxy = verify_xds_client(peer, xds_trust_bundle(), clock(), node.id, trust_domain=trust_domain)
        except XdsClientRejected as rejected:
            raise StreamRejected(str(rejected.reason), str(rejected)) from None
        return str(proxy.identity)

    return authorize


def claimed_identity(trust_domain: str = DEFAULT_TRUST_DOMAIN) -> Authorizer:
    """`--insecure-xds`: believe the node id (local work only); unknown shapes get no identity."""

    def authorize(node: Node, peer: PeerCertificate) -> str | None:
        try:
            return str(ProxyIdentity.parse(node.id, trust_domain).identity)
        except ValueError:
            return None

    return authorize


def may_receive(name: str) -> bool:
    """Whether a proxy may subscribe to a secret name: only the names the mesh serves.

    Every proxy's snapshot holds exactly its own identity's `service-cert` and the shared
    `root-cert`, so no name can reach another identity's key (`naming.SERVICE_CERT`);
    a name outside those two is dropped and counted: a proxy whose configuration did not
    come from this controller (OSM's per-identity names, a controller older than the
    shared names) or that probes for keys."""
    return name in SECRETS
