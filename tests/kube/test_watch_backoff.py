"""A watch that gets 410 Gone for ever backs off, against the real API server.

An API server answers a watch from a compacted revision with one ERROR event (code 410); the
first is routine (list again at once), but one that answers *every* watch that way would
have the loop list everything of the kind as fast as it can. Nothing in a healthy API
server does that for long, so a small proxy on loopback sits in front of the real one: it
forwards every request, and while `gone` is set answers the watches of one kind as the
API server answers a too-old resourceVersion. The loop's waits are read from the proxy's
request log (the list requests' times) and from the waits the loop asked for; the loop
runs in this process, with the controller's watch observer (metrics and readiness).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshcp.kube.client import default_api_client
from meshcp.runtime.controller import ApiHealth
from meshcp.sources.kubernetes_watch import ListWatch, Resource, WatchSettings
from meshcp.telemetry.metrics import Metrics
from meshcp.telemetry.readiness import Readiness
from tests.support import eventually, free_port
from tests.support.kube import ApiServer, write_kubeconfig

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap", namespaced=True)
NAMESPACE = "watch-backoff"
SETTINGS = WatchSettings(backoff_initial=0.1, backoff_max=0.8, timeout_seconds=300)
#: What kube-apiserver sends on a watch from a compacted revision.
EXPIRED = {
    "type": "ERROR",
    "object": {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version: 1 (2)",
        "reason": "Expired",
        "code": 410,
    },
}
_HOP = {"authorization", "accept", "content-type"}


class GoneProxy:
    """Plain HTTP on loopback in front of the real API server (TLS, the admin's token from
    the client). Logs (monotonic time, "list" or "watch") of each request for `resource`."""

    def __init__(self, kube: ApiServer, resource: Resource) -> None:
        self._upstream = kube.url
        self._ssl = ssl.create_default_context(cafile=str(kube.ca_file))
        self._path = resource.path
        self.gone = True
        self.requests: list[tuple[float, str]] = []
        self.port = free_port()
        self._streams: set[asyncio.Event] = set()
        self._session: aiohttp.ClientSession | None = None

    def lists(self) -> list[float]:
        return [at for at, what in self.requests if what == "list"]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") in ("true", "True", "1")
        if request.path == self._path:
            self.requests.append((time.monotonic(), "watch" if watch else "list"))
            if watch and self.gone:
                response = web.StreamResponse(headers={"Content-Type": "application/json"})
                await response.prepare(request)
                await response.write(json.dumps(EXPIRED).encode() + b"\n")
                await response.write_eof()
                return response
        headers = {k: v for k, v in request.headers.items() if k.lower() in _HOP}
        assert self._session is not None
        async with self._session.request(
            request.method,
            self._upstream + request.path_qs,
            headers=headers,
            data=await request.read(),
            ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={"Content-Type": upstream.headers.get("Content-Type", "application/json")},
            )
            await response.prepare(request)
            cut = asyncio.Event()
            if watch and request.path == self._path:
                self._streams.add(cut)
            try:
                while chunk := await _next_chunk(upstream, cut):
                    await response.write(chunk)
                if cut.is_set():  # expired mid-stream, as compaction does it
                    await response.write(json.dumps(EXPIRED).encode() + b"\n")
            finally:
                self._streams.discard(cut)
            await response.write_eof()
            return response

    def expire(self) -> None:
        """From now on every watch of the kind gets 410, the open ones included."""
        self.gone = True
        for cut in self._streams:
            cut.set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[GoneProxy]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        async with aiohttp.ClientSession() as self._session:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            try:
                yield self
            finally:
                await runner.cleanup()


async def _next_chunk(upstream: aiohttp.ClientResponse, cut: asyncio.Event) -> bytes:
    """The next bytes from upstream; b"" at its end or once `cut` is set."""
    read = asyncio.ensure_future(upstream.content.readany())
    stop = asyncio.ensure_future(cut.wait())
    done, _ = await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
    if read in done:
        stop.cancel()
        return read.result()
    read.cancel()
    return b""


class Listed:
    """The loop's consumer: how many lists it handed over."""

    def __init__(self) -> None:
        self.lists = 0

    def listed(self, resource: Resource, items: list[Mapping[str, Any]]) -> None:
        self.lists += 1

    def changed(self, resource: Resource, event_type: str, obj: Mapping[str, Any]) -> None:
        pass


