"""`/sync` on the controller's HTTP listener (what `meshcp check` reads through the API
server): two real Envoys on one in-process controller, one holding its configuration and one
NACKing a listener (tests/test_sync_status.py: the summary's rules)."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.support import eventually
from tests.support.ads import ALL_TYPES, Mesh, serving, type_status, wait_acked
from tests.support.bootstrap import ads_bootstrap
from tests.support.envoy import REAL_ENVOY, EnvoyProcess

pytestmark = REAL_ENVOY


async def test_sync_counts_the_proxy_in_sync_and_names_the_one_nacking() -> None:
    good_mesh = Mesh({"c-a": 1}, route_to="c-a")
    bad_mesh = Mesh({"c-a": 1}, route_to="c-a", bad_listener=True)
    async with serving() as runtime:
        good, bad = good_mesh.snapshot(), bad_mesh.snapshot()
        runtime.cache.set_snapshot("envoy-good", good)
        runtime.cache.set_snapshot("envoy-bad", bad)
        url = f"http://127.0.0.1:{runtime.http.port}/sync"
        async with (
            EnvoyProcess(ads_bootstrap("envoy-good", runtime.xds.port, False)) as envoy_good,
            EnvoyProcess(ads_bootstrap("envoy-bad", runtime.xds.port, False)) as envoy_bad,
            aiohttp.ClientSession() as client,
        ):
            await wait_acked(runtime, "envoy-good", good, envoy_good, ALL_TYPES)
            # The LDS update is rejected whole, so its routes are never asked for.
            await wait_acked(runtime, "envoy-bad", bad, envoy_bad, ("cds", "eds"))

            async def nacked() -> bool:
                return type_status(runtime, "envoy-bad", "lds").get("last_nack") is not None

            await eventually(nacked, 15, "envoy-bad's LDS NACK", envoy_bad.log_tail)
            async with client.get(url) as response:
                assert response.status == 200
                body: dict[str, Any] = await response.json()
            assert (body["connected"], body["in_sync"], body["not_in_sync_total"]) == (2, 1, 1)
            [entry] = body["not_in_sync"]
            assert (entry["node_id"], entry["type"], entry["state"]) == ("envoy-bad", "lds", "NACKED")
            assert entry["message"].endswith("value must be less than or equal to 65535)"), entry
            assert "\n" not in entry["message"] and len(entry["message"]) <= 301

            async with client.get(url, params={"limit": "0"}) as response:
                none_named = await response.json()
            assert (none_named["not_in_sync"], none_named["not_in_sync_total"]) == ([], 1)
            async with client.get(url, params={"limit": "many"}) as response:
                assert response.status == 400
                assert await response.text() == "limit=many: must be a whole number\n"
