"""Fault injection: the CA backend down while workload certificates are renewed, under a
running controller with a proxy connected. A real `cfssl serve` is stopped for longer
than one issuance retries (the renewal fails for good, is retried later); the Vault fake
goes away for less (the issuance's own retries ride it out). Each time the proxy keeps
the certificate it holds (valid, trusted), metrics and the log say what happens, and once
the CA is back the renewed certificate reaches the proxy.

Renewals are started with `renew_all` (what a root rotation does, and the same path as a
certificate coming due) rather than by waiting for a certificate's renewal time; retries
are scaled down (`RETRY`, `RENEW_RETRY`; production: 5 attempts from 0.5 s, then 30 s).
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from meshcp.certs.issuer import RetryPolicy
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from tests.certs.fake_vault import FakeVault
from tests.faults.figures import Stopwatch, record
from tests.faults.sds_proxy import SdsProxy
from tests.faults.test_controller_parts import EXAMPLE
from tests.support import eventually, free_port, required_binary

RETRY = RetryPolicy(attempts=3, initial_delay=0.1, max_delay=0.2, attempt_timeout=2.0)
RENEW_RETRY = timedelta(seconds=0.5)
USAGES = ["signing", "key encipherment", "server auth", "client auth"]


class Cfssl:
    """`cfssl serve` with its own CA, stopped and started again on one port."""

    def __init__(self, directory: Path) -> None:
        self.binary = required_binary("cfssl", "golang-cfssl")
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: asyncio.subprocess.Process | None = None
        (directory / "csr.json").write_text(
            json.dumps({"CN": "faults root", "key": {"algo": "ecdsa", "size": 256}})
        )
        made = subprocess.run(
            [self.binary, "gencert", "-initca", str(directory / "csr.json")], capture_output=True, check=True
        )
        ca = json.loads(made.stdout)
        (directory / "ca.pem").write_text(ca["cert"])
        (directory / "ca-key.pem").write_text(ca["key"])
        config = {"signing": {"default": {"expiry": "24h", "usages": USAGES}}}
        (directory / "config.json").write_text(json.dumps(config))

    async def start(self) -> None:
        d = self.directory
        with (d / "serve.log").open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                self.binary, "serve", "-address", "127.0.0.1", "-port", str(self.port),
                "-ca", str(d / "ca.pem"), "-ca-key", str(d / "ca-key.pem"),
                "-config", str(d / "config.json"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

        async def answers() -> bool:
            assert self._process is not None and self._process.returncode is None, (
                d / "serve.log"
            ).read_text()
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{self.url}/api/v1/cfssl/info", json={}) as reply,
            ):
                return reply.status == 200

        await eventually(answers, 30, "cfssl serve to answer")

    async def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            await self._process.wait()
            self._process = None


@pytest.fixture
async def cfssl(tmp_path: Path) -> AsyncIterator[Cfssl]:
    server = Cfssl(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def controller_with_a_proxy(
    settings: Settings, retry: RetryPolicy = RETRY
) -> AsyncIterator[tuple[ControllerRuntime, SdsProxy]]:
    """A controller on the bookstore example with one proxy holding a usable certificate."""
    settings.xds_address = settings.http_address = Address("127.0.0.1", 0)
    settings.source = EXAMPLE
    settings.ca.issue_retry, settings.ca.renew_retry = retry, RENEW_RETRY
    classes: list[str] = []
    runtime = await ControllerRuntime.open(settings, classify=lambda node, identity: classes[0])
    async with runtime:

        async def published() -> bool:
            return runtime.readiness.ready and bool(runtime.cache.keys())

        await eventually(published, 20, "the first round's snapshots")
        classes.append(runtime.cache.keys()[0])
        async with SdsProxy(runtime.xds.port, "prober") as proxy:

            async def usable() -> bool:
                return proxy.usable()

            await eventually(usable, 20, "the proxy's certificate")
            yield runtime, proxy


def counted(runtime: ControllerRuntime, metric: str, provider: str) -> float:
    return runtime.metrics.registry.get_sample_value(metric, {"provider": provider}) or 0.0


async def renewed(proxy: SdsProxy, serial: int) -> bool:
    leaf = proxy.certificate()
    return leaf is not None and leaf.serial_number != serial and proxy.usable()


async def test_cfssl_down_longer_than_the_retries(cfssl: Cfssl, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings()
    settings.ca.provider, settings.ca.cfssl_url = "cfssl", cfssl.url
    async with controller_with_a_proxy(settings) as (runtime, proxy):
        held = proxy.certificate()
        assert held is not None
        await cfssl.stop()
        with caplog.at_level(logging.WARNING):
            report = await runtime.certificates.renew_all()
            assert report.failed and not report.renewed
            # the old certificate is still in service, and still what the proxy holds
            assert proxy.certificate() == held and proxy.usable()
            assert counted(runtime, "meshcp_certificate_issue_failures_total", "cfssl") >= len(report.failed)
            assert counted(runtime, "meshcp_certificate_issue_retries_total", "cfssl") >= 2 * len(
                report.failed
            )

            async def retried_later() -> bool:  # the renewal loop tries again on its own
                return "could not renew the certificate for" in caplog.text

            await eventually(retried_later, 10, "the renewal loop to retry")
        assert f"cannot reach {cfssl.url}" in caplog.text
        assert "(gave up after 3 attempts)" in caplog.text
        assert runtime.readiness.ready and proxy.certificate() == held
        clock = Stopwatch()
        await cfssl.start()
        await eventually(lambda: renewed(proxy, held.serial_number), 20, "the renewed certificate")
        record(
            "cfssl down during a renewal (longer than the retries)",
            "renewed certificate at the proxy",
            clock(),
        )


async def test_vault_down_shorter_than_the_retries() -> None:
    vault = FakeVault()
    url = await vault.start()
    port = int(url.rsplit(":", 1)[1])
    settings = Settings()
    settings.ca.provider, settings.ca.vault_address, settings.ca.vault_token = "vault", url, vault.token
    settings.ca.vault_role = "mesh"
    # up to 2.7 s of back-off: the outage below is shorter
    patient = RetryPolicy(attempts=8, initial_delay=0.1, max_delay=0.5, attempt_timeout=2.0)
    try:
        async with controller_with_a_proxy(settings, patient) as (runtime, proxy):
            held = proxy.certificate()
            assert held is not None
            await vault.stop()
            renewing = asyncio.create_task(runtime.certificates.renew_all())

            async def retrying() -> bool:
                return counted(runtime, "meshcp_certificate_issue_retries_total", "vault") >= 2

            await eventually(retrying, 10, "the issuance to retry")
            assert proxy.certificate() == held and proxy.usable()
            clock = Stopwatch()
            await vault.start(port)
            report = await renewing
            assert report.renewed and not report.failed
            assert counted(runtime, "meshcp_certificate_issue_failures_total", "vault") == 0
            await eventually(lambda: renewed(proxy, held.serial_number), 20, "the renewed certificate")
            record(
                "Vault down during a renewal (shorter than the retries)",
                "renewed certificate at the proxy",
                clock(),
            )
    finally:
        await vault.stop()
