"""Certificates for the mesh: CA providers, issuance, rotation and xDS transport identity.

Provider-independent. External CA clients live in `meshcp.certs.external` (the only
place here that speaks HTTP) and are not imported by this package.
"""

from meshcp.certs.internal import InternalCA
from meshcp.certs.issuer import Issuer, RetryPolicy
from meshcp.certs.keys import KeySpec
from meshcp.certs.provider import (
    CertificateError,
    CertificateProvider,
    CertificateRequest,
    IssuedCertificate,
)
from meshcp.certs.rotation import CertificateManager, RenewalPolicy, workload_certificates
from meshcp.certs.storage import DirectoryStore, MemoryStore, StateStore
from meshcp.certs.xds_identity import RejectReason, XdsClientRejected, verify_xds_client
from meshcp.identity import DEFAULT_TRUST_DOMAIN, Identity, ProxyIdentity

__all__ = [
    "DEFAULT_TRUST_DOMAIN",
    "CertificateError",
    "CertificateManager",
    "CertificateProvider",
    "CertificateRequest",
    "DirectoryStore",
    "Identity",
    "InternalCA",
    "IssuedCertificate",
    "Issuer",
    "KeySpec",
    "MemoryStore",
    "ProxyIdentity",
    "RejectReason",
    "RenewalPolicy",
    "RetryPolicy",
    "StateStore",
    "XdsClientRejected",
    "verify_xds_client",
    "workload_certificates",
]
