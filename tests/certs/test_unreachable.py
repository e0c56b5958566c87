from __future__ import annotations

import pytest

from meshcp.certs.external.cfssl import CfsslProvider
from meshcp.certs.external.vault import VaultProvider
from meshcp.certs.issuance import workload_request
from meshcp.certs.issuer import Issuer, RetryPolicy
from meshcp.certs.provider import CertificateError
from meshcp.identity import Identity
from tests.support import free_port

from .support import RecordingSleep

REQUEST = workload_request(Identity("ns", "sa"))


@pytest.mark.parametrize("kind", ["cfssl", "vault"])
async def test_unreachable_ca_is_a_retryable_one_line_error(kind: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    provider = CfsslProvider(url) if kind == "cfssl" else VaultProvider(url, "token", role="mesh")
    sleep = RecordingSleep()
    try:
        with pytest.raises(CertificateError) as caught:
            await Issuer(provider, RetryPolicy(attempts=3), sleep=sleep).issue(REQUEST)
        with pytest.raises(CertificateError, match="cannot reach"):
            await provider.trust_bundle()
    finally:
        await provider.aclose()
    message = str(caught.value)
    assert message.startswith(f"certificate provider {kind!r}: cannot reach {url}: ")
    assert message.endswith("(gave up after 3 attempts)")
    assert "\n" not in message
    assert len(sleep.delays) == 2
