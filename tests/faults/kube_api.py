"""A Kubernetes API that misbehaves on command (kmock's emulator, `tests.sources.kube_fixtures`),
and a controller following it: what the Kubernetes fault tests share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock

from meshcp.cache import resource_types
from meshcp.runtime.controller import ControllerRuntime
from meshcp.sources.kubernetes import RESOURCES
from meshcp.sources.kubernetes_watch import WatchSettings
from tests.sources.kube_fixtures import Emulator, kube_settings
from tests.sources.kube_objects import key

#: Back-off and timeouts scaled down so that a test sees several retries in a second; the
#: shape (exponential, capped, reset once a watch is open) is the production one.
FAST = WatchSettings(
    page_size=2, backoff_initial=0.05, backoff_max=0.4, request_timeout=1.0, read_timeout=30.0
)


@attrs.define(kw_only=True)
class FaultyApi(Emulator):
    """The emulator, with faults switched on and off by the test."""

    #: While set, every request is answered with this status instead.
    status: int | None = attrs.field(default=None, init=False)
    #: `status` and `hang` apply to watch requests only (lists are answered).
    only_watches: bool = attrs.field(default=False, init=False)
    #: While set and not yet released, requests get no answer at all (a hung API server).
    hang: asyncio.Event | None = attrs.field(default=None, init=False)
    #: Requests answered with `status`.
    refused: int = attrs.field(default=0, init=False)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        watch = raw_request.rel_url.query.get("watch") in ("true", "True")
        faulty = watch or not self.only_watches
        if self.hang is not None and faulty:
            await self.hang.wait()
        if self.status is not None and faulty:
            self.refused += 1
            body = {"kind": "Status", "code": self.status, "message": "injected fault"}
            return aiohttp.web.json_response(body, status=self.status)
        return await super().__call__(raw_request)

    def set(self, resource_key: str, namespace: str | None, name: str, stored: dict[str, Any]) -> None:
        """Change an object behind the watches' back, as seen by the next list."""
        self.objects[resource_key, namespace, name] = stored

    async def stop_watches(self) -> None:
        """End every open watch stream (before the server goes away: aiohttp would wait for
        them)."""
        for resource in RESOURCES:
            await self.end_watches(key(resource))


@asynccontextmanager
async def api_server(api: FaultyApi, port: int) -> AsyncIterator[None]:
    """The emulator listening on `port` for the block; its watches ended on the way out."""
    async with kmock.Server(api, port=port):
        try:
            yield
        finally:
            await api.stop_watches()


@asynccontextmanager
async def following(
    server: str, directory: Path, watch: WatchSettings = FAST, state_dir: Path | None = None
) -> AsyncIterator[ControllerRuntime]:
    """A controller with `--source kubernetes` on `server`, running for the block."""
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    settings = kube_settings(directory, server, watch=watch)
    settings.ca.state_dir = state_dir
    runtime = await ControllerRuntime.open(settings)
    async with runtime:
        yield runtime


def compiled(runtime: ControllerRuntime) -> dict[str, dict[str, Any]]:
    """Every proxy class's configuration as resource versions (content hashes), secrets by
    name only (each controller issues its own keys)."""
    out: dict[str, dict[str, Any]] = {}
    for class_key in runtime.cache.keys():  # noqa: SIM118 - a method, not a dict
        snapshot = runtime.cache.get(class_key)
        assert snapshot is not None
        types: dict[str, Any] = {
            url: dict(snapshot.versions(url)) for url in snapshot.type_urls() if url != resource_types.SECRET
        }
        types[resource_types.SECRET] = sorted(snapshot.resources(resource_types.SECRET))
        out[class_key] = types
    return out
