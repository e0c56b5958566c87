"""Fault injection: a proxy that NACKs every push (rule 3), sharing its class with a proxy
that ACKs. The NACKer gets each new content once and nothing in between (no resend loop:
the pushes to it are counted), every NACK is counted and shown, and the other proxy
converges on every change as if the NACKer were not there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpclib.client
import grpclib.const
import pytest

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.envoy.service.discovery.v3 import DiscoveryRequest, DiscoveryResponse
from meshcp._proto.google.rpc import Status
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from meshcp.xds.service import SOTW_PATH
from tests.factories import CDS, EDS, World

STREAM = grpclib.const.Cardinality.STREAM_STREAM
CHANGES = 20


@pytest.fixture
async def runtime() -> AsyncIterator[ControllerRuntime]:
    settings = Settings(xds_address=Address("127.0.0.1", 0), http_address=Address("127.0.0.1", 0))
    runtime = await ControllerRuntime.open(settings, classify=lambda node, identity: "mesh")
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def sample(runtime: ControllerRuntime, name: str) -> float:
    return runtime.metrics.registry.get_sample_value(name, {"type": "cds"}) or 0.0


async def test_a_proxy_nacking_every_push(runtime: ControllerRuntime) -> None:
    world = World()
    runtime.cache.set_snapshot("mesh", world.snapshot())
    channel = grpclib.client.Channel("127.0.0.1", runtime.xds.port)
    try:
        async with (
            channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as nacker,
            channel.request(SOTW_PATH, STREAM, DiscoveryRequest, DiscoveryResponse) as healthy,
        ):
            await nacker.send_message(DiscoveryRequest(node=Node(id="nacker"), type_url=CDS))
            await healthy.send_message(DiscoveryRequest(node=Node(id="healthy"), type_url=CDS))
            pushed_to_nacker: list[DiscoveryResponse] = []
            for change in range(CHANGES + 1):
                if change:
                    world.clusters[f"c{change}"] = 0
                    runtime.cache.set_snapshot("mesh", world.snapshot())
                expected = len(world.clusters)
                got = await nacker.recv_message()
                assert got is not None and got.type_url == CDS and len(got.resources) == expected
                pushed_to_nacker.append(got)
                await nacker.send_message(
                    DiscoveryRequest(
                        type_url=CDS,
                        response_nonce=got.nonce,
                        error_detail=Status(code=3, message=f"rejected change {change}"),
                    )
                )
                ok = await healthy.recv_message()
                assert ok is not None and ok.type_url == CDS and len(ok.resources) == expected
                await healthy.send_message(
                    DiscoveryRequest(type_url=CDS, response_nonce=ok.nonce, version_info=ok.version_info)
                )
            # A probe after the last NACK: its answer is the next message on the NACKer's
            # stream, so nothing was re-sent after any NACK.
            await nacker.send_message(DiscoveryRequest(type_url=EDS, resource_names=["a"]))
            probe = await nacker.recv_message()
            assert probe is not None and probe.type_url == EDS
            await nacker.send_message(
                DiscoveryRequest(type_url=EDS, resource_names=["a"], response_nonce=probe.nonce)
            )

            # Counted, and shown; the ACKing proxy holds the latest content.
            assert len(pushed_to_nacker) == CHANGES + 1
            assert len({response.version_info for response in pushed_to_nacker}) == CHANGES + 1
            assert sample(runtime, "meshcp_xds_nacks_total") == CHANGES + 1
            assert sample(runtime, "meshcp_xds_responses_total") == 2 * (CHANGES + 1)
            entries: list[Any] = runtime.proxies.status()
            status = {entry["node_id"]: entry["types"]["cds"] for entry in entries}
            latest = world.snapshot().version(CDS)
            assert status["healthy"]["version_acked"] == latest
            assert status["nacker"]["last_nack"]["message"] == f"rejected change {CHANGES}"
            assert status["nacker"]["version_acked"] in ("", None)
            await nacker.end()
            await healthy.end()
    finally:
        channel.close()
