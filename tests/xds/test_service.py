"""The ADS server over real gRPC on loopback: streams, gates, refusals, limits, shutdown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpclib.client
import grpclib.const
import pytest
from grpclib.exceptions import GRPCError, StreamTerminatedError

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import (
    DeltaDiscoveryRequest,
    DeltaDiscoveryResponse,
    DiscoveryRequest,
    DiscoveryResponse,
)
from meshcp.cache import Snapshot
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from meshcp.telemetry.readiness import Readiness
from meshcp.xds.auth import PeerCertificate, StreamRejected
from meshcp.xds.send_budget import SendBudget
from meshcp.xds.service import DELTA_PATH, SOTW_PATH, _Pusher
from meshcp.xds.sotw import SotwProtocol
from tests.factories import CDS, EDS, World

STREAM = grpclib.const.Cardinality.STREAM_STREAM


async def eventually(predicate: Any, within: float = 5.0, what: Any = None) -> None:
    """Poll `predicate` on the loop until it is true (no fixed sleeps)."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached in time ({what() if what else ''})")
        await asyncio.sleep(0.005)


def _settings() -> Settings:
    return Settings(xds_address=Address("127.0.0.1", 0), http_address=Address("127.0.0.1", 0))


@pytest.fixture
async def runtime() -> AsyncIterator[ControllerRuntime]:
    runtime = await ControllerRuntime.open(_settings())
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


@pytest.fixture
async def channel(runtime: ControllerRuntime) -> AsyncIterator[grpclib.client.Channel]:
    channel = grpclib.client.Channel("127.0.0.1", runtime.xds.port)
    try:
        yield channel
    finally:
        channel.close()


def http_client(runtime: ControllerRuntime, *, debug: bool = False) -> aiohttp.ClientSession:
    port = runtime.debug_http.port if debug else runtime.http.port
    return aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}")


def sample(runtime: ControllerRuntime, name: str, labels: dict[str, str]) -> float:
    return runtime.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_sotw_stream_subscribes_acks_and_receives_changes(
    runtime: ControllerRuntime, channel: grpclib.client.Channel
) -> None:
    world = World()
    runtime.cache.set_snapshot("n1", world.snapshot())
    async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
        await stream.send_message(DiscoveryRequest(node=Node(id="n1"), type_url=CDS))
        first = await stream.recv_message()
        assert first is not None
        assert {p.unpack().name for p in first.resources} == {"a", "b"}  # type: ignore[union-attr]
        await stream.send_message(
            DiscoveryRequest(type_url=CDS, response_nonce=first.nonce, version_info=first.version_info)
        )
        await eventually(lambda: sample(runtime, "meshcp_xds_acks_total", {"type": "cds"}) == 1)
        world.clusters["z"] = 0
        runtime.cache.set_snapshot("n1", world.snapshot())
        second = await stream.recv_message()
        assert second is not None
        assert {p.unpack().name for p in second.resources} == {"a", "b", "z"}  # type: ignore[union-attr]
        await stream.end()
    await eventually(lambda: len(runtime.proxies) == 0)


async def test_stale_nonce_gets_no_response_on_the_wire(
    runtime: ControllerRuntime, channel: grpclib.client.Channel
) -> None:
    world = World()
    runtime.cache.set_snapshot("n1", world.snapshot())
    async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
        await stream.send_message(DiscoveryRequest(node=Node(id="n1"), type_url=CDS))
        first = await stream.recv_message()
        assert first is not None
        await stream.send_message(DiscoveryRequest(type_url=CDS, response_nonce="not-a-nonce-we-sent"))
        # A probe that must be answered: if the stale request had been answered, that
        # response would arrive first.
        await stream.send_message(DiscoveryRequest(type_url=EDS, resource_names=["a"]))
        probe = await stream.recv_message()
        assert probe is not None
        assert probe.type_url == EDS
        assert sample(runtime, "meshcp_xds_stale_requests_total", {"type": "cds"}) == 1
        await stream.end()


async def test_delta_stream_over_the_wire(
    runtime: ControllerRuntime, channel: grpclib.client.Channel
) -> None:
    world = World()
    runtime.cache.set_snapshot("d1", world.snapshot())
    async with channel.request(DELTA_PATH, STREAM, DeltaDiscoveryRequest, DeltaDiscoveryResponse) as stream:
        await stream.send_message(
            DeltaDiscoveryRequest(node=Node(id="d1"), type_url=EDS, resource_names_subscribe=["a", "missing"])
        )
        response = await stream.recv_message()
        assert response is not None
        assert [r.name for r in response.resources] == ["a"]
        await stream.send_message(DeltaDiscoveryRequest(type_url=EDS, response_nonce=response.nonce))
        removed = await stream.recv_message()
        assert removed is not None
        assert removed.removed_resources == ["missing"]
        await stream.end()


