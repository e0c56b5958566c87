"""A kmock Kubernetes emulator with what the source's tests need beyond kmock 0.8.

- `watch=True` (what kubernetes_asyncio sends: Python's bool, urlencoded) is served as a
  watch; kmock recognises only the lowercase `watch=true` (a real API server takes both).
- Lists are paginated (`limit`/`continue`) and carry a growing `resourceVersion`.
- `inject` puts a raw event (410 ERROR, BOOKMARK, an unknown type) on the watch streams.
- `drop_watches` cuts watch connections, as a network failure would; `end_watches` ends
  them cleanly, as the server does after `timeoutSeconds`.
- `fail_next` answers the next requests with an error status (an API server not ready yet).
- Namespaces are served: kmock 0.8 reads `/api/v1/namespaces[/NAME]` as the start of a
  namespaced path and fails (500), so those paths are served as the resource `NAMESPACES`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp.web
import attrs
import kmock
import yaml
import yarl

from meshcp.runtime.settings import Address, Settings

#: Where the emulator keeps Namespace objects (see the module's docstring).
NAMESPACES = "v1/x-namespaces"
_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(/[^/]+)?$")


#: Put on a watch bus: the streams end there.
_END: dict[str, Any] = {"type": "END-OF-STREAM", "object": {}}


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    list_version: int = attrs.field(default=0, init=False)
    #: Every list request's (path, query), in order.
    list_requests: list[tuple[str, dict[str, str]]] = attrs.field(factory=list, init=False)
    #: Every watch request's (path, query), in order.
    watch_requests: list[tuple[str, dict[str, str]]] = attrs.field(factory=list, init=False)
    #: The Authorization header of every request.
    authorizations: list[str | None] = attrs.field(factory=list, init=False)
    fail_next: int = attrs.field(default=0, init=False)
    _watch_started: asyncio.Condition = attrs.field(factory=asyncio.Condition, init=False)
    _subscribed: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _watch_transports: list[tuple[str, asyncio.Transport]] = attrs.field(factory=list, init=False)

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        self.authorizations.append(raw_request.headers.get("Authorization"))
        if self.fail_next > 0:
            self.fail_next -= 1
            status = {"kind": "Status", "code": 503, "message": "the server is not ready"}
            return aiohttp.web.json_response(status, status=503)
        url = original = raw_request.rel_url
        if match := _NAMESPACE_PATH.match(url.path):
            url = yarl.URL.build(path="/api/v1/x-namespaces" + (match.group(1) or ""), query=url.query)
        if url.query.get("watch") == "True":
            url = url.update_query(watch="true")
        if url != raw_request.rel_url:
            raw_request = raw_request.clone(rel_url=url)
        if url.query.get("watch") == "true":
            if isinstance(raw_request.transport, asyncio.Transport):
                self._watch_transports.append((original.path, raw_request.transport))
            self.watch_requests.append((original.path, dict(original.query)))
        elif raw_request.method == "GET":
            self.list_requests.append((original.path, dict(original.query)))
        return await super().__call__(raw_request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        payload: Any = await super()._serve_list(request)
        self.list_version += 1
        metadata: dict[str, Any] = {"resourceVersion": str(self.list_version)}
        items: list[Any] = payload["items"]
        limit = int(request.params.get("limit") or 0)
        if limit:
            start = int(request.params.get("continue") or 0)
            if start + limit < len(items):
                metadata["continue"] = str(start + limit)
            items = items[start : start + limit]
        return {"metadata": metadata, "items": items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        """kmock's watch, subscribed to the event bus before the snapshot of existing objects
        is taken (kmock subscribes after, which can lose an event put in between), and with
        `wait_watches` told once it is subscribed."""
        yield b""
        resource = request.resource
        assert resource is not None
        bus = self._buses[resource]
        async with self._lock:
            mark = await bus.mark()
            snapshot = [
                {"type": "ADDED", "object": obj.raw}
                for (kind, namespace, _), obj in self.objects.items()
                if kind == resource and not obj.deleted and request.namespace in (None, namespace)
            ]
        async with self._watch_started:
            self._subscribed[request.url.path] += 1
            self._watch_started.notify_all()
        for event in snapshot:
            yield event
        async for event in mark:
            if event is _END:
                return  # ended or dropped: write nothing more
            namespace = event.get("object", {}).get("metadata", {}).get("namespace")
            if request.namespace in (None, namespace):
                yield event

    def declare(self, *keys: str) -> None:
        """Declare resources ("v1/pods", "group/version/plural") before use."""
        for key in keys:
            self.resources[key] = cast(kmock.ResourceDict, {})

    async def wait_watches(self, path: str, count: int) -> None:
        """Until `count` watch requests for `path` have arrived."""
        async with self._watch_started:
            await self._watch_started.wait_for(
                lambda: sum(p == path for p, _ in self.watch_requests) >= count
            )

    async def inject(self, resource: str, event: dict[str, Any]) -> None:
        """Send `event` on every open watch of `resource` ("v1/pods", "group/version/plural")."""
        await self._buses[kmock.resource(*resource.rsplit("/", 1))].put(event)

    async def drop_watches(self, path: str, resource: str) -> None:
        """Abort the open watch connections of `path` (no clean end of the chunked stream)."""
        kept = []
        for watched, transport in self._watch_transports:
            if watched == path:
                transport.abort()
            else:
                kept.append((watched, transport))
        self._watch_transports = kept
        await self.end_watches(resource)

    async def end_watches(self, resource: str) -> None:
        """End the open watch streams of `resource` cleanly (as `timeoutSeconds` does)."""
        await self.inject(resource, _END)


def status_410() -> dict[str, Any]:
    return {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": 410,
            "reason": "Expired",
        },
    }


def dumps(value: Any) -> str:
    return json.dumps(value)


def kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig pointing at the emulator `server` (with a token, as a real user has)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "mock", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "test-token"}}],
                "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "tester"}}],
                "current-context": "mock",
            }
        )
    )
    return path


def kube_settings(directory: Path, server: str, **more: Any) -> Settings:
    """A controller with `--source kubernetes` on the emulator `server`, listening on
    loopback ports of its own (`more`: other settings)."""
    return Settings(
        xds_address=Address("127.0.0.1", 0),
        http_address=Address("127.0.0.1", 0),
        kubernetes=True,
        kubeconfig=str(kubeconfig(directory / "kubeconfig", server)),
        **more,
    )
