"""Envoy building blocks shared by the compile modules (config sources, typed configs, SANs)."""

from __future__ import annotations

from collections.abc import Iterable

import betterproto2

from meshcp._proto.envoy.config.core.v3 import (
    AggregatedConfigSource,
    ApiVersion,
    ConfigSource,
    TransportSocket,
    TypedExtensionConfig,
)
from meshcp._proto.envoy.config.rbac.v3 import Principal, PrincipalAuthenticated
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import SdsSecretConfig
from meshcp._proto.envoy.type.matcher.v3 import StringMatcher
from meshcp.cache.encoding import pack
from meshcp.identity import Identity

TLS_SOCKET = "envoy.transport_sockets.tls"


def ads() -> ConfigSource:
    """Fetch over the ADS stream the proxy already has (SDS, RDS, EDS)."""
    return ConfigSource(ads=AggregatedConfigSource(), resource_api_version=ApiVersion.V3)


def sds(name: str) -> SdsSecretConfig:
    return SdsSecretConfig(name=name, sds_config=ads())


def typed(name: str, message: betterproto2.Message) -> TypedExtensionConfig:
    return TypedExtensionConfig(name=name, typed_config=pack(message))


def tls_socket(context: betterproto2.Message) -> TransportSocket:
    return TransportSocket(name=TLS_SOCKET, typed_config=pack(context))


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
