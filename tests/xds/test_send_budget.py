"""The send budget: streams wait, in order, while too many response bytes are being
written; over real gRPC, a tiny budget still serves every stream and never holds more
than one stream's responses at once."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import grpclib.client
import grpclib.config
import grpclib.const
import pytest

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from meshcp.xds.send_budget import SendBudget
from meshcp.xds.service import SOTW_PATH
from tests.factories import CDS, World


async def _waiting(budget: SendBudget) -> asyncio.Task[None]:
    task = asyncio.create_task(budget.room())
    for _ in range(3):
        await asyncio.sleep(0)  # let it run up to its wait (no time passes)
    return task


async def test_room_is_free_under_the_limit_and_waits_over_it() -> None:
    budget = SendBudget(100)
    await budget.room()
    budget.hold(150)  # one turn may go past the limit
    second = await _waiting(budget)
    assert not second.done()
    budget.release(40)  # 110 held: still over
    await asyncio.sleep(0)
    assert not second.done()
    budget.release(20)  # 90 held: room
    await asyncio.wait_for(second, 1)
    assert budget.waits == 1
    assert budget.peak == 150


async def test_waiters_go_in_arrival_order_one_turn_at_a_time() -> None:
    budget = SendBudget(10)
    await budget.room()
    budget.hold(10)
    order: list[int] = []

    async def stream(index: int) -> None:
        await budget.room()
        order.append(index)
        budget.hold(10)

    tasks = [asyncio.create_task(stream(i)) for i in range(3)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert order == []
    for expected in ([0], [0, 1], [0, 1, 2]):
        budget.release(10)
        for _ in range(3):
            await asyncio.sleep(0)
        assert order == expected  # each release lets exactly one more go
    await asyncio.gather(*tasks)
    assert budget.held == 10


async def test_a_turn_with_nothing_to_send_lets_the_next_one_go() -> None:
    budget = SendBudget(10)
    await budget.room()
    budget.hold(0)
    await asyncio.wait_for(budget.room(), 1)
    budget.hold(0)
    assert budget.waits == 0


async def test_a_cancelled_waiter_never_keeps_the_others_waiting() -> None:
    budget = SendBudget(10)
    await budget.room()
    budget.hold(10)
    first, second = await _waiting(budget), await _waiting(budget)
    first.cancel()
    budget.release(10)
    await asyncio.wait_for(second, 1)  # the cancelled one's place is not held
    budget.hold(0)

    # Cancelled just as it is given the turn: the turn passes on.
    await budget.room()
    budget.hold(10)
    third, fourth = await _waiting(budget), await _waiting(budget)
    budget.release(10)  # third is given the turn ...
    third.cancel()  # ... and cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await third
    await asyncio.wait_for(fourth, 1)


def test_a_budget_under_one_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 byte"):
        SendBudget(0)


@pytest.fixture
async def runtime() -> AsyncIterator[ControllerRuntime]:
    settings = Settings(
        xds_address=Address("127.0.0.1", 0), http_address=Address("127.0.0.1", 0), send_budget=1
    )
    runtime = await ControllerRuntime.open(settings)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def test_a_one_byte_budget_serves_every_stream_one_turn_at_a_time(runtime: ControllerRuntime) -> None:
    world = World()
    world.clusters.update({f"cluster-{i:05d}": 0 for i in range(1500)})
    streams = 20
    for i in range(streams):
        runtime.cache.set_snapshot(f"n{i}", world.snapshot())
    # Small flow-control windows: each response is sent in several steps, so streams
    # overlap and must take turns.
    small = grpclib.config.Configuration(http2_connection_window_size=2**16, http2_stream_window_size=2**16)
    channel = grpclib.client.Channel("127.0.0.1", runtime.xds.port, config=small)
    try:

        async def first_response(node: str) -> DiscoveryResponse:
            async with channel.request(
                SOTW_PATH, grpclib.const.Cardinality.STREAM_STREAM, DiscoveryRequest, DiscoveryResponse
            ) as stream:
                await stream.send_message(DiscoveryRequest(node=Node(id=node), type_url=CDS))
                response = await stream.recv_message()
                assert response is not None
                await stream.cancel()
                return response

        responses = await asyncio.wait_for(
            asyncio.gather(*(first_response(f"n{i}") for i in range(streams))), 30
        )
    finally:
        channel.close()
    budget = runtime.service.send_budget
    assert all(len(r.resources) == 1502 for r in responses)
    largest = max(len(bytes(dataclasses.replace(r, nonce=""))) for r in responses) + 64
    assert budget.peak <= largest  # never two streams' responses at once
    assert budget.waits > 0
    assert budget.held == 0
