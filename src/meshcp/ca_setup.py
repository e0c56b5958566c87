"""Choosing and opening the certificate authority from the controller's settings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from meshcp.certs.external.cfssl import CfsslProvider
from meshcp.certs.external.vault import VaultProvider
from meshcp.certs.internal import InternalCA
from meshcp.certs.keys import KeySpec
from meshcp.certs.provider import DEFAULT_WORKLOAD_VALIDITY, CertificateError, CertificateProvider
from meshcp.certs.storage import DirectoryStore, MemoryStore, StateStore

PROVIDERS = ("internal", "cfssl", "vault")


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/meshcp`, else `~/.local/state/meshcp`: where the internal CA lives."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshcp"


@dataclass
class CaSettings:
    """Which CA signs workload and xDS certificates, and how long they live."""

    #: `internal`, `cfssl` or `vault`.
    provider: str = "internal"
    #: Where the internal CA keeps its roots; None keeps them in memory (tests, throwaway).
    state_dir: Path | None = None
    #: Key type of new roots and of every issued certificate.
    key_spec: KeySpec = KeySpec.ECDSA_P256
    trust_domain: str = "cluster.local"
    #: Lifetime of workload certificates.
    validity: timedelta = DEFAULT_WORKLOAD_VALIDITY
    #: Renew when less than this share of a certificate's lifetime remains.
    renew_share: float = 0.3
    cfssl_url: str = ""
    vault_address: str = ""
    vault_token: str = field(default="", repr=False)
    vault_role: str = "meshcp"
    vault_mount: str = "pki"


async def open_provider(settings: CaSettings) -> CertificateProvider:
    """The configured provider, ready to issue; a CertificateError says what is missing."""
    if settings.provider == "internal":
        store: StateStore = (
            MemoryStore() if settings.state_dir is None else DirectoryStore(settings.state_dir)
        )
        return await InternalCA.open(store, key_spec=settings.key_spec)
    if settings.provider == "cfssl":
        if not settings.cfssl_url:
            raise CertificateError("cfssl", "--cfssl-url is required with --ca-provider cfssl")
        return CfsslProvider(settings.cfssl_url)
    if settings.provider == "vault":
        if not settings.vault_address or not settings.vault_token:
            raise CertificateError(
                "vault", "--vault-address and a token (--vault-token or VAULT_TOKEN) are required"
            )
        return VaultProvider(
            settings.vault_address, settings.vault_token, role=settings.vault_role, mount=settings.vault_mount
        )
    raise CertificateError(settings.provider, f"unknown CA provider (choose from {', '.join(PROVIDERS)})")


async def close_provider(provider: CertificateProvider) -> None:
    if isinstance(provider, CfsslProvider | VaultProvider):
        await provider.aclose()
