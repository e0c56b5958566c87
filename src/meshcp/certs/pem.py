"""Reading and describing X.509 certificates in PEM.

Every provider hands back PEM text of varying tidiness (trailing newlines, several
certificates in one string); normalising it here keeps the SDS output byte-stable, which
matters because xDS versions are content hashes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization


def load_certificates(pem: str | bytes) -> list[x509.Certificate]:
    """All certificates in a PEM text, in order; ValueError if there are none."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    certificates = x509.load_pem_x509_certificates(data)
    if not certificates:
        raise ValueError("no certificate in PEM text")
    return certificates


def to_pem(certificates: Iterable[x509.Certificate]) -> str:
    """Certificates as one PEM text, each block ending in a newline."""
    return "".join(cert.public_bytes(serialization.Encoding.PEM).decode("ascii") for cert in certificates)


def fingerprint_sha256(certificate: x509.Certificate) -> str:
    """The SHA-256 fingerprint in the colon-separated form `openssl x509 -fingerprint` prints."""
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def is_self_signed(certificate: x509.Certificate) -> bool:
    """Whether a certificate is a root (issued by itself, signature checked)."""
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _subject_alt_names(certificate: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def dns_names(certificate: x509.Certificate) -> list[str]:
    """The DNS SANs."""
    sans = _subject_alt_names(certificate)
    return [] if sans is None else sans.get_values_for_type(x509.DNSName)


def uris(certificate: x509.Certificate) -> list[str]:
    """The URI SANs."""
    sans = _subject_alt_names(certificate)
    return [] if sans is None else sans.get_values_for_type(x509.UniformResourceIdentifier)


def ip_addresses(certificate: x509.Certificate) -> list[IPv4Address | IPv6Address]:
    """The IP address SANs (networks are not used in end-entity certificates)."""
    sans = _subject_alt_names(certificate)
    if sans is None:
        return []
    return [
        ip for ip in sans.get_values_for_type(x509.IPAddress) if isinstance(ip, IPv4Address | IPv6Address)
    ]
