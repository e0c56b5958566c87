"""Fault injection: 1,000 hostile requests on the ADS port, while two proxies are connected.
Bytes that are not HTTP/2, HTTP/2 frames that are not valid, gRPC messages that are not
DiscoveryRequests, requests without a node, length prefixes announcing a gigabyte,
messages larger than the server takes, compressed messages, unknown methods. The server
refuses each (its connection or its stream, with a gRPC status), counts what reached the
ADS service and every connection closed before a stream, stays up, leaks no descriptor,
and the connected proxies keep being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpclib.client
import grpclib.const
import pytest

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from meshcp.xds.service import DELTA_PATH, MAX_REQUEST_BYTES, SERVICE, SOTW_PATH
from tests.factories import CDS, World
from tests.faults.figures import Stopwatch, record
from tests.faults.h2_probe import H2Probe, grpc_frame
from tests.support import eventually

STREAM = grpclib.const.Cardinality.STREAM_STREAM
#: How many of each, 1,000 in all.
COUNTS = {
    "raw bytes": 150,
    "bad frames": 150,
    "malformed": 400,
    "no node": 100,
    "oversized": 100,
    "compressed": 50,
    "unknown method": 50,
}
#: Of the oversized, how many really send more than the server takes (the others only
#: announce a gigabyte and stop).
REALLY_OVERSIZED = 5
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNIMPLEMENTED = 3, 8, 12


@pytest.fixture
async def runtime() -> AsyncIterator[ControllerRuntime]:
    settings = Settings(
        xds_address=Address("127.0.0.1", 0), http_address=Address("127.0.0.1", 0), xds_handshake_timeout=1.0
    )
    runtime = await ControllerRuntime.open(settings)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rejected(runtime: ControllerRuntime, reason: str) -> float:
    value = runtime.metrics.registry.get_sample_value("meshcp_xds_rejected_streams_total", {"reason": reason})
    return value or 0.0


def refused(runtime: ControllerRuntime, reason: str) -> float:
    labels = {"reason": reason}
    return runtime.metrics.registry.get_sample_value("meshcp_xds_refused_connections_total", labels) or 0.0


async def closed_by_server(port: int, data: bytes) -> bool:
    """Send `data` on a new connection; whether the server closed it (EOF within 10 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(10):
            while await reader.read(65_536):
                pass
        return True
    except ConnectionError:
        return True
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def in_batches(calls: list[Callable[[], Awaitable[Any]]], size: int = 50) -> list[Any]:
    results: list[Any] = []
    for start in range(0, len(calls), size):
        results += await asyncio.gather(*(call() for call in calls[start : start + size]))
    return results


async def test_a_thousand_hostile_requests(runtime: ControllerRuntime) -> None:
    rng = random.Random(15)
    port = runtime.xds.port
    world = World()
    runtime.cache.set_snapshot("healthy", world.snapshot())
    channel = grpclib.client.Channel("127.0.0.1", port)
    try:
        async with (
            channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as sotw,
            channel.request(DELTA_PATH, STREAM, DeltaDiscoveryRequest, DeltaDiscoveryResponse) as delta,
        ):
            await sotw.send_message(DiscoveryRequest(node=Node(id="healthy"), type_url=CDS))
            first = await sotw.recv_message()
            assert first is not None and len(first.resources) == 2
            await sotw.send_message(DiscoveryRequest(type_url=CDS, response_nonce=first.nonce))
            await delta.send_message(DeltaDiscoveryRequest(node=Node(id="healthy"), type_url=CDS))
            first_delta = await delta.recv_message()
            assert first_delta is not None and len(first_delta.resources) == 2
            await delta.send_message(DeltaDiscoveryRequest(type_url=CDS, response_nonce=first_delta.nonce))
            fds = open_fds()
            clock = Stopwatch()

            # Not HTTP/2 at all, and HTTP/2 frames that make no sense: the connection goes.
            raw = [
                lambda: closed_by_server(port, rng.randbytes(rng.randint(1, 4096)))
                for _ in range(COUNTS["raw bytes"])
            ]
            preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
            frames = [
                lambda: closed_by_server(port, preface + rng.randbytes(rng.randint(9, 4096)))
                for _ in range(COUNTS["bad frames"])
            ]
            assert all(await in_batches([*raw, *frames]))

            # gRPC streams with messages the ADS service must refuse, 100 per connection.
            not_a_request = [
                grpc_frame(rng.randbytes(rng.randint(1, 512))) for _ in range(COUNTS["malformed"])
            ]
            no_node = [grpc_frame(bytes(DiscoveryRequest(type_url=CDS)))] * COUNTS["no node"]
            huge = b"\x00" * (MAX_REQUEST_BYTES + 1)
            oversized = [grpc_frame(huge)] * REALLY_OVERSIZED + [grpc_frame(b"", length=2**30)] * (
                COUNTS["oversized"] - REALLY_OVERSIZED
            )
            compressed = [grpc_frame(b"\x0a\x00", compressed=True)] * COUNTS["compressed"]
            streams: list[tuple[str, bytes, str]] = [
                *((SOTW_PATH, body, f"grpc-status {INVALID_ARGUMENT}") for body in not_a_request[:200]),
                *((DELTA_PATH, body, f"grpc-status {INVALID_ARGUMENT}") for body in not_a_request[200:]),
                *((SOTW_PATH, body, f"grpc-status {INVALID_ARGUMENT}") for body in no_node),
                *((SOTW_PATH, body, f"grpc-status {RESOURCE_EXHAUSTED}") for body in oversized),
                *((DELTA_PATH, body, f"grpc-status {INVALID_ARGUMENT}") for body in compressed),
                *(
                    (SERVICE + "Nope", b"", f"grpc-status {UNIMPLEMENTED}")
                    for _ in range(COUNTS["unknown method"])
                ),
            ]
            outcomes: list[str] = []
            for start in range(0, len(streams), 100):
                probe = await H2Probe.open("127.0.0.1", port)
                try:
                    batch = streams[start : start + 100]
                    outcomes += await asyncio.gather(*(probe.call(path, body) for path, body, _ in batch))
                finally:
                    await probe.close()
            expected = [outcome for _, _, outcome in streams]
            assert [(i, o) for i, (o, e) in enumerate(zip(outcomes, expected, strict=True)) if o != e] == []
            record("1,000 hostile requests on the ADS port", "to refuse them all", clock())

            # Counted by reason; nothing left open.
            malformed = COUNTS["malformed"] + COUNTS["compressed"]
            assert (
                rejected(runtime, "malformed") + rejected(runtime, "no_node") == malformed + COUNTS["no node"]
            )
            assert rejected(runtime, "no_node") >= COUNTS["no node"]
            assert rejected(runtime, "oversized") == COUNTS["oversized"]
            closed = refused(runtime, "protocol_error") + refused(runtime, "no_stream")
            assert closed == COUNTS["raw bytes"] + COUNTS["bad frames"]

            async def no_leak() -> bool:
                return open_fds() <= fds and len(runtime.proxies) == 2

            await eventually(
                no_leak, 10, "descriptors and streams back to the two proxies", lambda: str(open_fds())
            )

            # The two proxies were never disturbed: the next change reaches both.
            world.clusters["c"] = 0
            runtime.cache.set_snapshot("healthy", world.snapshot())
            update = await sotw.recv_message()
            assert update is not None and len(update.resources) == 3
            delta_update = await delta.recv_message()
            assert delta_update is not None and [r.name for r in delta_update.resources] == ["c"]
            await sotw.end()
            await delta.end()
    finally:
        channel.close()
