"""Certificate signing requests for CAs that sign elsewhere (cfssl, cert-manager).

The key is made here and only the CSR leaves the process, so a private key never
crosses the network. Key generation runs in a worker thread: an RSA-4096 key takes long
enough to stall every xDS stream otherwise.
"""

from __future__ import annotations

import asyncio

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from meshcp.certs.authority import leaf_subject, subject_alt_names
from meshcp.certs.keys import PrivateKey, generate_private_key
from meshcp.certs.provider import CertificateRequest


def build_csr(key: PrivateKey, request: CertificateRequest) -> str:
    """A PEM CSR carrying the request's subject and SANs, signed by `key`."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(leaf_subject(request.common_name))
        .add_extension(subject_alt_names(request), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


async def new_key_and_csr(request: CertificateRequest) -> tuple[PrivateKey, str]:
    """A fresh key of the request's type and the PEM CSR for it."""
    key = await asyncio.to_thread(generate_private_key, request.key_spec)
    return key, build_csr(key, request)