async def test_first_request_without_node_is_refused(
    channel: grpclib.client.Channel, runtime: ControllerRuntime
) -> None:
    with pytest.raises(GRPCError) as error:
        async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
            await stream.send_message(DiscoveryRequest(type_url=CDS))
            await stream.recv_message()
    assert error.value.status == grpclib.const.Status.INVALID_ARGUMENT
    assert "node" in (error.value.message or "")
    assert sample(runtime, "meshcp_xds_rejected_streams_total", {"reason": "no_node"}) == 1


async def test_nothing_is_sent_before_sources_are_synced() -> None:
    readiness = Readiness(["files"])
    runtime = await ControllerRuntime.open(_settings(), readiness=readiness)
    await runtime.start()
    channel = grpclib.client.Channel("127.0.0.1", runtime.xds.port)
    try:
        runtime.cache.set_snapshot("n1", World().snapshot())
        async with http_client(runtime) as http, http.get("/readyz") as reply:
            assert reply.status == 503
            assert (await reply.json())["waiting_for"] == ["files"]
        async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
            await stream.send_message(DiscoveryRequest(node=Node(id="n1"), type_url=CDS))
            await eventually(lambda: len(runtime.proxies) == 1)
            assert sample(runtime, "meshcp_xds_responses_total", {"type": "cds"}) == 0
            readiness.mark_synced("files")
            response = await stream.recv_message()
            assert response is not None and len(response.resources) == 2
            await stream.end()
        async with http_client(runtime) as http, http.get("/readyz") as reply:
            assert reply.status == 200
    finally:
        channel.close()
        await runtime.stop()


async def test_authorizer_refusal_is_permission_denied() -> None:
    def refuse(node: Node, peer: PeerCertificate) -> str | None:
        raise StreamRejected("identity_mismatch", f"node {node.id} does not match its certificate")

    runtime = await ControllerRuntime.open(_settings(), authorize=refuse)
    await runtime.start()
    channel = grpclib.client.Channel("127.0.0.1", runtime.xds.port)
    try:
        with pytest.raises(GRPCError) as error:
            async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
                await stream.send_message(DiscoveryRequest(node=Node(id="intruder"), type_url=CDS))
                await stream.recv_message()
        assert error.value.status == grpclib.const.Status.PERMISSION_DENIED
        assert "intruder" in (error.value.message or "")
        assert sample(runtime, "meshcp_xds_rejected_streams_total", {"reason": "identity_mismatch"}) == 1
    finally:
        channel.close()
        await runtime.stop()


async def test_more_than_100_streams_share_one_connection(
    runtime: ControllerRuntime, channel: grpclib.client.Channel
) -> None:
    runtime.cache.set_snapshot("many", World().snapshot())
    count = 150
    opened = 0
    all_open = asyncio.Event()

    async def one(index: int) -> int:
        nonlocal opened
        async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
            await stream.send_message(
                DiscoveryRequest(node=Node(id="many", cluster=str(index)), type_url=CDS)
            )
            response = await stream.recv_message()
            opened += 1
            if opened == count:
                assert len(runtime.proxies) == count  # every stream is open at this moment
                all_open.set()
            await all_open.wait()
            await stream.end()
            return len(response.resources) if response is not None else -1

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 30)
    assert results == [2] * count


