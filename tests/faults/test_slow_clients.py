"""Fault injection: slow-loris clients (headers trickled a byte at a time, never finished)
and garbage bytes on the controller's HTTP endpoint and on the injector's HTTPS port.
Other requests are served meanwhile, garbage is answered or dropped at once, and every
slow connection is closed by the server once it has gone `IDLE` seconds without a complete
request (2 s here, 15 s in production; aiohttp's own default was an hour, a descriptor held that long).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import kmock
import pytest

from meshcp.certs import InternalCA, Issuer, MemoryStore
from meshcp.injector.admission import ISSUE_RETRY, Injector
from meshcp.injector.app import MUTATE_PATH, create_app
from meshcp.injector.kube import KubeCluster
from meshcp.injector.metrics import InjectorMetrics
from meshcp.injector.server import InjectorServer
from meshcp.injector.tls_reload import ReloadingTls
from meshcp.model.meshconfig import MESH_LABEL
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from tests.faults.figures import Stopwatch, record
from tests.injector.conftest import SERVER_NAME, TEMPLATE, FakeApi, serving_pair, write_pair
from tests.injector.reviews import MESH_NAMESPACE, bare_pod, review
from tests.support import eventually

#: The idle timeout of the servers under test (seconds).
IDLE = 2.0
SLOW, GARBAGE, SERVED = 50, 50, 20

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


async def slow_loris(connect: Connect, opened: list[float], closed: list[float], clock: Stopwatch) -> None:
    """Start a request and trickle its headers, a byte every 0.1 s, until the server hangs
    up; when it started goes to `opened`, when the server hung up to `closed`."""
    reader, writer = await connect()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: meshcp\r\n")
        opened.append(clock())
        header = b"X-Slow: " + b"z" * 10_000
        for byte in header:
            writer.write(bytes((byte,)))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    if not await reader.read(1):
                        break
        closed.append(clock())
    except (ConnectionError, ssl.SSLError):
        closed.append(clock())
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def garbage(host: str, port: int, data: bytes) -> bytes:
    """Send `data`; what the server answered before closing (within 10 s)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        answer = b""
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while chunk := await reader.read(65_536):
                    answer += chunk
        return answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def under_attack(
    connect: Connect, port: int, served: Callable[[], Awaitable[bool]], fault: str
) -> list[bytes]:
    """SLOW slow-loris connections and GARBAGE connections of random bytes while SERVED
    requests are made; every slow connection must be closed by the server."""
    rng = random.Random(15)
    clock = Stopwatch()
    opened: list[float] = []
    closed: list[float] = []
    slow = [asyncio.create_task(slow_loris(connect, opened, closed, clock)) for _ in range(SLOW)]
    try:

        async def all_opened() -> bool:
            return len(opened) == SLOW

        await eventually(all_opened, 10, "the slow connections to start")
        results = await asyncio.gather(*(served() for _ in range(SERVED)))
        assert results == [True] * SERVED
        assert len(closed) < SLOW  # served while slow connections were still trickling
        answers = await asyncio.gather(
            *(
                garbage("127.0.0.1", port, rng.randbytes(rng.randint(1, 2048)) + b"\r\n\r\n")
                for _ in range(GARBAGE)
            )
        )

        async def all_closed() -> bool:
            return len(closed) == SLOW

        await eventually(
            all_closed, 30, "the server to close every slow connection", lambda: f"{len(closed)}/{SLOW}"
        )
        record(fault, f"slow-loris connections closed (idle timeout {IDLE:g} s), last after", max(closed))
        return answers
    finally:
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)


async def test_slow_and_garbage_clients_on_the_http_endpoint() -> None:
    settings = Settings(
        xds_address=Address("127.0.0.1", 0), http_address=Address("127.0.0.1", 0), http_idle_timeout=IDLE
    )
    runtime = await ControllerRuntime.open(settings)
    await runtime.start()
    try:
        port = runtime.http.port

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", port)

        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as http:

            async def served() -> bool:
                async with http.get("/metrics") as reply:
                    return reply.status == 200 and "meshcp_build_info" in await reply.text()

            answers = await under_attack(connect, port, served, "slow-loris and garbage on the HTTP endpoint")
        # garbage is refused at once with 400, never left open
        assert [answer[:40] for answer in answers if not answer.startswith(b"HTTP/1.0 400 Bad Request")] == []
    finally:
        await runtime.stop()


@pytest.fixture
async def injector(tmp_path: Path) -> AsyncIterator[tuple[int, ssl.SSLContext]]:
    """A running webhook (kmock as the Kubernetes API, the internal CA in memory) with the
    idle timeout under test; its port and the TLS context the API server would use."""
    ca = await InternalCA.open(MemoryStore())
    cert, key = write_pair(tmp_path, await serving_pair(ca))
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator):
        api = FakeApi(emulator)
        api.add_namespace(MESH_NAMESPACE, {MESH_LABEL: "meshcp"})
        metrics = InjectorMetrics()
        tls = ReloadingTls(cert, key, on_reload=metrics.tls_reloaded)
        async with KubeCluster.connect(configuration=api.configuration()) as cluster:
            service = Injector(cluster, Issuer(ca, ISSUE_RETRY), TEMPLATE, ca.trust_bundle)
            server = InjectorServer(create_app(service, metrics), idle_timeout=IDLE)
            await server.start("127.0.0.1", 0, tls.context)
            try:
                yield server.port, ssl.create_default_context(cadata=await ca.trust_bundle())
            finally:
                await server.stop()


async def test_slow_and_garbage_clients_on_the_injector(injector: tuple[int, ssl.SSLContext]) -> None:
    port, client_tls = injector

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port, ssl=client_tls, server_hostname=SERVER_NAME)

    async with aiohttp.ClientSession() as http:

        async def served() -> bool:
            async with http.post(
                f"https://127.0.0.1:{port}{MUTATE_PATH}",
                json=review(bare_pod()),
                ssl=client_tls,
                server_hostname=SERVER_NAME,
            ) as reply:
                answer = await reply.json()
                return reply.status == 200 and answer["response"]["allowed"] is True

        answers = await under_attack(connect, port, served, "slow-loris and garbage on the injector (HTTPS)")
    # not TLS: the handshake fails and the connection is closed without an answer
    assert answers == [b""] * GARBAGE
