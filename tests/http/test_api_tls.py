"""`meshcp serve --api-tls-cert/--api-tls-key`: the controller's HTTP endpoint also over
TLS (`meshcp.http.api_tls`), as the Kubernetes API aggregator calls the TrafficMetrics
API: the same routes, a certificate checked against the CA the APIService names."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from meshcp.certs import InternalCA, MemoryStore
from meshcp.certs.issuance import xds_server_request
from meshcp.cli.options import UsageError, controller_settings
from meshcp.cli.parser import build_parser
from meshcp.runtime.controller import ControllerRuntime, ListenError
from meshcp.runtime.settings import Address

SERVICE_NAME = "meshcp-controller.meshcp-system.svc"

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bookstore"


async def _files(tmp_path: Path) -> tuple[Path, Path, ssl.SSLContext]:
    ca = await InternalCA.open(MemoryStore())
    issued = await ca.issue(xds_server_request([SERVICE_NAME, "localhost"]))
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_text(issued.chain_pem)
    key.write_text(issued.private_key_pem)
    return cert, key, ssl.create_default_context(cadata=await ca.trust_bundle())


async def test_the_api_is_served_over_tls(tmp_path: Path) -> None:
    cert, key, trust = await _files(tmp_path)
    settings = controller_settings(
        build_parser().parse_args(
            [
                "serve",
                f"--source={EXAMPLE}",
                "--http-address=127.0.0.1:0",
                "--debug-address=127.0.0.1:0",
                "--xds-address=127.0.0.1:0",
                "--insecure-xds",
                "--api-address=127.0.0.1:0",
                f"--api-tls-cert={cert}",
                f"--api-tls-key={key}",
                f"--state-dir={tmp_path / 'state'}",
            ]
        )
    )
    assert (settings.api_tls_cert, settings.api_tls_key) == (cert, key)
    assert settings.api_address == Address("127.0.0.1", 0)
    runtime = await ControllerRuntime.open(settings)
    await runtime.start()
    try:
        assert runtime.https is not None
        url = f"https://localhost:{runtime.https.port}/apis/metrics.smi-spec.io/v1alpha1"
        async with aiohttp.ClientSession() as session:
            async with session.get(url, ssl=trust) as reply:
                assert reply.status == 200
                assert (await reply.json())["kind"] == "APIResourceList"
            # Without Prometheus the metrics answer 503, over TLS as over plaintext.
            async with session.get(url + "/namespaces", ssl=trust) as reply:
                assert reply.status == 503
            # A client that does not trust the CA is refused.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(url, ssl=ssl.create_default_context())
    finally:
        await runtime.close()


async def test_no_tls_files_no_https_listener() -> None:
    settings = controller_settings(build_parser().parse_args(["serve", f"--source={EXAMPLE}"]))
    assert settings.api_tls_cert is None
    runtime = await ControllerRuntime.open(settings)
    try:
        assert runtime.https is None
    finally:
        await runtime.close()


async def test_unloadable_tls_files_are_a_listen_error(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    args = [
        "serve",
        f"--source={EXAMPLE}",
        "--http-address=127.0.0.1:0",
        "--debug-address=127.0.0.1:0",
        "--xds-address=127.0.0.1:0",
        "--insecure-xds",
        "--api-address=127.0.0.1:0",
        f"--api-tls-cert={tmp_path / 'tls.crt'}",
        f"--api-tls-key={tmp_path / 'tls.key'}",
        f"--state-dir={tmp_path / 'state'}",
    ]
    runtime = await ControllerRuntime.open(controller_settings(build_parser().parse_args(args)))
    try:
        with pytest.raises(ListenError, match=r"cannot listen for HTTPS on 127\.0\.0\.1:0"):
            await runtime.start()
    finally:
        await runtime.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api-tls-cert=/nonexistent.crt"], "--api-tls-cert and --api-tls-key go together"),
        (["--api-address=nowhere"], "'nowhere' is not HOST:PORT"),
    ],
)
def test_bad_tls_options_are_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        controller_settings(build_parser().parse_args(["serve", f"--source={EXAMPLE}", *args]))
