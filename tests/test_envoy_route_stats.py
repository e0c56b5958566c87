"""Per-route stats turned on over RDS alone: a real Envoy with the sidecar bootstrap
(`sidecar.bootstrap.bootstrap`) connected to the controller over ADS keeps running while
its outbound routes gain their stat prefixes, and then exports per-route series.

The controller serves hand-built snapshots whose routes are `compile.rds`'s, so the test
shows what the proxy does with them; which routes a MeshConfig produces is
tests/policy/test_route_stats.py's subject.
"""

from __future__ import annotations

import aiohttp

from meshcp.cache import Encoder, Snapshot, resource_types
from meshcp.compile import naming, rds
from meshcp.model.smi import HTTPMatch
from meshcp.policy.types import RouteStat, ServiceKey
from meshcp.policy.types import Upstream as UpstreamPolicy
from meshcp.sidecar.bootstrap import Workload, as_dict, bootstrap
from tests.sidecar.test_bootstrap import parse_prometheus
from tests.support.ads import LISTENER, TYPES, sample, serving, wait_acked
from tests.support.envoy import REAL_ENVOY, EnvoyProcess
from tests.support.http import new_connection_per_request
from tests.support.resources import eds_cluster, http_listener, load_assignment, snapshot
from tests.support.upstream import Upstream

pytestmark = REAL_ENVOY

NODE = "route-stats"
WORKLOAD = Workload(namespace="bookstore", pod="bookstore-v1-0", service_account="bookstore")
CLUSTER = naming.cluster("bookwarehouse", "bookwarehouse", 8080)
HOST = "bookwarehouse.bookwarehouse:8080"
READ = RouteStat("bookwarehouse-routes", HTTPMatch("read", path_regex="/books", methods=("GET",)))


def _snapshot(encoder: Encoder, upstream_port: int, route_stats: bool) -> Snapshot:
    upstream = UpstreamPolicy(
        ServiceKey("bookwarehouse", "bookwarehouse"),
        8080,
        "http",
        ("10.96.0.20",),
        (),
        route_stats=(READ,) if route_stats else None,
    )
    routes = rds.outbound_route(8080, [rds.outbound_virtual_host(upstream, "bookstore")])
    return snapshot(
        encoder,
        eds_cluster(CLUSTER),
        load_assignment(CLUSTER, upstream_port),
        http_listener(LISTENER, 0, routes.name),
        routes,
    )


async def _get_books(client: aiohttp.ClientSession, port: int) -> int:
    async with client.get(f"http://127.0.0.1:{port}/books", headers={"Host": HOST}) as response:
        return response.status


async def test_per_route_series_appear_over_rds_without_a_restart() -> None:
    encoder = Encoder()
    async with (
        serving() as runtime,
        Upstream("bookwarehouse") as upstream,
        new_connection_per_request() as client,
    ):
        config = bootstrap(
            NODE, "bookstore.bookstore", "127.0.0.1", runtime.xds.port, tls=None, admin_port=0, **WORKLOAD
        )
        async with EnvoyProcess(as_dict(config)) as envoy:
            off = _snapshot(encoder, upstream.port, route_stats=False)
            runtime.cache.set_snapshot(NODE, off)
            await wait_acked(runtime, NODE, off, envoy, tuple(TYPES))
            port = await envoy.listener_port(LISTENER) or 0

            async def served() -> bool:
                return await _get_books(client, port) == 200

            await envoy.wait_for(served, what="GET /books through the outbound routes")
            names = {name for name, _, _ in parse_prometheus(await envoy.admin_get("/stats/prometheus"))}
            assert "envoy_cluster_upstream_rq_total" in names
            assert not any(name.startswith("envoy_vhost") for name in names)

            pid = envoy.pid
            pushed = {short: sample(runtime, "meshcp_xds_responses_total", short) for short in TYPES}
            on = _snapshot(encoder, upstream.port, route_stats=True)
            assert on.changed_types(off) == {resource_types.ROUTE}
            runtime.cache.set_snapshot(NODE, on)
            await wait_acked(runtime, NODE, on, envoy, tuple(TYPES))
            for _ in range(3):
                assert await _get_books(client, port) == 200

            route_totals: dict[tuple[str, str, str], float] = {}

            async def counted() -> bool:
                route_totals.clear()
                for name, labels, value in parse_prometheus(await envoy.admin_get("/stats/prometheus")):
                    if name == "envoy_vhost_route_upstream_rq_total":
                        key = (labels["destination_service"], labels["route_group"], labels["route_match"])
                        route_totals[key] = value
                return route_totals.get(("bookwarehouse", "bookwarehouse-routes", "read")) == 3

            await envoy.wait_for(counted, what="3 requests counted on the route 'read'")
            # The same process, and only the route configuration was pushed again.
            assert envoy.pid == pid
            after = {short: sample(runtime, "meshcp_xds_responses_total", short) for short in TYPES}
            assert after == {**pushed, "rds": pushed["rds"] + 1}
            assert route_totals == {
                ("bookwarehouse", "bookwarehouse-routes", "read"): 3,
                ("bookwarehouse", "*", "*"): 0,
            }
