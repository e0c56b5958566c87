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
from meshcp.certs.identity import Identity
from meshcp.compile import naming


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


def root_outbound(namespace: str, service: str, trust_bundle_pem: str, allowed_sans: Iterable[str]) -> Secret:
    """Trust anchors for calling a service, and the SPIFFE URIs its endpoints may present.

    Matching the URI SAN stops a compromised pod of another identity from answering for
    the service even though the mesh CA signed its certificate.
    """
    return Secret(
        name=naming.root_outbound(namespace, service),
        validation_context=CertificateValidationContext(
            trusted_ca=DataSource(inline_bytes=trust_bundle_pem.encode()),
            match_typed_subject_alt_names=[
                SubjectAltNameMatcher(
                    san_type=SubjectAltNameMatcherSanType.URI, matcher=StringMatcher(exact=san)
                )
                for san in sorted(set(allowed_sans))
            ],
        ),
    )
