"""Choosing, checking and opening the certificate authority from the controller's settings.

`CaSettings.problems` is the one place the settings are checked: the command line turns
its first problem into a usage error, and `open_provider` refuses settings that have any.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from meshcp.certs.external.cfssl import CfsslProvider
from meshcp.certs.external.vault import VaultProvider
from meshcp.certs.internal import InternalCA
from meshcp.certs.issuer import RetryPolicy
from meshcp.certs.keys import KeySpec
from meshcp.certs.provider import (
    DEFAULT_WORKLOAD_VALIDITY,
    CertificateError,
    CertificateProvider,
    ClosableProvider,
)
from meshcp.certs.storage import ClosableStore, DirectoryStore, MemoryStore, StateStore

PROVIDERS = ("internal", "cfssl", "vault", "cert-manager")

#: Makes a Kubernetes API client (kubernetes_asyncio's ApiClient); the caller of
#: `open_provider` supplies it, so this module stays free of the Kubernetes client.
ApiClientFactory = Callable[[], Awaitable[Any]]


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/meshcp`, else `~/.local/state/meshcp`: where the internal CA lives."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshcp"


class CaSettingsError(CertificateError):
    """The CA settings cannot work. The message is one line naming the flag to fix (what
    the command line prints); `problems` holds every problem found, in that order."""

    def __init__(self, provider: str, problems: list[str]) -> None:
        super().__init__(provider, problems[0])
        self.problems = problems


@dataclass
class CaSettings:
    """Which CA signs workload and xDS certificates, and how long they live."""

    #: One of `PROVIDERS`.
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
    #: Attempts and back-off of one issuance (a CA restarting costs a few retries).
    issue_retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: After a renewal failed for good (the retries above exhausted), when to try again;
    #: the current certificate stays in service meanwhile.
    renew_retry: timedelta = timedelta(seconds=30)
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

    def problems(self) -> list[str]:
        """Why these settings cannot work, one line each naming the flag; empty if they can.

        In the order the command line has always reported them, so its first line is the
        usage error it prints.
        """
        found: list[str] = []
        if self.provider not in PROVIDERS:
            found.append(f"--ca-provider {self.provider!r} is unknown (choose from {', '.join(PROVIDERS)})")
        if not 0 < self.renew_share < 1:
            found.append("--renew-share must be between 0 and 1")
        if self.provider == "cfssl" and not self.cfssl_url:
            found.append("--cfssl-url is required with --ca-provider cfssl")
        if self.provider == "vault" and not (self.vault_address and self.vault_token):
            found.append("--vault-address and a token (--vault-token or VAULT_TOKEN) are required with vault")
        if self.provider == "cert-manager" and not self.cert_manager_issuer:
            found.append("--cert-manager-issuer is required with --ca-provider cert-manager")
        if self.secret and self.secret_name is None:
            found.append(f"--ca-secret {self.secret!r} is not NAMESPACE/NAME")
        return found

    def validate(self) -> None:
        """Raise `CaSettingsError` if `problems` finds any."""
        found = self.problems()
        if found:
            raise CaSettingsError(self.provider, found)

    @property
    def secret_name(self) -> tuple[str, str] | None:
        """`secret` as (namespace, name), or None if it is not exactly `NAMESPACE/NAME`."""
        namespace, _, name = self.secret.partition("/")
        if not namespace or not name or "/" in name:
            return None
        return namespace, name


async def open_provider(
    settings: CaSettings, api_client_factory: ApiClientFactory | None = None, *, create: bool = True
) -> CertificateProvider:
    """The configured provider, ready to issue; a CertificateError says what is missing.

    `create=False` opens an existing internal CA only (the injector must never invent a
    root that the controller does not know)."""
    settings.validate()
    if settings.provider == "internal":
        store: StateStore
        if settings.secret_name is not None:
            # Imported here: the Kubernetes client costs every process that never uses it
            # ~0.4 s of start-up (see meshcp.kube.client).
            from meshcp.certs.kubernetes_store import SecretStore

            store = SecretStore(await _api_client(settings, api_client_factory), *settings.secret_name)
        elif settings.state_dir is None:
            store = MemoryStore()
        else:
            store = DirectoryStore(settings.state_dir)
        return await InternalCA.open(store, key_spec=settings.key_spec, create=create)
    if settings.provider == "cert-manager":
        from meshcp.certs.cert_manager import CertManagerProvider

        return CertManagerProvider(
            await _api_client(settings, api_client_factory),
            owns_client=True,
            namespace=settings.cert_manager_namespace,
            issuer_name=settings.cert_manager_issuer,
            issuer_kind=settings.cert_manager_issuer_kind,
            issuer_group=settings.cert_manager_issuer_group,
        )
    if settings.provider == "cfssl":
        return CfsslProvider(settings.cfssl_url)
    # `validate` admits only PROVIDERS: what is left is Vault.
    return VaultProvider(
        settings.vault_address, settings.vault_token, role=settings.vault_role, mount=settings.vault_mount
    )


async def _api_client(settings: CaSettings, factory: ApiClientFactory | None) -> Any:
    """A Kubernetes API client for the parts of the CA kept in Kubernetes."""
    if factory is None:
        raise CertificateError(settings.provider, "the settings need Kubernetes, but no API client was given")
    return await factory()


async def close_provider(provider: CertificateProvider) -> None:
    """Close what the provider holds open (HTTP sessions, API clients)."""
    if isinstance(provider, ClosableProvider):
        await provider.aclose()
    elif isinstance(provider, InternalCA) and isinstance(provider.store, ClosableStore):
        await provider.store.aclose()
