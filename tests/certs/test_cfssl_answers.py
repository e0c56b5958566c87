"""How the cfssl client reads answers a healthy cfssl never gives (a stub on loopback)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from meshcp.certs.external.cfssl import CfsslProvider
from meshcp.certs.issuance import xds_server_request
from meshcp.certs.provider import CertificateError

from .support import LoopbackServer

REQUEST = xds_server_request(["meshcp"])


class Stub:
    def __init__(self) -> None:
        self.status = 200
        self.body = b"{}"
        self.received: list[dict[str, object]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(json.loads(await request.read()))
        return web.Response(status=self.status, body=self.body, content_type="application/json")


@pytest.fixture
async def stub() -> AsyncIterator[tuple[Stub, str]]:
    stub = Stub()
    app = web.Application()
    app.router.add_post("/api/v1/cfssl/sign", stub.handle)
    app.router.add_post("/api/v1/cfssl/info", stub.handle)
    server = LoopbackServer(app)
    url = await server.start()
    yield stub, url
    await server.stop()


@pytest.mark.parametrize(
    ("status", "body", "message", "retryable"),
    [
        (500, b'{"errors":[{"code":1000,"message":"boom"}]}', "HTTP 500: boom (code 1000)", True),
        (503, b"service unavailable", "HTTP 503: service unavailable", True),
        (400, b'{"success":false,"errors":[]}', "HTTP 400: request failed without an error message", False),
        (200, b"<html>", "malformed response (not JSON): '<html>'", False),
        (200, b"[]", "malformed response: expected a JSON object", False),
        (200, b'{"success":true,"result":null}', "malformed response: result is missing", False),
        (200, b'{"success":true,"result":{}}', "malformed response: result.certificate is missing", False),
        (200, b'{"success":true,"result":{"certificate":"x"}}', "unusable certificate", False),
    ],
)  # fmt: skip
async def test_bad_answers_become_certificate_errors(
    stub: tuple[Stub, str], status: int, body: bytes, message: str, retryable: bool
) -> None:
    server, url = stub
    server.status, server.body = status, body
    async with CfsslProvider(url) as provider:
        with pytest.raises(CertificateError) as caught:
            await provider.issue(REQUEST)
    assert str(caught.value).startswith("certificate provider 'cfssl': ")
    assert message in str(caught.value)
    assert caught.value.retryable is retryable


async def test_only_a_csr_leaves_the_process(stub: tuple[Stub, str]) -> None:
    server, url = stub
    server.body = b'{"success":true,"result":{}}'
    provider = CfsslProvider(url, profile="mesh", label="primary")
    try:
        with pytest.raises(CertificateError, match=r"result\.certificate is missing"):
            await provider.issue(REQUEST)
    finally:
        await provider.aclose()
    (sent,) = server.received
    assert set(sent) == {"certificate_request", "profile", "label"}
    assert (sent["profile"], sent["label"]) == ("mesh", "primary")
    assert str(sent["certificate_request"]).startswith("-----BEGIN CERTIFICATE REQUEST-----")
    assert "PRIVATE" not in json.dumps(sent)
