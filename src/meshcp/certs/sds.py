"""What SDS delivers for an identity, as plain data (no Envoy types).

The server turns these into `Secret` resources: `service-cert:<ns>/<sa>` from
`certificate`, the `root-cert-for-mtls-*` secrets from `validation`. Everything here is
sorted and normalised, so equal inputs give byte-equal output and equal xDS versions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from meshcp.certs import pem
from meshcp.certs.provider import IssuedCertificate
from meshcp.identity import DEFAULT_TRUST_DOMAIN, Identity


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """A proxy's own certificate chain and key (the key never leaves this identity's proxies)."""

    certificate_chain_pem: str
    private_key_pem: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ValidationMaterial:
    """What a proxy checks peers against: trust anchors and the SPIFFE ids it accepts."""

    trust_bundle_pem: str
    match_uri_sans: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IdentitySecrets:
    identity: Identity
    certificate: TlsMaterial
    validation: ValidationMaterial


def allowed_sans(peers: Iterable[Identity], trust_domain: str = DEFAULT_TRUST_DOMAIN) -> tuple[str, ...]:
    """The SPIFFE URI SANs of `peers`, sorted and without duplicates."""
    return tuple(sorted({peer.spiffe_id(trust_domain) for peer in peers}))


def validation_material(
    trust_bundle_pem: str, peers: Iterable[Identity], trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> ValidationMaterial:
    """Trust anchors (normalised PEM) plus the allowed peer identities."""
    bundle = pem.to_pem(pem.load_certificates(trust_bundle_pem))
    return ValidationMaterial(bundle, allowed_sans(peers, trust_domain))


def identity_secrets(
    identity: Identity,
    certificate: IssuedCertificate,
    trust_bundle_pem: str,
    peers: Iterable[Identity],
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
) -> IdentitySecrets:
    """Everything SDS sends to the proxies of `identity`, where `peers` are the identities
    its proxies may accept (for outbound: the upstream service's accounts; for inbound:
    the allowed sources)."""
    return IdentitySecrets(
        identity=identity,
        certificate=TlsMaterial(certificate.chain_pem, certificate.private_key_pem),
        validation=validation_material(trust_bundle_pem, peers, trust_domain),
    )
