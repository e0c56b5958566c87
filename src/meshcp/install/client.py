"""The API calls of install, uninstall and check: server-side apply, get, delete, create,
each with a timeout, each failure one line naming the object.

Raw REST through kubernetes-asyncio's ApiClient (its credentials, TLS and token refresh):
server-side apply of any kind is one PATCH with `application/apply-patch+yaml`, which the
typed API classes do not offer for arbitrary kinds.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

#: Who owns the fields install sets (`kubectl get --show-managed-fields` shows it).
FIELD_MANAGER = "meshcp-install"


class ApiCallError(Exception):
    """A call that failed: the API's status and message, or why no answer came."""

    def __init__(self, what: str, status: int, message: str) -> None:
        super().__init__(f"{what}: {message}" if status == 0 else f"{what}: {status} {message}")
        self.status = status


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]


class Api:
    """The calls, on one ApiClient; every call gives up after `timeout` seconds."""

    def __init__(self, client: ApiClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    @property
    def host(self) -> str:
        return str(getattr(self._client.configuration, "host", ""))

    async def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        ok_missing: bool = False,
    ) -> Answer:
        try:
            response: aiohttp.ClientResponse = await self._client.call_api(
                path,
                method,
                query_params=query or [],
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=aiohttp.ClientTimeout(total=self._timeout),
            )
            try:
                text = await response.text()
            finally:
                response.release()
        except TimeoutError:
            raise ApiCallError(what, 0, f"no answer from {self.host} within {self._timeout:g} s") from None
        except aiohttp.ClientError as error:
            raise ApiCallError(what, 0, f"cannot reach {self.host}: {error}") from None
        try:
            parsed = json.loads(text) if text else {}
        except ValueError:
            parsed = {}
        parsed = parsed if isinstance(parsed, dict) else {}
        if response.status == 404 and ok_missing:
            return Answer(404, parsed)
        if response.status >= 300:
            message = parsed.get("message") or response.reason or "failed"
            raise ApiCallError(what, response.status, str(message))
        return Answer(response.status, parsed)

    async def apply(self, path: str, document: dict[str, Any], what: str) -> Answer:
        """Server-side apply of `document` at its own `path`, taking over conflicting fields
        (install is the owner of what the chart sets)."""
        return await self._call(
            "PATCH",
            path,
            what,
            body=document,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true"), ("fieldValidation", "Strict")],
            content_type="application/apply-patch+yaml",
        )

    async def get(self, path: str, what: str, *, ok_missing: bool = False) -> Answer:
        return await self._call("GET", path, what, ok_missing=ok_missing)

    async def delete(self, path: str, what: str) -> Answer:
        """Delete (dependents in the background); 404 is an answer, not an error."""
        return await self._call(
            "DELETE", path, what, body={"propagationPolicy": "Background"}, ok_missing=True
        )

    async def create(self, path: str, document: dict[str, Any], what: str) -> Answer:
        return await self._call("POST", path, what, body=document)

    async def close(self) -> None:
        await self._client.close()


async def poll(condition: Any, deadline: float, interval: float = 0.5) -> bool:
    """Await `condition()` until it is true or the loop's clock passes `deadline`."""
    loop = asyncio.get_running_loop()
    while True:
        if await condition():
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
