"""Choosing and opening the certificate authority from the controller's settings."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from meshcp.certs.cert_manager import CertManagerProvider
from meshcp.certs.external.cfssl import CfsslProvider
from meshcp.certs.external.vault import VaultProvider
from meshcp.certs.internal import InternalCA
from meshcp.certs.keys import KeySpec
from meshcp.certs.kubernetes_store import SecretStore
from meshcp.certs.provider import DEFAULT_WORKLOAD_VALIDITY, CertificateError, CertificateProvider
from meshcp.certs.storage import DirectoryStore, MemoryStore, StateStore

PROVIDERS = ("internal", "cfssl", "vault", "cert-manager")

#: Makes a Kubernetes API client (kubernetes_asyncio's ApiClient); the caller of
#: `open_provider` supplies it, so this module stays free of the Kubernetes client.
ApiClientFactory = Callable[[], Awaitable[Any]]


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
    #: `NAMESPACE/NAME` of a Secret holding the internal CA (instead of `state_dir`), so
    #: every controller replica shares one root.
    secret: str = ""
    cert_manager_issuer: str = ""
    cert_manager_issuer_kind: str = "Issuer"
    cert_manager_issuer_group: str = "cert-manager.io"
    cert_manager_namespace: str = "meshcp-system"


async def open_provider(
    settings: CaSettings, api_client_factory: ApiClientFactory | None = None, *, create: bool = True
) -> CertificateProvider:
    """The configured provider, ready to issue; a CertificateError says what is missing.

    `create=False` opens an existing internal CA only (the injector must never invent a
    root that the controller does not know)."""
    if settings.provider == "internal":
        store: StateStore
        if settings.secret:
            namespace, _, name = settings.secret.partition("/")
            if not namespace or not name or api_client_factory is None:
                raise CertificateError("internal", f"--ca-secret {settings.secret!r} is not NAMESPACE/NAME")
            store = SecretStore(await api_client_factory(), namespace, name)
        elif settings.state_dir is None:
            store = MemoryStore()
        else:
            store = DirectoryStore(settings.state_dir)
        return await InternalCA.open(store, key_spec=settings.key_spec, create=create)
    if settings.provider == "cert-manager":
        if not settings.cert_manager_issuer or api_client_factory is None:
            raise CertificateError(
                "cert-manager", "--cert-manager-issuer is required with --ca-provider cert-manager"
            )
        return CertManagerProvider(
            await api_client_factory(),
            owns_client=True,
            namespace=settings.cert_manager_namespace,
            issuer_name=settings.cert_manager_issuer,
            issuer_kind=settings.cert_manager_issuer_kind,
            issuer_group=settings.cert_manager_issuer_group,
        )
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
    """Close what the provider holds open (HTTP sessions, API clients)."""
    if isinstance(provider, CfsslProvider | VaultProvider | CertManagerProvider):
        await provider.aclose()
    elif isinstance(provider, InternalCA) and isinstance(provider.store, SecretStore):
        await provider.store.aclose()
