"""SDS: certificate data in, `Secret` resources out.

Two secrets per proxy, under names that do not vary by client (`naming.SERVICE_CERT`,
`naming.ROOT_CERT`): the clusters and listeners that name them are then the same bytes
for every client. The server identities a client accepts are not in these secrets but in
each upstream cluster (`cds.upstream_cluster`).
"""

from __future__ import annotations

from meshcp._proto.envoy.config.core.v3 import DataSource
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import (
    CertificateValidationContext,
    Secret,
    TlsCertificate,
)
from meshcp.compile import naming


def service_cert(chain_pem: str, private_key_pem: str) -> Secret:
    """A proxy's own certificate and key, for both ends of mTLS. Each class's snapshot
    holds its own identity's (see `naming.SERVICE_CERT` for why no other can be served)."""
    return Secret(
        name=naming.SERVICE_CERT,
        tls_certificate=TlsCertificate(
            certificate_chain=DataSource(inline_bytes=chain_pem.encode()),
            private_key=DataSource(inline_bytes=private_key_pem.encode()),
        ),
    )


def root_cert(trust_bundle_pem: str) -> Secret:
    """The mesh's trust anchors, the same secret for every proxy: inbound checks callers
    against it (RBAC then decides on their SANs), outbound clusters combine it with the
    SANs their service may present."""
    return Secret(
        name=naming.ROOT_CERT,
        validation_context=CertificateValidationContext(
            trusted_ca=DataSource(inline_bytes=trust_bundle_pem.encode())
        ),
    )
