"""The one interface every certificate authority backend implements.

The rest of the mesh sees only `CertificateProvider`, `CertificateRequest`,
`IssuedCertificate` and `CertificateError`: whether a certificate came from the built-in
CA, cfssl or Vault changes nothing downstream. Every backend failure is turned into a
`CertificateError` naming the provider and the cause, because operators read these
messages in logs and a stack trace tells them nothing about their CA.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from ipaddress import IPv4Address, IPv6Address
from types import TracebackType
from typing import ClassVar, Protocol, Self

from cryptography import x509

from meshcp.certs import pem
from meshcp.certs.keys import KeySpec, load_private_key, same_public_key

DEFAULT_WORKLOAD_VALIDITY = timedelta(hours=24)


class CertificateError(Exception):
    """A certificate could not be issued or loaded.

    `retryable` tells the issuer whether trying again can help (the CA was unreachable or
    answered 5xx) or not (the CA refused the request, or answered something unusable).
    """

    def __init__(self, provider: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"certificate provider {provider!r}: {message}")
        self.provider = provider
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class CertificateRequest:
    """What to put in a certificate. The key is always made fresh for each request."""

    common_name: str
    dns_names: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    ip_addresses: tuple[IPv4Address | IPv6Address, ...] = ()
    validity: timedelta = DEFAULT_WORKLOAD_VALIDITY
    key_spec: KeySpec = KeySpec.ECDSA_P256

    def __post_init__(self) -> None:
        if self.validity <= timedelta(0):
            raise ValueError(f"validity must be positive, got {self.validity}")
        if not (self.dns_names or self.uris or self.ip_addresses):
            raise ValueError("a certificate request needs at least one subject alternative name")


@dataclass(frozen=True, slots=True, repr=False)
class IssuedCertificate:
    """A leaf certificate with its chain and private key, as PEM text.

    `chain_pem` is the leaf followed by any intermediates: what a proxy presents. The
    trust anchors are not part of it; they come from `CertificateProvider.trust_bundle`.
    `repr` shows neither PEM nor key, so logging a certificate never leaks it.
    """

    chain_pem: str
    private_key_pem: str
    certificate: x509.Certificate = field(compare=False)

    @classmethod
    def from_pem(cls, chain_pem: str, private_key_pem: str) -> IssuedCertificate:
        """Check that the chain parses and that the key belongs to its leaf."""
        chain = pem.load_certificates(chain_pem)
        key = load_private_key(private_key_pem)
        if not same_public_key(key.public_key(), chain[0].public_key()):
            raise ValueError("the private key does not belong to the certificate")
        return cls(pem.to_pem(chain), private_key_pem, chain[0])

    def __repr__(self) -> str:
        # Short on purpose: PEM blobs in logs are noise and the key must never appear.
        return (
            f"IssuedCertificate(serial={self.serial_number:x}, "
            f"subject={self.certificate.subject.rfc4514_string()!r}, not_after={self.not_after.isoformat()})"
        )

    @property
    def certificate_pem(self) -> str:
        """The leaf certificate alone."""
        return pem.to_pem([self.certificate])

    @property
    def serial_number(self) -> int:
        return self.certificate.serial_number

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    @property
    def lifetime(self) -> timedelta:
        """The validity the CA actually granted, which may differ from what was asked."""
        return self.not_after - self.not_before


class CertificateProvider(Protocol):
    """A certificate authority backend.

    Implementations raise only `CertificateError` from `issue` and `trust_bundle`.
    """

    @property
    def name(self) -> str:
        """Short provider name used in errors and logs (`internal`, `cfssl`, `vault`)."""
        ...

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        """Issue one certificate for `request`."""
        ...

    async def trust_bundle(self) -> str:
        """The PEM trust anchors peers must trust to accept certificates from `issue`."""
        ...


class ClosableProvider(ABC):
    """The lifecycle of a provider that holds a connection open (an HTTP session, a
    Kubernetes API client): `async with provider:` or `aclose()` releases it.

    One base for every such provider, so that whoever opened one can close it without
    knowing which CA it is (`certs.setup.close_provider`).
    """

    NAME: ClassVar[str]
    """The provider's `name`, fixed per class."""

    @property
    def name(self) -> str:
        return self.NAME

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @abstractmethod
    async def aclose(self) -> None:
        """Release what the provider holds open; closing twice is harmless."""


def check_matches_request(provider: str, issued: IssuedCertificate, request: CertificateRequest) -> None:
    """Refuse a certificate that lacks any SAN that was asked for.

    External CAs apply their own policy and may silently drop names (cfssl 1.2.0 drops
    every URI SAN); a workload certificate without its SPIFFE URI would fail RBAC at
    every peer, so it is better reported here, once, with the reason.
    """
    cert = issued.certificate
    missing = [name for name in request.dns_names if name not in pem.dns_names(cert)]
    missing += [uri for uri in request.uris if uri not in pem.uris(cert)]
    missing += [str(ip) for ip in request.ip_addresses if ip not in pem.ip_addresses(cert)]
    if missing:
        raise CertificateError(
            provider, f"the issued certificate lacks the requested subject alternative names {missing}"
        )
