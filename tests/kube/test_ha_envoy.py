"""Controller replicas against the real API server and real Envoys: a failover, a scale-up.

Three `meshcp serve --source kubernetes --leader-lease ...` replicas with the controller's
ServiceAccount token; three Envoys (the sidecars of three pods) dial the controller's
"Service": a TCP forwarder on loopback that sends each new connection to one of its ready
endpoints in turn, as kube-proxy does with a ClusterIP. The leader is SIGKILLed and taken
out of the endpoints (as the endpoints controller does once its readiness fails): another
replica takes the Lease within its duration, the Envoy that was connected to the killed
replica reconnects through the Service to a survivor, and every Envoy keeps what it held
(the same versions in /config_dump, nothing warming, nothing rejected).

A scale-up: three Envoys on the only replica, a second replica started and added to the
Service; with `--max-connection-age` of a few seconds the Envoys' connections age out and
some come back on the new replica.

In both, traffic flows through the Envoys all along, on the one path of the compiled sidecar
configuration that needs no iptables redirection: the Prometheus listener (LDS, 15010,
bound by all three with SO_REUSEPORT, so the kernel spreads requests over them) and its
cluster (CDS, 127.0.0.1:15000, where the test's HTTP backend stands in for the admin
endpoint it points at in a pod). Every request issued during the failover must succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshcp.compile.naming import METRICS_CLUSTER
from meshcp.sidecar.ports import ADMIN_PORT, PROMETHEUS_PATH, PROMETHEUS_PORT
from meshcp.sources.kubernetes_rbac import LEASE, NAMESPACE
from tests.kube.conftest import Installed
from tests.kube.meshcp_process import MeshcpProcess, controller
from tests.kube.test_ha import LEASE_DURATION, get_json, leading, lease, the_leader
from tests.kube.test_source import node_id, start_pod, web_objects
from tests.support import eventually
from tests.support.bootstrap import ads_bootstrap
from tests.support.envoy import REAL_ENVOY, EnvoyProcess
from tests.support.http import new_connection_per_request

pytestmark = REAL_ENVOY

NAMESPACE_WEB = "ha-envoy"
REPLICAS = 3


class Service:
    """A ClusterIP in miniature: a loopback listener whose connections go, round robin, to
    the ports in `endpoints` (the test takes a replica out as the endpoints controller
    would); `routed` records where each went."""

    def __init__(self, endpoints: list[int]) -> None:
        self.endpoints = list(endpoints)
        self.routed: list[int] = []
        self.port = 0
        self._next = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Service:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            if not self.endpoints:
                return
            port = self.endpoints[self._next % len(self.endpoints)]
            self._next += 1
            self.routed.append(port)
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return  # a dead endpoint: the client sees the connection closed and retries
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


class Backend:
    """The HTTP backend behind the Envoys' metrics cluster, on 127.0.0.1:ADMIN_PORT."""

    BODY = "backend"

    def __init__(self) -> None:
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests += 1
        return web.Response(text=self.BODY)

    async def __aenter__(self) -> Backend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", ADMIN_PORT).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


class Traffic:
    """Requests through the Envoys' Prometheus listener, one after another, each on a new
    connection, until stopped; every outcome recorded."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        url = f"http://127.0.0.1:{PROMETHEUS_PORT}{PROMETHEUS_PATH}"
        async with new_connection_per_request() as client:
            while not self._stop.is_set():
                try:
                    async with client.get(url) as reply:
                        body = await reply.text()
                        self.outcomes.append(
                            "ok" if (reply.status, body) == (200, Backend.BODY) else f"{reply.status}"
                        )
                except (aiohttp.ClientError, TimeoutError) as error:
                    self.outcomes.append(repr(error))
                await asyncio.sleep(0.02)  # pacing, not synchronisation

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task


def held(dump: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Each dynamic resource an Envoy holds, with the version it accepted it at."""
    clusters = dump.get("clusters", {}).get("dynamic_active_clusters", [])
    listeners = dump.get("listeners", {}).get("dynamic_listeners", [])
    routes = dump.get("routes", {}).get("dynamic_route_configs", [])
    return {
        "clusters": sorted((c["cluster"]["name"], c["version_info"]) for c in clusters),
        "listeners": sorted(
            (item["name"], item.get("active_state", {}).get("version_info", "")) for item in listeners
        ),
        "routes": sorted((r["route_config"]["name"], r["version_info"]) for r in routes),
    }


