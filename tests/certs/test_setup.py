"""The CA settings: every check in one place (`CaSettings.problems`), with the one-line
messages the command line prints, and `open_provider` refusing what they refuse."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshcp.certs.external.cfssl import CfsslProvider
from meshcp.certs.external.vault import VaultProvider
from meshcp.certs.internal import InternalCA
from meshcp.certs.provider import CertificateError, CertificateRequest, ClosableProvider, IssuedCertificate
from meshcp.certs.setup import CaSettings, CaSettingsError, close_provider, open_provider
from meshcp.certs.storage import DirectoryStore, MemoryStore


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            CaSettings(provider="acme"),
            "--ca-provider 'acme' is unknown (choose from internal, cfssl, vault, cert-manager)",
        ),
        (CaSettings(renew_share=0), "--renew-share must be between 0 and 1"),
        (CaSettings(renew_share=1.0), "--renew-share must be between 0 and 1"),
        (CaSettings(provider="cfssl"), "--cfssl-url is required with --ca-provider cfssl"),
        (
            CaSettings(provider="vault", vault_address="https://vault:8200"),
            "--vault-address and a token (--vault-token or VAULT_TOKEN) are required with vault",
        ),
        (
            CaSettings(provider="vault", vault_token="s.token"),
            "--vault-address and a token (--vault-token or VAULT_TOKEN) are required with vault",
        ),
        (
            CaSettings(provider="cert-manager"),
            "--cert-manager-issuer is required with --ca-provider cert-manager",
        ),
        (CaSettings(secret="no-slash"), "--ca-secret 'no-slash' is not NAMESPACE/NAME"),
        (CaSettings(secret="a/b/c"), "--ca-secret 'a/b/c' is not NAMESPACE/NAME"),
        (CaSettings(secret="ns/"), "--ca-secret 'ns/' is not NAMESPACE/NAME"),
        (CaSettings(secret="/name"), "--ca-secret '/name' is not NAMESPACE/NAME"),
    ],
)
def test_each_problem_is_one_line_naming_the_flag(settings: CaSettings, message: str) -> None:
    assert settings.problems() == [message]
    with pytest.raises(CaSettingsError) as raised:
        settings.validate()
    assert raised.value.message == message
    assert raised.value.problems == [message]
    assert raised.value.provider == settings.provider
    assert not raised.value.retryable


@pytest.mark.parametrize(
    "settings",
    [
        CaSettings(),
        CaSettings(provider="cfssl", cfssl_url="http://cfssl:8888"),
        CaSettings(provider="vault", vault_address="https://vault:8200", vault_token="s.token"),
        CaSettings(provider="cert-manager", cert_manager_issuer="mesh-ca"),
        CaSettings(secret="meshcp-system/meshcp-ca"),
        # Settings only one provider reads are not checked for another.
        CaSettings(provider="internal", cfssl_url="", vault_token=""),
    ],
)
def test_complete_settings_have_no_problems(settings: CaSettings) -> None:
    assert settings.problems() == []
    settings.validate()


def test_every_problem_is_listed_the_first_is_the_message() -> None:
    settings = CaSettings(provider="cfssl", renew_share=2.0, secret="x")
    with pytest.raises(CaSettingsError, match="--renew-share must be between 0 and 1") as raised:
        settings.validate()
    assert raised.value.problems == [
        "--renew-share must be between 0 and 1",
        "--cfssl-url is required with --ca-provider cfssl",
        "--ca-secret 'x' is not NAMESPACE/NAME",
    ]
    assert str(raised.value) == "certificate provider 'cfssl': --renew-share must be between 0 and 1"


def test_secret_name_is_namespace_and_name() -> None:
    assert CaSettings(secret="meshcp-system/meshcp-ca").secret_name == ("meshcp-system", "meshcp-ca")
    assert CaSettings(secret="").secret_name is None
    assert CaSettings(secret="a/b/c").secret_name is None


@pytest.mark.parametrize(
    "settings",
    [CaSettings(provider="acme"), CaSettings(provider="cfssl"), CaSettings(renew_share=-1)],
)
async def test_open_provider_refuses_settings_with_problems(settings: CaSettings) -> None:
    with pytest.raises(CaSettingsError, match=re.escape(settings.problems()[0])):
        await open_provider(settings)


@pytest.mark.parametrize(
    "settings",
    [
        CaSettings(secret="meshcp-system/meshcp-ca"),
        CaSettings(provider="cert-manager", cert_manager_issuer="ca"),
    ],
)
async def test_kubernetes_backed_settings_need_an_api_client(settings: CaSettings) -> None:
    with pytest.raises(CertificateError, match="no API client was given") as raised:
        await open_provider(settings)
    assert not isinstance(raised.value, CaSettingsError)


async def test_open_provider_builds_each_provider(tmp_path: Path) -> None:
    memory = await open_provider(CaSettings())
    assert isinstance(memory, InternalCA) and isinstance(memory.store, MemoryStore)
    directory = await open_provider(CaSettings(state_dir=tmp_path))
    assert isinstance(directory, InternalCA) and isinstance(directory.store, DirectoryStore)
    with pytest.raises(CertificateError, match="no CA found"):
        await open_provider(CaSettings(state_dir=tmp_path / "empty"), create=False)
    cfssl = await open_provider(CaSettings(provider="cfssl", cfssl_url="http://127.0.0.1:1"))
    vault = await open_provider(
        CaSettings(provider="vault", vault_address="http://127.0.0.1:1", vault_token="s.token")
    )
    assert isinstance(cfssl, CfsslProvider) and isinstance(vault, VaultProvider)
    for provider in (memory, directory, cfssl, vault):
        await close_provider(provider)


class Holding(ClosableProvider):
    """A provider holding something open, counting how often it is released."""

    NAME = "holding"

    def __init__(self) -> None:
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        raise CertificateError(self.name, "not for issuing")

    async def trust_bundle(self) -> str:
        raise CertificateError(self.name, "not for trusting")


async def test_a_provider_holding_a_connection_is_closed_by_whoever_opened_it() -> None:
    provider = Holding()
    async with provider as entered:
        assert entered is provider and provider.name == "holding"
    assert provider.closed == 1
    await close_provider(provider)
    assert provider.closed == 2
