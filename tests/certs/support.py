"""Test doubles shared by the certificate tests: a settable clock, a recording sleep,
a counting provider and a scripted HTTP server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiohttp import web

from meshcp.certs.provider import CertificateProvider, CertificateRequest, IssuedCertificate

START = datetime(2030, 1, 1, tzinfo=UTC)


class FakeClock:
    """A wall clock that moves only when told to."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class RecordingSleep:
    """An injectable sleep that returns at once, records the delays and may move a clock."""

    clock: FakeClock | None = None
    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.clock is not None:
            self.clock.advance(timedelta(seconds=seconds))
        await asyncio.sleep(0)


class CountingProvider:
    """Wraps a provider, counts issuances and can hold them until released or fail them."""

    def __init__(self, inner: CertificateProvider) -> None:
        self.inner = inner
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.failures: list[BaseException] = []

    @property
    def name(self) -> str:
        return "counting"

    async def issue(self, request: CertificateRequest) -> IssuedCertificate:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        return await self.inner.issue(request)

    async def trust_bundle(self) -> str:
        return await self.inner.trust_bundle()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LoopbackServer:
    """An aiohttp application served on 127.0.0.1 for the duration of a test."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._runner = web.AppRunner(app)
        self.url = ""

    async def start(self, port: int = 0) -> str:
        """Listen (again, after `stop`: on `port`, the one it had, to come back where
        clients look for it)."""
        if self._runner.server is not None or self.url:
            self._runner = web.AppRunner(self._app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        await self._runner.cleanup()


async def wait_until(condition: Callable[[], bool], *, steps: int = 1000) -> None:
    """Let other tasks run until `condition` holds (event-loop turns, no wall-clock sleep)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")
