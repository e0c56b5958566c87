"""SDS: certificate data in, `Secret` resources out."""

from __future__ import annotations

from collections.abc import Iterable

from meshcp._proto.envoy.config.core.v3 import DataSource
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    Secret,
    SubjectAltNameMatcher,
    SubjectAltNameMatcherSanType,
    TlsCertificate,
)
from meshcp._proto.envoy.type.matcher.v3 import StringMatcher
from meshcp.compile import naming
from meshcp.identity import Identity


def service_cert(identity: Identity, chain_pem: str, private_key_pem: str) -> Secret:
    """The proxy's own certificate and key, for both ends of mTLS."""
    return Secret(
        name=naming.service_cert(identity),
        tls_certificate=TlsCertificate(
            certificate_chain=DataSource(inline_bytes=chain_pem.encode()),
            private_key=DataSource(inline_bytes=private_key_pem.encode()),
        ),
    )


def root_inbound(identity: Identity, trust_bundle_pem: str) -> Secret:
    """Trust anchors for inbound mTLS; who may call is decided by RBAC on the SPIFFE URI."""
    return Secret(
        name=naming.root_inbound(identity),
        validation_context=CertificateValidationContext(
            trusted_ca=DataSource(inline_bytes=trust_bundle_pem.encode())
        ),
    )


def root_outbound(
    namespace: str, service: str, trust_bundle_pem: str, identities: Iterable[Identity], trust_domain: str
) -> Secret:
    """Trust anchors for calling a service, and the identities its endpoints may present.

    Matching the SAN stops a pod of another identity from answering for the service even
    though the mesh CA signed its certificate. Each identity is accepted by its SPIFFE URI
    or its DNS SAN (CAs such as cfssl 1.2.0 cannot sign URI SANs).
    """
    matchers = []
    for identity in sorted(set(identities)):
        matchers.append(_san(SubjectAltNameMatcherSanType.URI, identity.spiffe_id(trust_domain)))
        matchers.append(_san(SubjectAltNameMatcherSanType.DNS, identity.dns_name(trust_domain)))
    return Secret(
        name=naming.root_outbound(namespace, service),
        validation_context=CertificateValidationContext(
            trusted_ca=DataSource(inline_bytes=trust_bundle_pem.encode()),
            match_typed_subject_alt_names=matchers,
        ),
    )


def _san(kind: SubjectAltNameMatcherSanType, value: str) -> SubjectAltNameMatcher:
    return SubjectAltNameMatcher(san_type=kind, matcher=StringMatcher(exact=value))
