"""The built-in CA's certificate making: roots and the leaves they sign.

Pure functions over `cryptography` objects, with the time passed in, so that validity
rules (backdating for clock skew, never outliving the root) are testable without a clock.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshcp.certs import pem
from meshcp.certs.keys import KeySpec, PrivateKey, PublicKey, generate_private_key, same_public_key
from meshcp.certs.provider import CertificateRequest

ROOT_VALIDITY = timedelta(days=3650)
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates start this long before they are made, so peers with a slightly slow
clock do not reject a certificate that was just issued."""

_MAX_COMMON_NAME = 64
_ORGANIZATION = "meshcp"


def root_id(certificate: x509.Certificate) -> str:
    """A short stable name for a root: the start of its SHA-256 fingerprint."""
    return pem.fingerprint_sha256(certificate).replace(":", "")[:16].lower()


@dataclass(frozen=True, slots=True)
class Root:
    """A root CA certificate and its key."""

    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)

    def __post_init__(self) -> None:
        if not same_public_key(self.private_key.public_key(), self.certificate.public_key()):
            raise ValueError("the root key does not belong to the root certificate")
        try:
            constraints = self.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ValueError("the root certificate is not a CA certificate")

    @property
    def id(self) -> str:
        return root_id(self.certificate)

    @property
    def pem(self) -> str:
        return pem.to_pem([self.certificate])


def _key_usage(*, ca: bool, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def create_root(key_spec: KeySpec, now: datetime, *, validity: timedelta = ROOT_VALIDITY) -> Root:
    """A new self-signed root.

    Each root gets a distinct subject (a random tag in the CN): during a root rotation
    two roots are trusted at once, and identical subjects would leave path building to
    guess between them by key identifier alone.
    """
    key = generate_private_key(key_spec)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshcp root CA {secrets.token_hex(4)}"),
        ]
    )
    public_key = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True, key_encipherment=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Root(certificate, key)


def cross_sign(issuer: Root, subject: x509.Certificate) -> x509.Certificate | None:
    """A CA certificate for `subject`'s name and key, issued and signed by `issuer`.

    Made when a root rotation begins, while the old root's key is still at hand: a peer
    whose trust was fixed before the rotation (a proxy's bootstrap trusts only the old
    root, for the proxy's whole life) can then verify a chain from the new root as
    leaf -> cross certificate -> old root. It is valid only while both roots are, so it
    extends neither. None when the two roots share no moment of validity (the old root
    has already expired: nothing could be verified through it anyway).
    """
    not_before = max(issuer.certificate.not_valid_before_utc, subject.not_valid_before_utc)
    not_after = min(issuer.certificate.not_valid_after_utc, subject.not_valid_after_utc)
    if not_after <= not_before:
        return None
    public_key = subject.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise ValueError(f"unsupported root key type {type(public_key).__name__}")
    subject_ski = subject.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    issuer_ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject.subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True, key_encipherment=False), critical=True)
        # The same key identifier as the root it certifies, so a leaf's authority key
        # identifier matches either of them and path building may take whichever it trusts.
        .add_extension(subject_ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
        )
        .sign(issuer.private_key, hashes.SHA256())
    )


def leaf_subject(common_name: str) -> x509.Name:
    """The subject for a leaf; X.509 caps a CN at 64 characters, so a longer one is left out
    (the SANs carry the identity, the CN is only for humans)."""
    if not common_name or len(common_name) > _MAX_COMMON_NAME:
        return x509.Name([])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def subject_alt_names(request: CertificateRequest) -> x509.SubjectAlternativeName:
    """The SAN extension for a request, in a fixed order (URI, DNS, IP)."""
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in request.uris]
    names += [x509.DNSName(name) for name in request.dns_names]
    names += [x509.IPAddress(ip) for ip in request.ip_addresses]
    return x509.SubjectAlternativeName(names)


def sign_leaf(
    root: Root, request: CertificateRequest, public_key: PublicKey, now: datetime
) -> x509.Certificate:
    """An end-entity certificate for both TLS roles (mTLS: every workload is client and server).

    It never outlives the root that signs it.
    """
    subject = leaf_subject(request.common_name)
    root_ski = root.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + request.validity, root.certificate.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(ca=False, key_encipherment=request.key_spec is not KeySpec.ECDSA_P256), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        # RFC 5280: with an empty subject the SAN extension must be critical.
        .add_extension(subject_alt_names(request), critical=len(subject) == 0)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), critical=False
        )
        .sign(root.private_key, hashes.SHA256())
    )
