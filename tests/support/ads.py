"""The ADS server and a real Envoy, as tests/test_envoy_ads.py drives them: the configuration a
test wants Envoy to hold, a controller serving it on loopback, and waits on what the server
recorded (ACKs, NACKs) and on where requests through Envoy's listener land.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from meshcp.cache import Encoder, Snapshot, resource_types
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from tests.support import eventually
from tests.support.envoy import EnvoyProcess
from tests.support.resources import (
    eds_cluster,
    http_listener,
    load_assignment,
    route_configuration,
    snapshot,
)
from tests.support.upstream import Upstream

LISTENER = "main"
ROUTE = "main-routes"
BAD_LISTENER = "bad-port"
EXTRA_LISTENER = "extra"
#: Envoy NACKs this: SocketAddress.port_value has the PGV rule `lte: 65535`.
BAD_PORT = 70_000
LOOPBACK_ANY = Address("127.0.0.1", 0)
TYPES = {
    "cds": resource_types.CLUSTER,
    "eds": resource_types.ENDPOINT,
    "lds": resource_types.LISTENER,
    "rds": resource_types.ROUTE,
}
ALL_TYPES = tuple(TYPES)

# The desired configuration --------------------------------------------------------


@dataclass
class Mesh:
    """What the test wants Envoy to hold: EDS clusters (name -> upstream port), one HTTP
    listener on 127.0.0.1:0 using RDS, a route sending "/" to `route_to`, and optionally
    a listener Envoy must reject."""

    clusters: dict[str, int]
    route_to: str
    bad_listener: bool = False
    extra_listener: bool = False
    encoder: Encoder = field(default_factory=Encoder)

    def snapshot(self) -> Snapshot:
        messages: list[Any] = []
        for name, port in sorted(self.clusters.items()):
            messages += [eds_cluster(name), load_assignment(name, port)]
        messages += [http_listener(LISTENER, 0, ROUTE), route_configuration(ROUTE, self.route_to)]
        if self.bad_listener:
            messages.append(http_listener(BAD_LISTENER, BAD_PORT, ROUTE))
        if self.extra_listener:
            messages.append(http_listener(EXTRA_LISTENER, 0, ROUTE))
        return snapshot(self.encoder, *messages)


# The controller -----------------------------------------------------------------


@asynccontextmanager
async def serving(xds_port: int = 0) -> AsyncIterator[ControllerRuntime]:
    """A started controller on loopback (xDS on `xds_port`, 0: any), stopped on exit."""
    runtime = await ControllerRuntime.open(
        Settings(xds_address=Address("127.0.0.1", xds_port), http_address=LOOPBACK_ANY)
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


# Waiting on the server and on Envoy -----------------------------------------------


def sample(runtime: ControllerRuntime, name: str, short_type: str) -> float:
    value = runtime.metrics.registry.get_sample_value(name, {"type": short_type})
    return value if value is not None else 0.0


def proxy(runtime: ControllerRuntime, node_id: str) -> dict[str, Any] | None:
    """The node's entry in the server's connected-proxies status, if it is connected."""
    for entry in runtime.proxies.status():
        if entry["node_id"] == node_id:
            return entry
    return None


def type_status(runtime: ControllerRuntime, node_id: str, short_type: str) -> dict[str, Any]:
    entry = proxy(runtime, node_id)
    types: dict[str, Any] = entry["types"] if entry is not None else {}
    status: dict[str, Any] = types.get(short_type, {})
    return status


async def wait_acked(
    runtime: ControllerRuntime, node_id: str, snap: Snapshot, envoy: EnvoyProcess, types: tuple[str, ...]
) -> None:
    """Until the server has Envoy's ACK of `snap`'s version for each of `types`."""

    async def acked() -> bool:
        return all(
            type_status(runtime, node_id, short).get("version_acked") == snap.version(TYPES[short])
            for short in types
        )

    def details() -> str:
        return f"server view: {proxy(runtime, node_id)}\n{envoy.log_tail()}"

    await eventually(acked, 15, f"ACKs of {', '.join(types)} from {node_id}", details)


async def body_via(client: aiohttp.ClientSession, port: int) -> str | None:
    """The body of GET / through Envoy's listener, or None when Envoy did not answer 200."""
    async with client.get(f"http://127.0.0.1:{port}/") as response:
        text = await response.text()
        return text if response.status == 200 else None


async def wait_routed(envoy: EnvoyProcess, client: aiohttp.ClientSession, upstream: Upstream) -> int:
    """Until a request through the main listener reaches `upstream`; returns the listener port."""
    port = 0

    async def routed() -> bool:
        nonlocal port
        port = port or await envoy.listener_port(LISTENER) or 0
        return bool(port) and await body_via(client, port) == upstream.name

    await envoy.wait_for(routed, 15, f"requests through listener {LISTENER!r} to reach {upstream.name}")
    return port
