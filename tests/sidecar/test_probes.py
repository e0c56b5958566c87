"""The sidecar's probe listeners: the generated config, Envoy's validation of a bootstrap
carrying them, and a real Envoy forwarding kubelet-style probes to an application."""

from __future__ import annotations

import fcntl
import json
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshcp._proto.envoy.config.cluster.v3 import Cluster
from meshcp._proto.envoy.config.listener.v3 import Listener
from meshcp._proto.envoy.config.route.v3 import RouteConfiguration
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
)
from meshcp._proto.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
from meshcp._proto.envoy.extensions.transport_sockets.tls.v3 import UpstreamTlsContext
from meshcp.certs import InternalCA, MemoryStore
from meshcp.certs.issuance import xds_server_request
from meshcp.sidecar.bootstrap import Workload, XdsTls, as_dict, bootstrap
from meshcp.sidecar.probes import probe_resources
from tests.support.envoy import EnvoyProcess, envoy_binary

#: Who the sidecar is (the labels of its stats).
WORKLOAD = Workload(namespace="ns", pod="pod-0", service_account="sa")
LIVENESS = {
    "container": "app",
    "probe": "liveness",
    "sidecarPort": 15901,
    "sidecarPath": "/meshcp/liveness/app",
    "path": "/healthz",
    "scheme": "HTTP",
    "port": 8080,
}
READINESS_HTTPS = {
    "container": "app",
    "probe": "readiness",
    "sidecarPort": 15902,
    "sidecarPath": "/meshcp/readiness/app",
    "path": "/ready?full=1",
    "scheme": "HTTPS",
    "port": 8443,
}
SIDECAR_LIVENESS = {**LIVENESS, "container": "metrics-agent", "path": "/", "port": 9090}
SIDECAR_LIVENESS["sidecarPath"] = "/meshcp/liveness/metrics-agent"
STARTUP_TCP = {"container": "app", "probe": "startup", "sidecarPort": 15903, "scheme": "TCP", "port": 8080}


def manager_of(listener: Listener) -> HttpConnectionManager:
    typed = listener.filter_chains[0].filters[0].typed_config
    assert typed is not None
    manager = typed.unpack()
    assert isinstance(manager, HttpConnectionManager)
    return manager


def endpoint_of(cluster: Cluster) -> tuple[str, int]:
    assert cluster.load_assignment is not None
    endpoint = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint
    assert endpoint is not None and endpoint.address is not None
    address = endpoint.address.socket_address
    assert address is not None and address.port_value is not None
    return address.address, address.port_value


def routes_of(manager: HttpConnectionManager) -> list[tuple[str, str, str]]:
    """(matched path, cluster, rewritten path) of every route."""
    config = manager.route_config
    assert isinstance(config, RouteConfiguration)
    out = []
    for route in config.virtual_hosts[0].routes:
        assert route.match is not None and route.route is not None
        assert route.match.path is not None and route.route.cluster is not None
        out.append((route.match.path, route.route.cluster, route.route.prefix_rewrite))
    return out


# --- the generated config -------------------------------------------------------------------


def test_http_probes_share_a_listener_per_kind_with_a_route_each() -> None:
    served = probe_resources([LIVENESS, SIDECAR_LIVENESS])
    assert [listener.name for listener in served.listeners] == ["probe-liveness"]
    listener = served.listeners[0]
    assert listener.address is not None and listener.address.socket_address is not None
    assert listener.address.socket_address.address == "0.0.0.0"
    assert listener.address.socket_address.port_value == 15901
    manager = manager_of(listener)
    assert routes_of(manager) == [
        ("/meshcp/liveness/app", "probe-liveness-app", "/healthz"),
        ("/meshcp/liveness/metrics-agent", "probe-liveness-metrics-agent", "/"),
    ]
    config = manager.route_config
    assert config is not None
    assert config.virtual_hosts[0].domains == ["*"]
    for route in config.virtual_hosts[0].routes:  # kubelet's Host header goes through
        assert route.route is not None
        assert not route.route.host_rewrite_literal and not route.route.auto_host_rewrite
    assert [(c.name, endpoint_of(c)) for c in served.clusters] == [
        ("probe-liveness-app", ("127.0.0.1", 8080)),
        ("probe-liveness-metrics-agent", ("127.0.0.1", 9090)),
    ]
    assert all(cluster.transport_socket is None for cluster in served.clusters)


