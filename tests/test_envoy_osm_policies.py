"""OSM's Retry and UpstreamTrafficSetting on a real Envoy: it ACKs what meshcp compiles for
them, and behaves as the policies say on loopback.

One Envoy with the sidecar bootstrap follows the controller over ADS. The snapshots are
built from `compile.*`'s own pieces (the retry on the outbound virtual host, the settings
in the upstream cluster, the rate limit filters and per-route limits of the inbound side);
only mTLS is left out (the clusters' transport socket, the inbound chain's TLS match) so a
plain HTTP client on loopback can drive them: mTLS is tests/test_envoy_mtls.py's subject,
and which policy objects produce these pieces is tests/policy/test_osm_policies.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import betterproto2
import kmock
import yaml
from aiohttp import web

from meshcp._proto.envoy.config.cluster.v3 import Cluster
from meshcp._proto.envoy.config.listener.v3 import Filter, FilterChain, Listener
from meshcp._proto.envoy.config.route.v3 import RouteConfiguration
from meshcp._proto.envoy.extensions.filters.network.http_connection_manager.v3 import (
    HttpConnectionManager,
    Rds,
)
from meshcp._proto.envoy.extensions.filters.network.tcp_proxy.v3 import TcpProxy
from meshcp.cache import Encoder
from meshcp.cache.encoding import pack
from meshcp.compile import cds, naming, rds
from meshcp.compile.ratelimit import NETWORK_LOCAL_RATE_LIMIT, http_filter, network_limit
from meshcp.identity import Identity, ProxyIdentity
from meshcp.model.core import Pod
from meshcp.model.osm_policy import (
    ConnectionSettings,
    HttpRateLimit,
    OutlierDetection,
    RetryPolicy,
    RouteRateLimit,
    TcpRateLimit,
)
from meshcp.model.parse import parse_object
from meshcp.policy.membership import proxy_uuid
from meshcp.policy.types import HttpRule, InboundPort, LocalRateLimits, ServiceKey
from meshcp.policy.types import Upstream as UpstreamPolicy
from meshcp.runtime.controller import ControllerRuntime
from meshcp.sidecar.bootstrap import Workload, as_dict, bootstrap, stats_config
from meshcp.sidecar.envoy_parts import TCP_PROXY, network_filter, router_filter
from meshcp.sources.kubernetes import RESOURCES
from tests.sources.kube_fixtures import Emulator, kube_settings
from tests.sources.kube_objects import key, namespace, seed
from tests.sources.test_kubernetes_envoy import web_pod, web_service
from tests.support import eventually
from tests.support.ads import LISTENER, TYPES, serving, wait_acked
from tests.support.bootstrap import ads_bootstrap
from tests.support.envoy import REAL_ENVOY, EnvoyProcess
from tests.support.http import new_connection_per_request
from tests.support.resources import ads_source, http_listener, load_assignment, snapshot, socket_address

pytestmark = REAL_ENVOY

NODE = "osm-policies"
WORKLOAD = Workload(namespace="bookbuyer", pod="bookbuyer-0", service_account="bookbuyer")
STORE = ServiceKey("bookstore", "bookstore")
PORT = 14001
CLUSTER = naming.cluster(STORE.namespace, STORE.name, PORT)
HOST = f"bookstore.bookstore:{PORT}"
TCP_LISTENER = "tcp"


class App:
    """The bookstore: counts attempts per path, answers 503 to the first `failing` of each,
    and holds requests to `/hold/...` until `release` is set."""

    def __init__(self, failing: int = 0) -> None:
        self.failing = failing
        self.attempts: dict[str, int] = {}
        self.held = 0
        self.release = asyncio.Event()
        self.port = 0
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)

    async def _answer(self, request: web.Request) -> web.Response:
        count = self.attempts[request.path] = self.attempts.get(request.path, 0) + 1
        if request.path.startswith("/hold/"):
            self.held += 1
            await self.release.wait()
        if count <= self.failing:
            return web.Response(status=503, text="failing")
        return web.Response(text="bookstore")

    async def holding(self, count: int) -> bool:
        """Whether `count` requests are held (a predicate to wait on)."""
        return self.held >= count

    async def __aenter__(self) -> App:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release.set()
        await self._runner.cleanup()


@asynccontextmanager
async def proxy(
    *messages: betterproto2.Message, types: tuple[str, ...] = tuple(TYPES)
) -> AsyncIterator[tuple[EnvoyProcess, int]]:
    """A real Envoy that has ACKed `messages` (each of `types`), and the port of `LISTENER`."""
    encoder = Encoder()
    async with serving() as runtime:
        config = bootstrap(
            NODE, "bookbuyer.bookbuyer", "127.0.0.1", runtime.xds.port, tls=None, admin_port=0, **WORKLOAD
        )
        # Every stat: the sidecar's keep-list exports golden metrics only, not the
        # overflow, retry and rate limit counters these tests read.
        config.stats_config = stats_config(**WORKLOAD, keep_list=False)
        async with EnvoyProcess(as_dict(config)) as envoy:
            snap = snapshot(encoder, *messages)
            runtime.cache.set_snapshot(NODE, snap)
            await wait_acked(runtime, NODE, snap, envoy, types)
            port = 0

            async def bound() -> bool:
                nonlocal port
                port = await envoy.listener_port(LISTENER) or 0
                return bool(port)

            await envoy.wait_for(bound, what=f"listener {LISTENER!r}")
            yield envoy, port


def plaintext(cluster: Cluster) -> Cluster:
    """The compiled upstream cluster without its mTLS socket (the app speaks plain HTTP)."""
    cluster.transport_socket = None
    return cluster


def outbound(app: App, upstream: UpstreamPolicy, settings: cds.ClusterSettings | None = None) -> list[object]:
    """The client side of one upstream, as compiled: cluster, endpoints, routes, listener."""
    routes = rds.outbound_route(PORT, [rds.outbound_virtual_host(upstream, "bookbuyer")])
    cluster = cds.upstream_cluster(STORE, PORT, False, (), "cluster.local", settings=settings)
    return [
        plaintext(cluster),
        load_assignment(CLUSTER, app.port),
        http_listener(LISTENER, 0, routes.name),
        routes,
    ]


def store(retry: RetryPolicy | None = None) -> UpstreamPolicy:
    return UpstreamPolicy(STORE, PORT, "http", ("10.96.0.10",), (), retry=retry)


async def get(client: aiohttp.ClientSession, port: int, path: str) -> tuple[int, dict[str, str]]:
    async with client.get(f"http://127.0.0.1:{port}{path}", headers={"Host": HOST}) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_a_retry_turns_two_503s_into_a_success_and_the_app_sees_every_attempt() -> None:
    retry = RetryPolicy("5xx", per_try_timeout=5.0, num_retries=3, backoff_base_interval=0.001)
    async with App(failing=2) as app, new_connection_per_request() as client:
        async with proxy(*outbound(app, store(retry))) as (envoy, port):  # type: ignore[arg-type]
            status, _ = await get(client, port, "/retried")
            assert (status, app.attempts["/retried"]) == (200, 3)
            assert await envoy.stat(f"cluster.{CLUSTER}.upstream_rq_retry") == 2
        async with proxy(*outbound(app, store())) as (envoy, port):  # type: ignore[arg-type]
            status, _ = await get(client, port, "/once")
            assert (status, app.attempts["/once"]) == (503, 1)


async def test_connection_limits_overflow_with_503_and_envoy_counts_them() -> None:
    connection = ConnectionSettings(max_connections=1, max_pending_requests=1, connect_timeout=1.0)
    outlier = OutlierDetection(
        consecutive_5xx=5, interval=10.0, base_ejection_time=30.0, max_ejection_percent=10
    )
    async with (
        App() as app,
        new_connection_per_request() as client,
        proxy(*outbound(app, store(), (connection, outlier))) as (envoy, port),  # type: ignore[arg-type]
    ):
        first = asyncio.create_task(get(client, port, "/hold/1"))
        await envoy.wait_for(lambda: app.holding(1), what="the first request held by the app")
        # The second waits for the one connection (a connection overflow), pending.
        second = asyncio.create_task(get(client, port, "/hold/2"))
        await envoy.wait_stat(f"cluster.{CLUSTER}.upstream_cx_overflow", 1)
        # The third finds the pending queue full: 503 at once, from Envoy.
        status, headers = await get(client, port, "/third")
        assert status == 503 and headers.get("x-envoy-overloaded") == "true"
        assert await envoy.stat(f"cluster.{CLUSTER}.upstream_rq_pending_overflow") == 1
        app.release.set()
        assert [(await first)[0], (await second)[0]] == [200, 200]
        assert "/third" not in app.attempts


async def test_an_endpoint_that_keeps_failing_is_ejected_and_traffic_moves_to_the_healthy_one() -> None:
    outlier = OutlierDetection(
        consecutive_5xx=2, interval=10.0, base_ejection_time=300.0, max_ejection_percent=50
    )
    async with App() as healthy, App(failing=1_000_000) as broken, new_connection_per_request() as client:
        messages = outbound(healthy, store(), (None, outlier))
        messages[1] = load_assignment(CLUSTER, healthy.port, broken.port)
        async with proxy(*messages) as (envoy, port):  # type: ignore[arg-type]

            async def ejected() -> bool:
                await get(client, port, "/books")
                return await envoy.stat(f"cluster.{CLUSTER}.outlier_detection.ejections_enforced_total") == 1

            await envoy.wait_for(ejected, what="the failing endpoint to be ejected")
            assert broken.attempts["/books"] >= 2  # two 5xx in a row, and out
            statuses = [(await get(client, port, "/after"))[0] for _ in range(10)]
            assert statuses == [200] * 10
            assert "/after" not in broken.attempts and healthy.attempts["/after"] == 10


async def test_max_requests_overflow_with_503() -> None:
    connection = ConnectionSettings(max_requests=1, max_requests_per_connection=1)
    async with (
        App() as app,
        new_connection_per_request() as client,
        proxy(*outbound(app, store(), (connection, None))) as (envoy, port),  # type: ignore[arg-type]
    ):
        first = asyncio.create_task(get(client, port, "/hold/1"))
        await envoy.wait_for(lambda: app.holding(1), what="the first request held by the app")
        status, _ = await get(client, port, "/second")
        assert status == 503
        assert await envoy.stat(f"cluster.{CLUSTER}.upstream_rq_active_overflow") == 1
        assert await envoy.stat(f"cluster.{CLUSTER}.circuit_breakers.default.rq_open") == 1
        app.release.set()
        assert (await first)[0] == 200


def inbound(app: App, limits: LocalRateLimits) -> list[object]:
    """The destination side as compiled: the local cluster, the inbound routes with their
    limits, an HTTP listener with the rate limit filter, and a TCP listener limited by the
    network filter (both on plain TCP: the TLS match and RBAC need a mesh client)."""
    port = InboundPort(
        STORE,
        PORT,
        app.port,
        "http",
        (HttpRule(None, frozenset(), any_source=True),),
        any_source=True,
        rate_limits=limits,
    )
    local = cds.local_cluster(port)
    host = rds.inbound_virtual_host(port, "cluster.local", only=True)
    routes = RouteConfiguration(name=naming.inbound_routes(PORT), virtual_hosts=[host])
    manager = HttpConnectionManager(
        stat_prefix="inbound.14001",
        rds=Rds(config_source=ads_source(), route_config_name=routes.name),
        http_filters=[http_filter("inbound.14001.rate_limit"), router_filter()],
    )
    http = Listener(
        name=LISTENER,
        address=socket_address(0),
        filter_chains=[
            FilterChain(
                filters=[
                    Filter(name="envoy.filters.network.http_connection_manager", typed_config=pack(manager))
                ]
            )
        ],
    )
    assert limits.tcp is not None
    tcp = Listener(
        name=TCP_LISTENER,
        address=socket_address(0),
        filter_chains=[
            FilterChain(
                filters=[
                    network_filter(
                        NETWORK_LOCAL_RATE_LIMIT, network_limit("inbound.tcp.rate_limit", limits.tcp)
                    ),
                    network_filter(TCP_PROXY, TcpProxy(stat_prefix="inbound.tcp", cluster=local.name)),
                ]
            )
        ],
    )
    return [local, routes, http, tcp]


async def _raw_get(port: int) -> bytes:
    """One HTTP/1.1 request on a new TCP connection; what came back before the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /raw HTTP/1.1\r\nHost: bookstore\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_local_rate_limits_answer_with_the_configured_status() -> None:
    limits = LocalRateLimits(
        tcp=TcpRateLimit(connections=1, unit=3600),
        http=HttpRateLimit(requests=1, unit=3600, burst=1),
        routes=(
            RouteRateLimit(
                "/limited/.*", HttpRateLimit(1, 3600, status=503, headers=(("x-limited", "yes"),))
            ),
        ),
    )
    # A static local cluster: no endpoints over EDS.
    async with (
        App() as app,
        new_connection_per_request() as client,
        proxy(*inbound(app, limits), types=("cds", "lds", "rds")) as (envoy, port),  # type: ignore[arg-type]
    ):
        # The virtual host's bucket: one request an hour plus a burst of one.
        statuses = [(await get(client, port, f"/books/{n}"))[0] for n in range(3)]
        assert statuses == [200, 200, 429]
        # A route's own bucket: its limit, its status and headers, not the host's.
        assert (await get(client, port, "/limited/1"))[0] == 200
        status, headers = await get(client, port, "/limited/2")
        assert (status, headers.get("x-limited")) == (503, "yes")
        assert "/books/2" not in app.attempts and "/limited/2" not in app.attempts
        # One TCP connection an hour: the second is closed before it reaches the app.
        tcp_port = await envoy.listener_port(TCP_LISTENER) or 0
        assert (await _raw_get(tcp_port)).startswith(b"HTTP/1.1 200")
        assert await _raw_get(tcp_port) == b""
        assert app.attempts["/raw"] == 1
        assert await envoy.stat("local_rate_limit.inbound.tcp.rate_limit.rate_limited") == 1
        host = "inbound.bookstore/bookstore|14001|local"
        assert await envoy.stat(f"{host}.http_local_rate_limit.rate_limited") == 1
        assert await envoy.stat(f"{host}.route.0.http_local_rate_limit.rate_limited") == 1


