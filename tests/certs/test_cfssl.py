"""The cfssl provider against a real `cfssl serve` (Debian package golang-cfssl)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from meshcp.certs import pem
from meshcp.certs.external.cfssl import CfsslProvider
from meshcp.certs.issuance import workload_request, xds_client_request, xds_server_request
from meshcp.certs.keys import KeySpec, key_spec_of, load_private_key
from meshcp.certs.provider import CertificateError
from meshcp.certs.xds_identity import verify_xds_client
from meshcp.identity import Identity, ProxyIdentity
from tests.support import free_port

IDENTITY = Identity("bookstore", "bookbuyer")
READY_TIMEOUT = 30.0
USAGES = ["signing", "key encipherment", "server auth", "client auth"]


@dataclass(frozen=True)
class CfsslServer:
    url: str
    ca_pem: str
    version: tuple[int, ...]


def cfssl_version(binary: str) -> tuple[int, ...]:
    output = subprocess.run([binary, "version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Version:\s*(\d+)\.(\d+)\.(\d+)", output)
    assert match, f"unexpected `cfssl version` output: {output!r}"
    return tuple(int(part) for part in match.groups())


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the info endpoint until cfssl answers; fail at once if it exits."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"cfssl serve exited with {process.returncode}: {log.read_text()}")
        try:
            request = urllib.request.Request(f"{url}/api/v1/cfssl/info", data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.02)  # polling interval, not synchronisation: the answer is the signal
    pytest.fail(f"cfssl serve did not answer within {READY_TIMEOUT}s: {log.read_text()}")


@pytest.fixture(scope="module")
def cfssl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CfsslServer]:
    binary = shutil.which("cfssl")
    if binary is None:
        pytest.skip(
            "cfssl not found: install the Debian package golang-cfssl to run the cfssl provider tests"
        )
    directory = tmp_path_factory.mktemp("cfssl")
    csr = {"CN": "cfssl test root", "key": {"algo": "ecdsa", "size": 256}}
    (directory / "csr.json").write_text(json.dumps(csr))
    generated = subprocess.run(
        [binary, "gencert", "-initca", str(directory / "csr.json")], capture_output=True, check=True
    )
    ca = json.loads(generated.stdout)
    (directory / "ca.pem").write_text(ca["cert"])
    (directory / "ca-key.pem").write_text(ca["key"])
    config = {
        "signing": {
            "default": {"expiry": "24h", "usages": USAGES},
            "profiles": {"restricted": {"expiry": "1h", "usages": USAGES, "name_whitelist": r"^allowed\."}},
        }
    }
    (directory / "config.json").write_text(json.dumps(config))
    port = free_port()
    log = directory / "serve.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                binary, "serve", "-address", "127.0.0.1", "-port", str(port),
                "-ca", str(directory / "ca.pem"), "-ca-key", str(directory / "ca-key.pem"),
                "-config", str(directory / "config.json"),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, log)
        yield CfsslServer(url, ca["cert"], cfssl_version(binary))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def cfssl(cfssl_server: CfsslServer) -> AsyncIterator[CfsslProvider]:
    async with CfsslProvider(cfssl_server.url) as provider:
        yield provider


async def test_trust_bundle_is_the_cfssl_ca(cfssl: CfsslProvider, cfssl_server: CfsslServer) -> None:
    bundle = pem.load_certificates(await cfssl.trust_bundle())
    assert bundle == pem.load_certificates(cfssl_server.ca_pem)


async def test_xds_server_certificate(cfssl: CfsslProvider, cfssl_server: CfsslServer) -> None:
    request = xds_server_request(["meshcp.meshcp-system.svc"], [ip_address("127.0.0.1")])
    issued = await cfssl.issue(request)
    assert pem.dns_names(issued.certificate) == ["meshcp.meshcp-system.svc"]
    assert pem.ip_addresses(issued.certificate) == [ip_address("127.0.0.1")]
    # The cfssl profile, not the request, decides the lifetime (24h here, cfssl backdates a little).
    assert timedelta(hours=24) <= issued.lifetime <= timedelta(hours=24, minutes=10)
    roots = pem.load_certificates(cfssl_server.ca_pem)
    verifier = (
        PolicyBuilder()
        .store(Store(roots))
        .time(datetime.now(UTC))
        .build_server_verifier(x509.DNSName("meshcp.meshcp-system.svc"))
    )
    verifier.verify(issued.certificate, [])


@pytest.mark.parametrize("spec", [KeySpec.ECDSA_P256, KeySpec.RSA_2048])
async def test_key_is_generated_locally_with_the_requested_type(cfssl: CfsslProvider, spec: KeySpec) -> None:
    issued = await cfssl.issue(xds_server_request(["meshcp"], key_spec=spec))
    assert key_spec_of(load_private_key(issued.private_key_pem)) is spec


async def test_xds_client_certificate_verifies(cfssl: CfsslProvider) -> None:
    proxy = ProxyIdentity("0f8fad5b-d9cb-469f-a165-70867728950e", IDENTITY)
    issued = await cfssl.issue(xds_client_request(proxy))
    assert pem.dns_names(issued.certificate) == [proxy.name]
    identity = verify_xds_client(
        issued.certificate_pem, await cfssl.trust_bundle(), datetime.now(UTC), proxy.name
    )
    assert identity == proxy


async def test_workload_certificate_falls_back_to_the_dns_san_without_uri_support(
    cfssl: CfsslProvider, cfssl_server: CfsslServer, caplog: pytest.LogCaptureFixture
) -> None:
    request = workload_request(IDENTITY)
    if cfssl_server.version[:2] <= (1, 2):
        issued = await cfssl.issue(request)
        assert pem.uris(issued.certificate) == []  # cfssl 1.2.0 drops them
        assert pem.dns_names(issued.certificate) == ["bookbuyer.bookstore.cluster.local"]
        await cfssl.issue(request)
        warnings = [r for r in caplog.records if "drops URI SANs" in r.getMessage()]
        assert len(warnings) == 1  # said once, not per certificate
    else:
        issued = await cfssl.issue(request)
        assert pem.uris(issued.certificate) == ["spiffe://cluster.local/ns/bookstore/sa/bookbuyer"]
        assert pem.dns_names(issued.certificate) == ["bookbuyer.bookstore.cluster.local"]


async def test_policy_refusal_carries_cfssls_reason(cfssl_server: CfsslServer) -> None:
    async with CfsslProvider(cfssl_server.url, profile="restricted") as provider:
        with pytest.raises(CertificateError) as caught:
            await provider.issue(xds_server_request(["forbidden.example"]))
    message = str(caught.value)
    assert message.startswith("certificate provider 'cfssl': HTTP 400: ")
    assert "(code 5" in message, message  # cfssl policy errors are in the 5000 range
    assert not caught.value.retryable


async def test_profile_is_sent_and_honoured(cfssl_server: CfsslServer) -> None:
    async with CfsslProvider(cfssl_server.url, profile="restricted") as provider:
        issued = await provider.issue(xds_server_request(["allowed.example"]))
    assert timedelta(hours=1) <= issued.lifetime <= timedelta(hours=1, minutes=10)