def test_only_kinds_with_probes_get_a_listener() -> None:
    assert probe_resources([]).listeners == []
    assert probe_resources([]).clusters == []
    served = probe_resources([STARTUP_TCP, LIVENESS])
    names = [(listener.name, listener.address.socket_address.port_value) for listener in served.listeners]  # type: ignore[union-attr]
    assert names == [("probe-liveness", 15901), ("probe-startup", 15903)]


def test_https_probe_uses_upstream_tls_without_verification() -> None:
    served = probe_resources([READINESS_HTTPS])
    assert routes_of(manager_of(served.listeners[0])) == [
        ("/meshcp/readiness/app", "probe-readiness-app", "/ready?full=1")
    ]
    (cluster,) = served.clusters
    assert endpoint_of(cluster) == ("127.0.0.1", 8443)
    assert cluster.transport_socket is not None
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"
    assert cluster.transport_socket.typed_config is not None
    context = cluster.transport_socket.typed_config.unpack()
    assert isinstance(context, UpstreamTlsContext)
    assert context.common_tls_context is not None
    assert context.common_tls_context.validation_context is None  # no verification


def test_tcp_probe_becomes_a_tcp_proxy() -> None:
    served = probe_resources([STARTUP_TCP])
    (listener,) = served.listeners
    assert listener.name == "probe-startup"
    network = listener.filter_chains[0].filters[0]
    assert network.name == "envoy.filters.network.tcp_proxy"
    assert network.typed_config is not None
    proxy = network.typed_config.unpack()
    assert isinstance(proxy, TcpProxy)
    assert proxy.cluster == "probe-startup-app"
    assert [(c.name, endpoint_of(c)) for c in served.clusters] == [("probe-startup-app", ("127.0.0.1", 8080))]


