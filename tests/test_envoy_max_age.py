"""`--max-connection-age` with a real Envoy: a connection that reaches its age is told to go
away (HTTP/2 GOAWAY, its ADS stream ended with UNAVAILABLE), Envoy reconnects on a new
connection, nothing is pushed again that it holds, its configuration stays (the same
versions in /config_dump, nothing warming, nothing rejected), and requests through it keep
succeeding all along.

The controller runs in-process on loopback with a maximum age of a few seconds.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from meshcp.xds.server import MAX_AGE_JITTER
from tests.support import eventually
from tests.support.ads import ALL_TYPES, LOOPBACK_ANY, Mesh, proxy, sample, wait_acked, wait_routed
from tests.support.bootstrap import ads_bootstrap
from tests.support.envoy import REAL_ENVOY, EnvoyProcess
from tests.support.http import new_connection_per_request
from tests.support.upstream import Upstream

pytestmark = REAL_ENVOY

#: Seconds: short enough for a test, long enough for Envoy to be configured in between.
MAX_AGE = 3.0
#: Connections aged out while traffic flows.
ROUNDS = 2
AGED_OUT = "meshcp_xds_aged_out_connections_total"


@asynccontextmanager
async def aging_controller() -> AsyncIterator[ControllerRuntime]:
    runtime = await ControllerRuntime.open(
        Settings(
            xds_address=Address("127.0.0.1", 0),
            http_address=LOOPBACK_ANY,
            xds_max_connection_age=MAX_AGE,
        )
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def metric(runtime: ControllerRuntime, name: str, labels: dict[str, str] | None = None) -> float:
    return runtime.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def holds_current(runtime: ControllerRuntime, node_id: str) -> bool:
    """Whether the node is connected and, by the server's account of its stream, holds its
    class's current content of every type (ACKed on this stream, or presented as held
    when it opened: delta's initial_resource_versions, SotW's version_info)."""
    for entry in runtime.proxies.status(runtime.cache.get):
        if entry["node_id"] == node_id:
            types = entry["types"]
            return isinstance(types, dict) and all(types.get(s, {}).get("current") for s in ALL_TYPES)
    return False


def versions(dump: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Each dynamic resource Envoy holds, with the version it was accepted at."""
    clusters = dump["clusters"].get("dynamic_active_clusters", [])
    routes = dump["routes"].get("dynamic_route_configs", [])
    return {
        "clusters": sorted((c["cluster"]["name"], c["version_info"]) for c in clusters),
        "listeners": sorted(
            (item["name"], item["active_state"]["version_info"])
            for item in dump["listeners"].get("dynamic_listeners", [])
        ),
        "routes": sorted((r["route_config"]["name"], r["version_info"]) for r in routes),
    }


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_aged_out_connection_reconnects_without_losing_config_or_traffic(
    delta: bool, request: pytest.FixtureRequest
) -> None:
    node_id = "envoy-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")
    kind = "delta" if delta else "sotw"
    async with (
        aging_controller() as runtime,
        Upstream("upstream-a") as a,
        new_connection_per_request() as client,
        EnvoyProcess(ads_bootstrap(node_id, runtime.xds.port, delta)) as envoy,
    ):
        snap = Mesh({"c-a": a.port}, route_to="c-a").snapshot()
        runtime.cache.set_snapshot(node_id, snap)
        port = await wait_routed(envoy, client, a)
        await wait_acked(runtime, node_id, snap, envoy, ALL_TYPES)
        held = versions(await envoy.config_dump())
        assert held["clusters"] and held["listeners"] and held["routes"]
        pushed = {short: sample(runtime, "meshcp_xds_responses_total", short) for short in ("lds", "cds")}
        aged_before = metric(runtime, AGED_OUT)
        connections_before = await envoy.stat("cluster.xds.upstream_cx_total")

        statuses: list[int] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            while not stop.is_set():
                try:
                    async with client.get(f"http://127.0.0.1:{port}/") as response:
                        statuses.append(response.status if await response.text() == a.name else -1)
                except aiohttp.ClientError:
                    statuses.append(0)
                await asyncio.sleep(0.02)  # pacing, not synchronisation

        async def aged_and_back() -> bool:
            return (
                metric(runtime, AGED_OUT) >= aged_before + ROUNDS
                and await envoy.stat("cluster.xds.upstream_cx_total") >= connections_before + ROUNDS
                and await envoy.stat("control_plane.connected_state") == 1
                and holds_current(runtime, node_id)
            )

        sender = asyncio.create_task(traffic())
        try:
            timeout = ROUNDS * MAX_AGE * (1 + MAX_AGE_JITTER) + 20
            what = f"{ROUNDS} connections aged out and Envoy reconnected"

            def details() -> str:
                aged = metric(runtime, AGED_OUT)
                return f"aged out: {aged}, server view: {proxy(runtime, node_id)}\n{envoy.log_tail()}"

            await eventually(aged_and_back, timeout, what, details)
        finally:
            stop.set()
            await sender

        # Every request through Envoy succeeded while its xDS connection was replaced.
        assert statuses and set(statuses) == {200}, statuses
        # A new connection each time (Envoy closed the old one once told to go away), and
        # one stream open now.
        assert await envoy.stat("cluster.xds.upstream_cx_destroy") >= ROUNDS
        assert metric(runtime, "meshcp_xds_connected_proxies", {"stream": kind}) == 1
        # The configuration stayed: the same versions, nothing warming, nothing rejected,
        # and nothing Envoy holds was pushed again on the new streams.
        dump = await envoy.config_dump()
        assert versions(dump) == held
        assert not dump["clusters"].get("dynamic_warming_clusters")
        assert await envoy.stat("listener_manager.lds.update_rejected") == 0
        assert await envoy.stat("cluster_manager.cds.update_rejected") == 0
        assert all(sample(runtime, "meshcp_xds_nacks_total", short) == 0 for short in ALL_TYPES)
        assert {short: sample(runtime, "meshcp_xds_responses_total", short) for short in pushed} == pushed