async def connected_nodes(replica: MeshcpProcess) -> set[str]:
    return {entry["node_id"] for entry in await get_json(replica.debug_port, "/debug/proxies")}


@pytest.fixture
async def replicas(installed: Installed, tmp_path: Path) -> AsyncIterator[list[MeshcpProcess]]:
    kube = installed.api
    kube.kubectl("delete", "lease", LEASE, "-n", NAMESPACE, "--ignore-not-found")
    kubeconfig = kube.kubeconfig_for("meshcp-system", "meshcp-controller")
    args = (f"--leader-lease={NAMESPACE}/{LEASE}", f"--lease-duration={LEASE_DURATION:g}")
    async with AsyncExitStack() as stack:
        started = await asyncio.gather(
            *(
                stack.enter_async_context(controller(kubeconfig, tmp_path / f"r{i}", *args))
                for i in range(REPLICAS)
            )
        )
        yield list(started)
    kube.kubectl("delete", "lease", LEASE, "-n", NAMESPACE, "--ignore-not-found")


async def test_envoys_move_to_a_survivor_when_the_leader_is_killed(
    installed: Installed, replicas: list[MeshcpProcess]
) -> None:
    kube = installed.api
    kube.apply(web_objects(NAMESPACE_WEB))
    nodes = [node_id(start_pod(kube, NAMESPACE_WEB, f"web-{i}", f"10.9.1.{i + 1}")) for i in range(REPLICAS)]

    leader = await the_leader(replicas)
    holder = lease(kube)["spec"]["holderIdentity"]
    # The leader first: the first Envoy's connection goes to it.
    ordered = [leader, *(r for r in replicas if r is not leader)]

    traffic = Traffic()
    async with (
        Backend() as backend,
        Service([r.xds_port for r in ordered]) as service,
        AsyncExitStack() as stack,
    ):
        envoys: list[EnvoyProcess] = []
        for node in nodes:  # one at a time, so that the round robin puts one on each replica
            bootstrap = ads_bootstrap(node, service.port, delta=False)
            envoy = await stack.enter_async_context(EnvoyProcess(bootstrap))
            envoys.append(envoy)
            placed = ordered[len(envoys) - 1]

            async def configured(
                envoy: EnvoyProcess = envoy, node: str = node, placed: MeshcpProcess = placed
            ) -> bool:
                dump = await envoy.config_dump()
                return all(held(dump).values()) and node in await connected_nodes(placed)

            await eventually(configured, timeout=30, what=f"{node} configured", details=envoy.log_tail)
        assert service.routed == [r.xds_port for r in ordered]
        before = [held(await envoy.config_dump()) for envoy in envoys]
        traffic.start()
        stack.push_async_callback(traffic.stop)

        async def flowing() -> bool:
            return traffic.outcomes.count("ok") >= 10

        await eventually(
            flowing,
            timeout=20,
            what="requests through the Envoys",
            details=lambda: str(traffic.outcomes[-5:]),
        )

        await leader.kill()
        killed_at = time.monotonic()
        service.endpoints.remove(leader.xds_port)
        survivors = ordered[1:]

        async def took_over() -> bool:
            return sum([await leading(r) for r in survivors]) == 1

        await eventually(took_over, timeout=LEASE_DURATION + 5, what="a survivor to take the Lease")
        takeover = time.monotonic() - killed_at
        assert lease(kube)["spec"]["holderIdentity"] != holder

        async def all_served_by_survivors() -> bool:
            served = set().union(*[await connected_nodes(r) for r in survivors])
            states = [await envoy.stat("control_plane.connected_state") for envoy in envoys]
            return set(nodes) <= served and states == [1] * len(envoys)

        await eventually(
            all_served_by_survivors,
            timeout=30,
            what="every Envoy served by a survivor",
            details=envoys[0].log_tail,
        )
        # Requests keep flowing after the move, through every Envoy.
        after = len(traffic.outcomes)

        async def more() -> bool:
            return len(traffic.outcomes) >= after + 20

        await eventually(more, timeout=20, what="requests after the failover")
        await traffic.stop()
        assert traffic.outcomes and set(traffic.outcomes) == {"ok"}, [
            o for o in traffic.outcomes if o != "ok"
        ]
        assert backend.requests >= len(traffic.outcomes)
        for envoy in envoys:
            assert await envoy.stat(f"cluster.{METRICS_CLUSTER}.upstream_rq_total") > 0
        print(f"{len(traffic.outcomes)} requests, all answered; ", end="")
        print(f"takeover {takeover:.1f} s after SIGKILL; Service routed to ports {service.routed}")
        # The first Envoy came back through the Service to a survivor.
        assert service.routed[len(nodes) :] and set(service.routed[len(nodes) :]) <= {
            r.xds_port for r in survivors
        }
        for envoy, had in zip(envoys, before, strict=True):
            dump = await envoy.config_dump()
            assert held(dump) == had
            assert not dump.get("clusters", {}).get("dynamic_warming_clusters")
            assert await envoy.stat("listener_manager.lds.update_rejected") == 0
            assert await envoy.stat("cluster_manager.cds.update_rejected") == 0


