"""The cert-manager provider against kmock's emulator of the API server (real HTTP), with a
test signer playing cert-manager: it signs each new CertificateRequest with a real CA."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Any, cast

import aiohttp.web
import attrs
import kmock
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store
from kubernetes_asyncio.client import ApiClient, Configuration

from meshcp.certs import pem
from meshcp.certs.authority import Root, create_root
from meshcp.certs.cert_manager import USAGES, CertManagerProvider, go_duration
from meshcp.certs.keys import KeySpec
from meshcp.certs.provider import CertificateError, CertificateRequest
from tests.support import free_port

RESOURCE = "cert-manager.io/v1/certificaterequests"
NAMESPACE = "mesh-system"
TIMEOUT = 10.0
REQUEST = CertificateRequest(
    common_name="bookbuyer.bookstore",
    dns_names=("bookbuyer.bookstore.svc.cluster.local",),
    uris=("spiffe://cluster.local/ns/bookstore/sa/bookbuyer",),
    ip_addresses=(ip_address("10.0.0.7"),),
    validity=timedelta(hours=2),
)
Key = tuple[Any, str | None, str]


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """Tells `created` the key of every object a POST created, once it is stored."""

    created: asyncio.Queue[Key] = attrs.field(factory=asyncio.Queue, init=False)
    #: When set, every request is answered with this Status (as an API server refusing).
    refusal: dict[str, Any] | None = attrs.field(default=None, init=False)
    #: Set on every GET.
    polled: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if self.refusal is not None:
            return aiohttp.web.json_response(self.refusal, status=self.refusal["code"])
        before = {key for key, obj in self.objects.items() if not obj.deleted}
        response = await super().__call__(raw_request)
        if raw_request.method == "GET":
            self.polled.set()
        if raw_request.method == "POST":
            for key, obj in self.objects.items():
                if not obj.deleted and key not in before:
                    self.created.put_nowait(key)
        return response


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator() as k, kmock.Server(k):
        k.resources[RESOURCE] = cast(kmock.ResourceDict, {})
        yield k


@pytest.fixture
def root() -> Root:
    return create_root(KeySpec.ECDSA_P256, datetime.now(UTC))


def b64(text: str) -> str:
    return base64.b64encode(text.encode("ascii")).decode("ascii")


def sign_csr(root: Root, csr_pem: str, duration: timedelta) -> str:
    csr = x509.load_pem_x509_csr(csr_pem.encode("ascii"))
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(root.certificate.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + duration)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(sans, critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.private_key.public_key()), critical=False
        )
        .sign(root.private_key, hashes.SHA256())
    )
    return pem.to_pem([certificate])


Reply = Callable[[dict[str, Any]], dict[str, Any]]


async def signer(k: Emulator, reply: Reply, seen: list[dict[str, Any]]) -> None:
    """Plays cert-manager: sets the status of each new CertificateRequest to `reply(object)`."""
    while True:
        key = await k.created.get()
        obj = k.objects[key]
        seen.append(dict(obj))
        obj["status"] = reply(dict(obj))


async def run_with_signer(
    k: Emulator, reply: Reply, action: Awaitable[Any]
) -> tuple[Any, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    task = asyncio.create_task(signer(k, reply, seen))
    try:
        async with asyncio.timeout(TIMEOUT):
            return await action, seen
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def provider(k: Emulator, **kwargs: Any) -> CertManagerProvider:
    kwargs.setdefault("poll_interval", 0.02)
    return CertManagerProvider(
        lambda: ApiClient(Configuration(host=str(k.url))),
        namespace=NAMESPACE,
        issuer_name="mesh-ca",
        issuer_kind="ClusterIssuer",
        **kwargs,
    )


def ready(root: Root) -> Reply:
    def reply(obj: dict[str, Any]) -> dict[str, Any]:
        csr_pem = base64.b64decode(obj["spec"]["request"]).decode("ascii")
        chain = sign_csr(root, csr_pem, timedelta(hours=2))
        return {
            "conditions": [{"type": "Ready", "status": "True", "reason": "Issued", "message": "ok"}],
            "certificate": b64(chain),
            "ca": b64(root.pem),
        }

    return reply


def deleted(k: Emulator, name: str) -> bool:
    return bool(k.objects[RESOURCE, NAMESPACE, name].deleted)


async def test_issues_through_a_certificate_request(emulator: Emulator, root: Root) -> None:
    async with provider(emulator) as certs:
        with pytest.raises(CertificateError, match="no trust bundle yet"):
            await certs.trust_bundle()
        issued, seen = await run_with_signer(emulator, ready(root), certs.issue(REQUEST))
        bundle = await certs.trust_bundle()

    [obj] = seen
    name = obj["metadata"]["name"]
    assert name.startswith("meshcp-")
    assert obj["apiVersion"] == "cert-manager.io/v1"
    assert obj["kind"] == "CertificateRequest"
    spec = obj["spec"]
    assert spec["issuerRef"] == {"name": "mesh-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert spec["duration"] == "2h0m0s"
    assert spec["usages"] == list(USAGES)
    csr = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
    assert csr.is_signature_valid
    assert deleted(emulator, name), "the CertificateRequest is deleted once signed"

    assert pem.dns_names(issued.certificate) == list(REQUEST.dns_names)
    assert pem.uris(issued.certificate) == list(REQUEST.uris)
    assert pem.ip_addresses(issued.certificate) == list(REQUEST.ip_addresses)
    assert bundle == root.pem
    store = Store(pem.load_certificates(bundle))
    verifier = PolicyBuilder().store(store).build_client_verifier()
    verified = verifier.verify(issued.certificate, [])
    assert verified.chain[-1] == root.certificate


async def test_a_denied_request_is_reported_and_not_retried(emulator: Emulator, root: Root) -> None:
    def deny(obj: dict[str, Any]) -> dict[str, Any]:
        message = "the approver refused the SPIFFE ID"
        return {
            "conditions": [
                {"type": "Denied", "status": "True", "reason": "PolicyDenied", "message": message},
                {"type": "Ready", "status": "False", "reason": "Denied", "message": "denied"},
            ]
        }

    async with provider(emulator, trust_bundle_pem=root.pem) as certs:
        with pytest.raises(CertificateError) as caught:
            await run_with_signer(emulator, deny, certs.issue(REQUEST))
        assert await certs.trust_bundle() == root.pem

    error = caught.value
    assert not error.retryable
    assert "was denied: the approver refused the SPIFFE ID (reason PolicyDenied)" in error.message
    [(_, namespace, name)] = [key for key in emulator.objects if key[0] == RESOURCE]
    assert f"CertificateRequest {namespace}/{name}" in error.message
    assert deleted(emulator, name)


async def test_a_failed_request_is_reported(emulator: Emulator) -> None:
    def fail(obj: dict[str, Any]) -> dict[str, Any]:
        message = "Vault returned 503"
        return {"conditions": [{"type": "Ready", "status": "False", "reason": "Failed", "message": message}]}

    async with provider(emulator) as certs:
        with pytest.raises(CertificateError, match=r"failed: Vault returned 503 \(reason Failed\)") as caught:
            await run_with_signer(emulator, fail, certs.issue(REQUEST))
    assert caught.value.retryable


async def test_pending_requests_are_waited_for(emulator: Emulator, root: Root) -> None:
    """Ready=False with a reason other than Failed (Pending) is not an answer yet."""
    pending = {"conditions": [{"type": "Ready", "status": "False", "reason": "Pending", "message": "..."}]}
    async with provider(emulator) as certs, asyncio.timeout(TIMEOUT):
        task = asyncio.create_task(certs.issue(REQUEST))
        key = await emulator.created.get()
        emulator.objects[key]["status"] = pending
        for _ in range(2):  # the provider has read the pending status at least once
            emulator.polled.clear()
            await emulator.polled.wait()
        assert not task.done()
        emulator.objects[key]["status"] = ready(root)(dict(emulator.objects[key]))
        issued = await task
    assert pem.uris(issued.certificate) == list(REQUEST.uris)


async def test_nobody_signing_times_out_retryably(emulator: Emulator) -> None:
    async with provider(emulator, timeout=0.3) as certs:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(CertificateError, match=r"was not signed within 0.3s") as caught:
                await certs.issue(REQUEST)
    assert caught.value.retryable
    [(_, _, name)] = [key for key in emulator.objects if key[0] == RESOURCE]
    assert deleted(emulator, name)


async def test_an_unreachable_api_is_a_clear_retryable_error() -> None:
    host = f"http://127.0.0.1:{free_port()}"
    api = ApiClient(Configuration(host=host))
    try:
        certs = CertManagerProvider(api, namespace=NAMESPACE, issuer_name="mesh-ca", timeout=5.0)
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(CertificateError) as caught:
                await certs.issue(REQUEST)
    finally:
        await api.close()
    assert caught.value.retryable
    assert "cannot create CertificateRequest mesh-system/meshcp-" in caught.value.message
    assert f"the Kubernetes API at {host} is unreachable" in caught.value.message


async def test_a_refusal_by_the_api_is_not_retryable(emulator: Emulator) -> None:
    message = 'certificaterequests.cert-manager.io is forbidden: User "meshcp" cannot create'
    emulator.refusal = {"kind": "Status", "code": 403, "reason": "Forbidden", "message": message}
    async with provider(emulator) as certs, asyncio.timeout(TIMEOUT):
        with pytest.raises(CertificateError) as caught:
            await certs.issue(REQUEST)
    assert not caught.value.retryable
    assert "cannot create CertificateRequest mesh-system/meshcp-" in caught.value.message
    assert f"403 Forbidden: {message}" in caught.value.message


def test_durations_are_go_durations() -> None:
    assert go_duration(timedelta(hours=24)) == "24h0m0s"
    assert go_duration(timedelta(minutes=90, seconds=5)) == "1h30m5s"
