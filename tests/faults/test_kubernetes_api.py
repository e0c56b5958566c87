"""Fault injection: the Kubernetes API misbehaving under a running controller (`--source
kubernetes`, against kmock's emulator over real HTTP). Watches dropped, `410 Gone`, 500s,
requests that get no answer, and the API gone for a while: each time the source retries
with back-off, `/readyz` says so while it cannot follow the API (xDS keeps serving the
last state), and once the API answers again the controller's compiled configuration is
exactly what a fresh controller compiles from the API's state: nothing the API accepted
during the fault is lost.

The back-off and timeouts are scaled down (`FAST`); the outage lasts `OUTAGE` seconds
here (the issue asks for 60 s: `docs/reliability.md` gives the bound for that length).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshcp.runtime.controller import ControllerRuntime
from meshcp.sources.kubernetes import RESOURCES
from meshcp.sources.kubernetes_watch import WatchSettings
from tests.faults.figures import Stopwatch, record
from tests.faults.kube_api import FAST, FaultyApi, api_server, compiled, following
from tests.sources.kube_fixtures import status_410
from tests.sources.kube_objects import BY_KIND, CHANGES, SAMPLES, key, pod, seed, stored, url_of
from tests.support import eventually, free_port

#: Seconds the API server is away in `test_the_api_gone_for_a_while`. The issue's 60 s, with
#: the production back-off, is `MESHCP_FAULT_API_OUTAGE=60` (a minute longer run).
OUTAGE = float(os.environ.get("MESHCP_FAULT_API_OUTAGE", "3"))
#: The back-off of that test: scaled down for the short outage, the production one else.
OUTAGE_WATCH = FAST if OUTAGE <= 3 else WatchSettings()
PODS = BY_KIND["Pod"]


@pytest.fixture
async def api() -> AsyncIterator[FaultyApi]:
    async with FaultyApi() as emulator:
        emulator.declare(*(key(resource) for resource in RESOURCES))
        seed(emulator, *SAMPLES.values(), pod("web-1", ip="10.0.0.2"), pod("web-2", ip="10.0.0.3"))
        yield emulator


def change_behind_the_watches(api: FaultyApi) -> None:
    """Changes only a list sees (a watch that was not there when they happened): a changed
    Service and EndpointSlice, a new pod, a pod gone."""
    for kind in ("Service", "EndpointSlice"):
        manifest = copy.deepcopy(SAMPLES[kind])
        CHANGES[kind](manifest)
        resource = BY_KIND[kind]
        api.set(key(resource), "shop", manifest["metadata"]["name"], stored(manifest))
    api.set(key(PODS), "shop", "web-3", stored(pod("web-3", ip="10.0.0.4")))
    del api.objects[key(PODS), "shop", "web-2"]


async def readyz(runtime: ControllerRuntime) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{runtime.http.port}/readyz") as reply,
    ):
        return reply.status, await reply.text()


async def wait_ready(runtime: ControllerRuntime, ready: bool = True, within: float = 20) -> None:
    async def reached() -> bool:
        status, _ = await readyz(runtime)
        return (status == 200) is ready and runtime.readiness.ready is ready

    await eventually(
        reached, within, f"/readyz {'200' if ready else '503'}", lambda: str(runtime.readiness.pending)
    )


async def published(runtime: ControllerRuntime) -> dict[str, Any]:
    """The compiled configuration once a class is published: ready means compiled, and a
    class is published once its identity's first certificate is issued, in the background."""

    async def some() -> bool:
        return compiled(runtime) != {}

    await eventually(some, 20, "a class to be published")
    return compiled(runtime)


async def converged_with_a_fresh_controller(
    runtime: ControllerRuntime, url: str, directory: Path, before: dict[str, Any]
) -> dict[str, Any]:
    """Until the controller's compiled configuration equals that of a controller started
    now on the same API; returns it (it differs from `before`: the changes made it)."""
    async with following(url, directory / "fresh") as fresh:
        await wait_ready(fresh)

        async def same() -> bool:
            return compiled(runtime) == compiled(fresh) != {}

        await eventually(same, 20, "the recovered controller to compile what a fresh one compiles")
        after = compiled(runtime)
    assert after != before
    return after


def sample(runtime: ControllerRuntime, name: str, labels: dict[str, str]) -> float | None:
    value: float | None = runtime.metrics.registry.get_sample_value(name, labels)
    return value


