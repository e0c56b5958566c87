"""Envoy building blocks that only the compile modules share: secrets over SDS and the
SANs that RBAC principals match. Pieces the sidecar's static config builds too live in
`meshcp.sidecar.envoy_parts`."""

from __future__ import annotations

from collections.abc import Iterable

from meshcp._proto.envoy.config.rbac.v3 import Principal, PrincipalAuthenticated
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import SdsSecretConfig
from meshcp._proto.envoy.type.matcher.v3 import StringMatcher
from meshcp.identity import Identity
from meshcp.sidecar.envoy_parts import ads


def sds(name: str) -> SdsSecretConfig:
    return SdsSecretConfig(name=name, sds_config=ads())


def principal_names(identity: Identity, trust_domain: str) -> tuple[str, str]:
    """The SPIFFE URI and the DNS SAN of an identity: Envoy's principal name is the URI
    SAN, else the DNS SAN (for CAs that cannot sign URIs, such as cfssl 1.2.0)."""
    return identity.spiffe_id(trust_domain), identity.dns_name(trust_domain)


def principals(identities: Iterable[Identity], trust_domain: str) -> list[Principal]:
    """RBAC principals matching each identity by URI or DNS SAN, in a stable order."""
    return [
        Principal(authenticated=PrincipalAuthenticated(principal_name=StringMatcher(exact=name)))
        for identity in sorted(set(identities))
        for name in principal_names(identity, trust_domain)
    ]