def gauge(metrics: Metrics, name: str) -> float | None:
    value: float | None = metrics.registry.get_sample_value(name, {"kind": "ConfigMap"})
    return value


async def test_a_watch_that_gets_410_for_ever_backs_off_and_recovery_resets_it(
    kube: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    kube.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}])
    proxy = GoneProxy(kube, CONFIGMAPS)
    kubeconfig = write_kubeconfig(
        kube.directory / "backoff.kubeconfig",
        f"http://127.0.0.1:{proxy.port}",
        kube.ca_file,
        kube.admin_token,
        "admin",
    )
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # the loop's own waits, recorded
        waits.append(seconds)
        await asyncio.sleep(seconds)

    metrics, readiness = Metrics(), Readiness()
    consumer = Listed()
    async with proxy.running(), await default_api_client(config_file=str(kubeconfig)) as api:
        loop = ListWatch(
            api, CONFIGMAPS, consumer, settings=SETTINGS, sleep=sleep, observer=ApiHealth(metrics, readiness)
        )
        with caplog.at_level(logging.INFO, "meshcp.sources.kubernetes"):
            task = asyncio.create_task(loop.run())
            try:

                async def capped() -> bool:
                    return len(waits) >= 6

                await eventually(capped, timeout=30, what="the loop to back off to its cap")
                # The first 410 relists at once; the second and later wait, doubling to the cap.
                assert waits[:6] == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]
                assert not readiness.ready and "ConfigMap" in " ".join(readiness.pending)
                assert gauge(metrics, "meshcp_kubernetes_watch_failing") == 1
                assert gauge(metrics, "meshcp_kubernetes_watch_backoff_seconds") == 0.8
                expired = metrics.registry.get_sample_value(
                    "meshcp_kubernetes_watch_restarts_total", {"kind": "ConfigMap", "reason": "expired"}
                )
                assert expired is not None and expired >= 7
                # The server saw it: each list after the second came at least the wait the
                # loop asked for after the one before (list 0, 410, list 1 at once, 410, wait
                # waits[0], list 2, ...).
                lists = proxy.lists()
                gaps = [later - earlier for earlier, later in itertools.pairwise(lists[1:])]
                assert len(gaps) >= 5, proxy.requests
                for gap, wait in zip(gaps, waits, strict=False):
                    assert gap >= wait, (gaps, waits)
                # One line when the kind started failing, none per retry.
                failing = [r for r in caplog.records if "got 410 Gone" in r.getMessage()]
                assert len(failing) == 1, [r.getMessage() for r in failing]

                # Recovery: watches pass through again; a change reaches the open watch.
                proxy.gone = False
                ticks = 0

                async def recovered() -> bool:
                    nonlocal ticks
                    if readiness.ready:
                        return True
                    ticks += 1  # a change, so that a watch opened since gets an event
                    await asyncio.to_thread(
                        kube.kubectl, "create", "configmap", f"tick-{ticks}", "-n", NAMESPACE
                    )
                    return False

                await eventually(recovered, timeout=30, what="the watch to work again")
                assert gauge(metrics, "meshcp_kubernetes_watch_failing") == 0
                assert gauge(metrics, "meshcp_kubernetes_watch_backoff_seconds") == 0
                assert "watching configmaps works again" in caplog.text

                # ... and the back-off starts from the beginning on the next streak.
                before = len(waits)
                proxy.expire()

                async def failing_again() -> bool:
                    return len(waits) >= before + 2

                await eventually(failing_again, timeout=30, what="the loop to fail again")
                assert waits[before : before + 2] == [0.1, 0.2]
                assert not readiness.ready
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