async def metric(replica: MeshcpProcess, name: str) -> float:
    timeout = aiohttp.ClientTimeout(total=5)
    url = f"http://127.0.0.1:{replica.http_port}/metrics"
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url) as reply:
        text = await reply.text()
    return sum(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


async def test_a_replica_added_later_gets_proxies_as_their_connections_age_out(
    installed: Installed, tmp_path: Path
) -> None:
    """A scale-up: all three Envoys are on the one replica there is; a second one starts and
    joins the Service; as their connections reach `--max-connection-age` the Envoys
    reconnect through the Service, and the new replica serves some of them, while every
    request through them succeeds and their configuration stays."""
    kube = installed.api
    kube.apply(web_objects(NAMESPACE_WEB))
    nodes = [node_id(start_pod(kube, NAMESPACE_WEB, f"web-s{i}", f"10.9.2.{i + 1}")) for i in range(3)]
    kube.kubectl("delete", "lease", LEASE, "-n", NAMESPACE, "--ignore-not-found")
    kubeconfig = kube.kubeconfig_for("meshcp-system", "meshcp-controller")
    args = (
        f"--leader-lease={NAMESPACE}/{LEASE}",
        f"--lease-duration={LEASE_DURATION:g}",
        "--max-connection-age=4",
    )
    traffic = Traffic()
    try:
        async with (
            controller(kubeconfig, tmp_path / "first", *args) as first,
            Backend() as backend,
            Service([first.xds_port]) as service,
            AsyncExitStack() as stack,
        ):
            envoys = [
                await stack.enter_async_context(EnvoyProcess(ads_bootstrap(node, service.port, delta=False)))
                for node in nodes
            ]

            async def configured() -> bool:
                dumps = [held(await envoy.config_dump()) for envoy in envoys]
                return all(all(dump.values()) for dump in dumps) and set(nodes) <= await connected_nodes(
                    first
                )

            await eventually(configured, timeout=30, what="the Envoys configured", details=envoys[0].log_tail)
            before = [held(await envoy.config_dump()) for envoy in envoys]
            traffic.start()
            stack.push_async_callback(traffic.stop)

            second = await stack.enter_async_context(controller(kubeconfig, tmp_path / "second", *args))
            service.endpoints.append(second.xds_port)

            async def spread() -> bool:
                on_first, on_second = await connected_nodes(first), await connected_nodes(second)
                states = [await envoy.stat("control_plane.connected_state") for envoy in envoys]
                return (
                    bool(on_first & set(nodes))
                    and bool(on_second & set(nodes))
                    and set(nodes) <= on_first | on_second
                    and states == [1] * len(envoys)
                )

            await eventually(
                spread, timeout=30, what="the Envoys spread over both replicas", details=lambda: first.log
            )
            assert await metric(first, "meshcp_xds_aged_out_connections_total") >= 1
            after = len(traffic.outcomes)

            async def more() -> bool:
                return len(traffic.outcomes) >= after + 20

            await eventually(more, timeout=20, what="requests after the move")
            await traffic.stop()
            assert traffic.outcomes and set(traffic.outcomes) == {"ok"}, [
                o for o in traffic.outcomes if o != "ok"
            ]
            assert backend.requests >= len(traffic.outcomes)
            for envoy, had in zip(envoys, before, strict=True):
                dump = await envoy.config_dump()
                assert held(dump) == had
                assert await envoy.stat("listener_manager.lds.update_rejected") == 0
                assert await envoy.stat("cluster_manager.cds.update_rejected") == 0
            print(f"{len(traffic.outcomes)} requests, all answered; Service routed to {service.routed}")
    finally:
        kube.kubectl("delete", "lease", LEASE, "-n", NAMESPACE, "--ignore-not-found")