# The whole way: OSM's manifests in the API server, meshcp's compiled config in Envoy ------

OSM_POLICIES = yaml.safe_load_all(
    """
apiVersion: policy.openservicemesh.io/v1alpha1
kind: Retry
metadata: {name: retry, namespace: shop}
spec:
  source: {kind: ServiceAccount, name: web, namespace: shop}
  destinations: [{kind: Service, name: web, namespace: shop}]
  retryPolicy: {retryOn: "5xx,reset", perTryTimeout: 1s, numRetries: 4, retryBackoffBaseInterval: 10ms}
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: UpstreamTrafficSetting
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
  connectionSettings:
    tcp: {maxConnections: 7, connectTimeout: 2s}
    http: {maxRequests: 8, maxPendingRequests: 9, maxRetries: 3, maxRequestsPerConnection: 10}
  outlierDetection: {consecutive5xx: 4, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  rateLimit:
    local:
      tcp: {connections: 100, unit: minute, burst: 10}
      http:
        requests: 50
        unit: second
        responseStatusCode: 503
        responseHeadersToAdd: [{name: x-rate-limited, value: "true"}]
  httpRoutes:
  - path: /books/.*
    rateLimit: {local: {requests: 5, unit: second}}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: httpbin-get, namespace: shop}
spec:
  matches: [{name: get, pathRegex: /get, methods: [GET]}]
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: Egress
metadata: {name: httpbin-80, namespace: shop}
spec:
  sources: [{kind: ServiceAccount, name: web, namespace: shop}]
  hosts: [httpbin.org]
  ports: [{number: 80, protocol: http}]
  matches: [{apiGroup: specs.smi-spec.io/v1alpha4, kind: HTTPRouteGroup, name: httpbin-get}]
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: Egress
metadata: {name: httpbin-443, namespace: shop}
spec:
  sources: [{kind: ServiceAccount, name: web, namespace: shop}]
  hosts: [httpbin.org]
  ports: [{number: 443, protocol: https}]
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: Egress
metadata: {name: database, namespace: shop}
spec:
  sources: [{kind: ServiceAccount, name: web, namespace: shop}]
  ipAddresses: [203.0.113.0/24]
  ports: [{number: 5432, protocol: tcp}]
---
apiVersion: policy.openservicemesh.io/v1alpha1
kind: IngressBackend
metadata: {name: web, namespace: shop}
spec:
  backends: [{name: web, port: {number: 8080, protocol: http}}]
  sources: [{kind: IPRange, name: 10.0.0.0/8}]
"""
)