async def test_debug_metrics_and_health_endpoints(
    runtime: ControllerRuntime, channel: grpclib.client.Channel
) -> None:
    runtime.cache.set_snapshot("n1", World().snapshot())
    async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
        await stream.send_message(DiscoveryRequest(node=Node(id="n1"), type_url=CDS))
        first = await stream.recv_message()
        assert first is not None
        await stream.send_message(
            DiscoveryRequest(type_url=CDS, response_nonce=first.nonce, version_info=first.version_info)
        )
        await eventually(lambda: sample(runtime, "meshcp_xds_acks_total", {"type": "cds"}) == 1)
        async with http_client(runtime) as http:
            async with http.get("/healthz") as reply:
                assert reply.status == 200
            async with http.get("/metrics") as reply:
                text = await reply.text()
            # the debug endpoints are not on the public listener...
            async with http.get("/debug/proxies") as reply:
                assert reply.status == 404
        # ...but on their own, loopback-only one
        async with http_client(runtime, debug=True) as http:
            async with http.get("/debug/proxies") as reply:
                (proxy,) = await reply.json()
            async with http.get("/debug/cache") as reply:
                cache = await reply.json()
        await stream.end()
    assert proxy["node_id"] == "n1"
    assert proxy["stream"] == "sotw"
    assert proxy["types"]["cds"]["version_acked"] == first.version_info
    assert proxy["types"]["cds"]["last_nack"] is None
    assert 'meshcp_xds_connected_proxies{stream="sotw"} 1.0' in text
    assert 'meshcp_xds_push_latency_seconds_count{type="cds"} 1.0' in text
    assert cache["n1"]["watchers"] == 1


async def test_stop_closes_open_streams(runtime: ControllerRuntime, channel: grpclib.client.Channel) -> None:
    runtime.cache.set_snapshot("n1", World().snapshot())
    with pytest.raises((GRPCError, StreamTerminatedError, ConnectionError)):
        async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
            await stream.send_message(DiscoveryRequest(node=Node(id="n1"), type_url=CDS))
            assert await stream.recv_message() is not None
            await runtime.stop()
            await stream.recv_message()
    assert len(runtime.proxies) == 0


async def test_reclassify_moves_an_open_stream_to_its_new_class() -> None:
    classes = {"n1": "waiting-room"}
    runtime = await ControllerRuntime.open(_settings(), classify=lambda node, identity: classes[node.id])
    await runtime.start()
    channel = grpclib.client.Channel("127.0.0.1", runtime.xds.port)
    try:
        world = World()
        runtime.cache.set_snapshot("real-class", world.snapshot())
        async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
            await stream.send_message(DiscoveryRequest(node=Node(id="n1"), type_url=CDS))
            await eventually(lambda: len(runtime.proxies) == 1)
            assert runtime.service.reclassify() == 0
            classes["n1"] = "real-class"
            assert runtime.service.reclassify() == 1
            response = await stream.recv_message()
            assert response is not None and len(response.resources) == 2
            assert runtime.proxies.status()[0]["class"] == "real-class"
            await stream.end()
    finally:
        channel.close()
        await runtime.stop()


async def test_rule22_a_late_proxy_records_its_own_convergence_not_the_snapshots_age(
    runtime: ControllerRuntime, channel: grpclib.client.Channel
) -> None:
    # Content built long before the proxy connects (as after a controller's start).
    world = World()
    runtime.cache.set_snapshot("n1", Snapshot(world.resources(), created=time.monotonic() - 1000.0))
    async with channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as stream:
        await stream.send_message(DiscoveryRequest(node=Node(id="n1"), type_url=CDS))
        first = await stream.recv_message()
        assert first is not None
        await stream.send_message(
            DiscoveryRequest(type_url=CDS, response_nonce=first.nonce, version_info=first.version_info)
        )
        await eventually(lambda: sample(runtime, "meshcp_xds_acks_total", {"type": "cds"}) == 1)
        await stream.end()
    assert sample(runtime, "meshcp_xds_push_latency_seconds_count", {"type": "cds"}) == 1
    # Measured from the proxy's request, not from `Snapshot.created`: far below its age.
    assert sample(runtime, "meshcp_xds_push_latency_seconds_sum", {"type": "cds"}) < 1000.0


class _BrokenStream:
    """A stream whose client went away: every send fails."""

    async def send_message(self, message: bytes) -> None:
        raise ConnectionResetError("gone")


async def test_a_response_that_cannot_be_sent_is_counted_by_reason(runtime: ControllerRuntime) -> None:
    protocol = SotwProtocol()
    protocol.receive(DiscoveryRequest(node=Node(id="n1"), type_url=CDS))
    stream: Any = _BrokenStream()
    budget = SendBudget()
    pusher = _Pusher(
        stream,
        protocol,
        Readiness(),
        admission=asyncio.Semaphore(1),
        budget=budget,
        on_send_error=runtime.service._send_failed,
    )
    pusher.snapshot = World().snapshot()
    pusher.admitted = True
    with pytest.raises(ConnectionResetError):
        await pusher.flush()
    assert sample(runtime, "meshcp_xds_send_errors_total", {"reason": "connection"}) == 1
    assert budget.held == 0  # what the failed send held is given back