async def test_dropped_watches_are_resumed_without_loss(api: FaultyApi, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with api_server(api, port), following(url, tmp_path / "controller") as runtime:
        await wait_ready(runtime)
        before = await published(runtime)
        for resource in RESOURCES:
            await api.wait_watches(url_of(resource), 1)
        change_behind_the_watches(api)
        clock = Stopwatch()
        for resource in RESOURCES:
            await api.drop_watches(url_of(resource), key(resource))
        # and a change through the API while the source reconnects: a watch event or a list
        await api.post(url_of(PODS, "shop"), json=stored(pod("web-4", ip="10.0.0.5")))
        await converged_with_a_fresh_controller(runtime, url, tmp_path, before)
        record("watches dropped", "until compiled = API state", clock())
        assert sample(runtime, "meshcp_kubernetes_watch_restarts_total", {"kind": "Pod", "reason": "error"})
        assert runtime.readiness.ready


async def test_410_gone_relists_without_loss_and_stays_ready(api: FaultyApi, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with api_server(api, port), following(url, tmp_path / "controller") as runtime:
        await wait_ready(runtime)
        before = await published(runtime)
        for resource in RESOURCES:
            await api.wait_watches(url_of(resource), 1)
        change_behind_the_watches(api)
        clock = Stopwatch()
        for resource in RESOURCES:
            await api.inject(key(resource), status_410())
        await converged_with_a_fresh_controller(runtime, url, tmp_path, before)
        record("410 Gone", "until compiled = API state", clock())
        for resource in RESOURCES:
            labels = {"kind": resource.kind, "reason": "expired"}
            # One 410 per watched resource; two resources share the kind MeshConfig (meshcp's, OSM's).
            expected = sum(1 for other in RESOURCES if other.kind == resource.kind)
            assert sample(runtime, "meshcp_kubernetes_watch_restarts_total", labels) == expected
            # an expired version is routine: the source never stopped following the API
            assert sample(runtime, "meshcp_kubernetes_watch_failing", {"kind": resource.kind}) is None
        assert runtime.readiness.ready


@pytest.mark.parametrize("only_watches", [False, True], ids=["every-request", "watches-only"])
async def test_500s_back_off_turn_readiness_false_and_recover(
    api: FaultyApi, tmp_path: Path, only_watches: bool, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with api_server(api, port), following(url, tmp_path / "controller") as runtime:
        await wait_ready(runtime)
        before = await published(runtime)
        for resource in RESOURCES:
            await api.wait_watches(url_of(resource), 1)
        change_behind_the_watches(api)
        api.status, api.only_watches = 500, only_watches
        with caplog.at_level(logging.ERROR, "meshcp.sources.kubernetes"):
            for resource in RESOURCES:
                await api.drop_watches(url_of(resource), key(resource))
            await wait_ready(runtime, False)
            status, body = await readyz(runtime)
            assert status == 503 and "kubernetes (cannot follow the API: " in body
            assert sample(runtime, "meshcp_kubernetes_watch_failing", {"kind": "Pod"}) == 1
            # The back-off grows to its cap, even when every list succeeds and every watch
            # fails: the kind is not listed again every `backoff_initial`.

            async def backed_off() -> bool:
                backoff = sample(runtime, "meshcp_kubernetes_watch_backoff_seconds", {"kind": "Pod"})
                return backoff == FAST.backoff_max

            await eventually(backed_off, 20, "the back-off to reach its cap")
            assert api.refused >= len(RESOURCES)
            # one error line when the kind starts failing (its dropped watch), not one per retry
            failed = [r.getMessage() for r in caplog.records if " pods failed: " in r.getMessage()]
            assert len(failed) == 1, failed
        api.status = None
        clock = Stopwatch()
        await wait_ready(runtime)
        record(f"500 ({'watches only' if only_watches else 'every request'})", "/readyz 200 again", clock())
        await converged_with_a_fresh_controller(runtime, url, tmp_path, before)
        record(
            f"500 ({'watches only' if only_watches else 'every request'})",
            "until compiled = API state",
            clock(),
        )
        assert sample(runtime, "meshcp_kubernetes_watch_failing", {"kind": "Pod"}) == 0
        assert sample(runtime, "meshcp_kubernetes_watch_backoff_seconds", {"kind": "Pod"}) == 0


async def test_watches_that_get_no_answer_time_out_and_recover(
    api: FaultyApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    watch = WatchSettings(page_size=2, backoff_initial=0.05, backoff_max=0.4, request_timeout=0.5)
    async with api_server(api, port), following(url, tmp_path / "controller", watch) as runtime:
        await wait_ready(runtime)
        before = await published(runtime)
        for resource in RESOURCES:
            await api.wait_watches(url_of(resource), 1)
        change_behind_the_watches(api)
        api.hang, api.only_watches = asyncio.Event(), True  # connections accepted, never answered
        with caplog.at_level(logging.DEBUG, "meshcp.sources.kubernetes"):  # retries: debug lines
            for resource in RESOURCES:
                await api.drop_watches(url_of(resource), key(resource))

            async def timed_out() -> bool:  # the hung watch is given up, not waited on for ever
                return "watching pods failed: no answer within 0.5s; retrying" in caplog.text

            await eventually(timed_out, 20, "the unanswered watch to time out")
        await wait_ready(runtime, False)
        status, body = await readyz(runtime)
        assert status == 503 and "kubernetes (cannot follow the API: " in body
        api.hang.set()
        api.hang = None
        clock = Stopwatch()
        await wait_ready(runtime)
        record("requests never answered", "/readyz 200 again", clock())
        await converged_with_a_fresh_controller(runtime, url, tmp_path, before)
        record("requests never answered", "until compiled = API state", clock())


async def test_the_api_gone_for_a_while(api: FaultyApi, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with following(url, tmp_path / "controller", OUTAGE_WATCH) as runtime:
        async with api_server(api, port):
            await wait_ready(runtime)
            before = await published(runtime)
        # the API server is gone; the cluster changes meanwhile
        change_behind_the_watches(api)
        await wait_ready(runtime, False)
        assert compiled(runtime) == before  # the last state is still served
        await asyncio.sleep(OUTAGE)  # the fault's length, not a synchronisation
        async with api_server(api, port):
            clock = Stopwatch()
            # at most the longest back-off step after the API returned
            await wait_ready(runtime, within=OUTAGE_WATCH.backoff_max + 20)
            record(f"API gone {OUTAGE:g} s", "/readyz 200 after the API returned", clock())
            await converged_with_a_fresh_controller(runtime, url, tmp_path, before)
            record(f"API gone {OUTAGE:g} s", "until compiled = API state", clock())