@pytest.mark.parametrize(
    ("entries", "words"),
    [
        ([{**LIVENESS, "probe": "grpc"}], "probe must be one of"),
        ([{**LIVENESS, "scheme": "FTP"}], "scheme must be one of"),
        ([{**LIVENESS, "port": 0}], "port must be"),
        ([{**LIVENESS, "port": True}], "port must be"),
        ([{**LIVENESS, "container": ""}], "container"),
        ([{**LIVENESS, "path": "healthz"}], "path must be"),
        ([LIVENESS, LIVENESS], "two liveness probes"),
        ([STARTUP_TCP, {**LIVENESS, "probe": "startup", "container": "other"}], "only startup probe"),
        (["liveness"], "must be an object"),
    ],
)
def test_malformed_entries_are_refused(entries: list[Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        probe_resources(entries)


def test_bootstrap_adds_probe_listeners_and_clusters() -> None:
    config = bootstrap(
        "n", "c", "10.0.0.1", 15128, tls=None, **WORKLOAD, probes=probe_resources([LIVENESS, STARTUP_TCP])
    )
    assert config.static_resources is not None
    assert [listener.name for listener in config.static_resources.listeners] == [
        "probe-liveness",
        "probe-startup",
    ]
    assert [cluster.name for cluster in config.static_resources.clusters] == [
        "meshcp-controller",
        "probe-liveness-app",
        "probe-startup-app",
    ]
    plain = bootstrap("n", "c", "10.0.0.1", 15128, tls=None, **WORKLOAD)
    assert plain.static_resources is not None
    assert plain.static_resources.listeners == []


@pytest.fixture
async def xds_tls(tmp_path: Path) -> XdsTls:
    """Real PEM files where the bootstrap points (Envoy's validation reads them)."""
    ca = await InternalCA.open(MemoryStore())
    issued = await ca.issue(xds_server_request(["proxy.example"]))
    bundle = await ca.trust_bundle()
    for name, text in (
        ("tls.crt", issued.chain_pem),
        ("tls.key", issued.private_key_pem),
        ("ca.crt", bundle),
    ):
        (tmp_path / name).write_text(text)
    return XdsTls(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"), str(tmp_path / "ca.crt"), "meshcp")


def test_envoy_validates_a_bootstrap_with_probes(tmp_path: Path, xds_tls: XdsTls) -> None:
    envoy = envoy_binary()
    tls = xds_tls
    config = bootstrap(
        "n",
        "c",
        "10.0.0.1",
        15128,
        tls=tls,
        **WORKLOAD,
        probes=probe_resources([LIVENESS, SIDECAR_LIVENESS, READINESS_HTTPS, STARTUP_TCP]),
    )
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(as_dict(config)))
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# --- a real Envoy ---------------------------------------------------------------------------

PORT_LOCK = Path(tempfile.gettempdir()) / "meshcp-probe-ports.lock"
PORT_LOCK_WAIT = 120.0


@pytest.fixture
def probe_ports() -> Iterator[None]:
    """Exclusive use of 15901-15903 on this host: the probe listeners bind 0.0.0.0 there, so
    concurrent test runs (other checkouts, other sessions) take turns on a file lock."""
    with PORT_LOCK.open("a") as lock:
        deadline = time.monotonic() + PORT_LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"{PORT_LOCK} still held after {PORT_LOCK_WAIT:g}s")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@asynccontextmanager
async def application(tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """An app on 127.0.0.1 (a free port) telling what it was asked: path, query, Host."""

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path_qs, "host": request.host})

    app = web.Application()
    app.router.add_get("/healthz", answer)
    app.router.add_get("/ready", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


async def server_tls(directory: Path) -> ssl.SSLContext:
    ca = await InternalCA.open(MemoryStore())
    issued = await ca.issue(xds_server_request(["app.example"]))
    (directory / "app.crt").write_text(issued.chain_pem)
    (directory / "app.key").write_text(issued.private_key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "app.crt", directory / "app.key")
    return context


@pytest.mark.envoy
@pytest.mark.usefixtures("probe_ports")
async def test_envoy_serves_rewritten_probes(tmp_path: Path) -> None:
    async with application() as http_port, application(await server_tls(tmp_path)) as https_port:
        probes = [
            {**LIVENESS, "port": http_port},
            {**READINESS_HTTPS, "port": https_port},
            {**STARTUP_TCP, "port": http_port},
        ]
        served = probe_resources(probes)
        config = as_dict(
            bootstrap("n", "c", "127.0.0.1", 1, tls=None, **WORKLOAD, admin_port=0, probes=served)
        )
        # No controller here: without ADS, Envoy starts its listeners at once instead of
        # after the initial CDS/LDS fetch timeout.
        del config["dynamicResources"]
        async with EnvoyProcess(config) as envoy, aiohttp.ClientSession() as session:

            async def get(url: str) -> tuple[int, Any]:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
                    body = await response.json() if response.status == 200 else await response.text()
                    return response.status, body

            await envoy.wait_live()  # static listeners bound
            status, body = await get("http://127.0.0.1:15901/meshcp/liveness/app")
            assert status == 200, body
            assert body == {"path": "/healthz", "host": "127.0.0.1:15901"}  # Host kept
            status, body = await get("http://127.0.0.1:15902/meshcp/readiness/app")
            assert status == 200, body
            assert body == {"path": "/ready?full=1", "host": "127.0.0.1:15902"}
            # The TCP startup probe reaches the app's port as is.
            status, body = await get("http://127.0.0.1:15903/healthz")
            assert (status, body["path"]) == (200, "/healthz")
            # Only the rewritten paths are served.
            status, _ = await get("http://127.0.0.1:15901/healthz")
            assert status == 404
            status, _ = await get("http://127.0.0.1:15901/meshcp/readiness/app")
            assert status == 404