def _named(items: list[dict[str, Any]], key: str, name: str) -> dict[str, Any]:
    return next(item[key] for item in items if item[key]["name"] == name)


async def test_envoy_acks_what_osm_manifests_compile_to(tmp_path: Path) -> None:
    """Retry, UpstreamTrafficSetting, Egress and IngressBackend as OSM's users have them, read by the
    Kubernetes source and compiled with mTLS and RBAC: Envoy ACKs every type and holds
    each setting."""
    async with Emulator() as k, kmock.Server(k):
        k.declare(*(key(resource) for resource in RESOURCES))
        shop = namespace("shop")
        shop["metadata"]["annotations"] = {"meshcp.dev/permissive": "true"}  # web may call web
        seed(k, shop, web_service(), web_pod(), *OSM_POLICIES)
        settings = kube_settings(tmp_path, str(k.url))
        runtime = await ControllerRuntime.open(settings)
        async with runtime:

            async def ready() -> bool:
                return runtime.readiness.ready

            await eventually(ready, what="the controller to sync from the API")
            state = runtime.store.state
            counts = (len(state.retries), len(state.upstream_traffic_settings), len(state.egresses))
            assert (*counts, len(state.ingress_backends)) == (1, 1, 3, 1)
            assert state.problems == ()
            pod = parse_object(web_pod())
            assert isinstance(pod, Pod)
            node_id = ProxyIdentity(proxy_uuid(pod), Identity("shop", "web")).name
            async with EnvoyProcess(ads_bootstrap(node_id, runtime.xds.port, delta=False)) as envoy:

                def types() -> dict[str, Any]:
                    connection = runtime.proxies.find(node_id)
                    found = connection.status()["types"] if connection is not None else {}
                    assert isinstance(found, dict)
                    return found

                async def all_acked() -> bool:
                    found = types()
                    return all(
                        found.get(t, {}).get("version_acked") not in (None, "")
                        and found[t]["version_acked"] == found[t]["version_sent"]
                        for t in ("cds", "eds", "lds", "rds")
                    )

                await envoy.wait_for(all_acked, 20, "Envoy to ACK every type")
                assert all(status["last_nack"] is None for status in types().values()), types()
                dump = await envoy.config_dump()
                clusters = dump["clusters"]["dynamic_active_clusters"]
                cluster = _named(clusters, "cluster", "shop/web|80")
                thresholds = cluster["circuit_breakers"]["thresholds"][0]
                assert (thresholds["max_connections"], thresholds["max_requests"]) == (7, 8)
                assert (thresholds["max_pending_requests"], thresholds["max_retries"]) == (9, 3)
                assert cluster["connect_timeout"] == "2s"
                assert cluster["outlier_detection"]["consecutive_5xx"] == 4
                routes = {
                    r["route_config"]["name"]: r["route_config"]
                    for r in dump["routes"]["dynamic_route_configs"]
                }
                outbound = _named(
                    [{"h": h} for h in routes["rds-outbound.80"]["virtual_hosts"]], "h", "shop/web|80"
                )
                assert outbound["retry_policy"]["num_retries"] == 4
                inbound = routes["rds-inbound.80"]["virtual_hosts"][0]
                assert "envoy.filters.http.local_ratelimit" in inbound["typed_per_filter_config"]
                assert inbound["routes"][0]["match"]["safe_regex"]["regex"] == "/books/.*"
                listeners = {item["name"]: item for item in dump["listeners"]["dynamic_listeners"]}
                chains = listeners["inbound-listener"]["active_state"]["listener"]["filter_chains"]
                assert chains[0]["filters"][0]["name"] == NETWORK_LOCAL_RATE_LIMIT
                ingress = _named([{"c": c} for c in chains], "c", "ingress:shop/web|80|local")
                match = ingress["filter_chain_match"]
                assert (match["destination_port"], match["transport_protocol"]) == (8080, "raw_buffer")
                assert ingress["filters"][0]["name"] == NETWORK_LOCAL_RATE_LIMIT  # the pods' limit
                out = listeners["outbound-listener"]["active_state"]["listener"]
                egress = {c["name"]: c for c in out["filter_chains"] if c["name"].startswith("egress:")}
                assert sorted(egress) == ["egress:http.80", "egress:https.443", "egress:tcp.5432"]
                assert egress["egress:https.443"]["filter_chain_match"]["server_names"] == ["httpbin.org"]
                assert [f["name"] for f in out["listener_filters"]][
                    -1
                ] == "envoy.filters.listener.tls_inspector"
