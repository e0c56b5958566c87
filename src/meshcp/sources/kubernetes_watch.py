"""The list/watch loop for one Kubernetes resource, in kopf's three layers.

1. Forever: list, then watch; after a failure, wait (exponential backoff, reset once a
   watch stream is open again) and start over.
2. List every page (`limit`/`continue`), hand the complete set to the consumer, then watch
   from the list's `resourceVersion`, following bookmarks; a `410 Gone` means the version is
   too old to resume from, so list again at once (the consumer turns the new list into
   differences). A second 410 before the watch made progress (an event, or a stream the
   server ended cleanly) is no longer compaction but an API (or something in front of it)
   that refuses every watch: from then on each relist waits, with the same back-off as
   failures, and the kind counts as failing until the watch makes progress again.
3. One watch is one HTTP stream with a server-side `timeoutSeconds` and a client-side read
   timeout; a stream the server ends cleanly is resumed from the last version seen.

Only raw HTTP through kubernetes_asyncio's `ApiClient` (its configuration, authentication
and TLS): the generated API classes would deserialize every object into models we do not
use, and the watch helper hides the events this loop must see (bookmarks, errors).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import ClientResponse

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

log = logging.getLogger("meshcp.sources.kubernetes")

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Resource:
    """A kind as the API serves it: `group` is "" for the core API."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """The cluster-wide collection (every namespace for namespaced kinds)."""
        if self.group:
            return f"/apis/{self.group}/{self.version}/{self.plural}"
        return f"/api/{self.version}/{self.plural}"


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """How the loop talks to the API server."""

    #: Objects per list page (`limit`); the server hands a `continue` token for the rest.
    page_size: int = 500
    #: Asked of the server (`timeoutSeconds`): it ends each watch stream after this long,
    #: and the loop resumes it from the last resourceVersion seen.
    timeout_seconds: int = 300
    #: Client-side inactivity timeout of a watch stream: no byte for this long (the server
    #: sends bookmarks, and should have ended the stream by then) means a dead connection.
    read_timeout: float = 330.0
    #: Timeout of each list request, and of connecting for a watch.
    request_timeout: float = 60.0
    #: First wait after a failure; doubled after each further failure, up to `backoff_max`.
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


class Consumer(Protocol):
    """Receives what the loop learns; both calls are synchronous."""

    def listed(self, resource: Resource, items: list[Mapping[str, Any]]) -> None:
        """Every object that exists now (after the first list, and after each relist)."""

    def changed(self, resource: Resource, event_type: str, obj: Mapping[str, Any]) -> None:
        """A watch event: `ADDED`, `MODIFIED` or `DELETED`."""


class WatchObserver(Protocol):
    """Counts what the loops do (the controller's metrics); both calls must not block."""

    def watch_event(self, kind: str, event_type: str) -> None:
        """A watch event of `kind`: `ADDED`, `MODIFIED` or `DELETED`."""

    def watch_restart(self, kind: str, reason: str) -> None:
        """The loop of `kind` starts over with a fresh list: `expired` (410 Gone),
        `error` (a failed request or stream) or `not_served` (404)."""

    def watch_failing(self, kind: str, failing: bool) -> None:
        """The loop of `kind` cannot follow the API (True, after an error or a second 410 in
        a row: it retries with back-off) or follows it again (False, once a watch stream is
        open again, or after a 410 streak once the watch made progress)."""

    def watch_backoff(self, kind: str, seconds: float) -> None:
        """The loop of `kind` waits `seconds` before starting over (0: it follows the API)."""


class _Unobserved:
    def watch_event(self, kind: str, event_type: str) -> None:
        pass

    def watch_restart(self, kind: str, reason: str) -> None:
        pass

    def watch_failing(self, kind: str, failing: bool) -> None:
        pass

    def watch_backoff(self, kind: str, seconds: float) -> None:
        pass


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if message else f"HTTP {status}")
        self.status = status


class _NotServed(Exception):
    """The server does not serve the resource (404: e.g. its CRD is not installed)."""


class _Gone(Exception):
    """The resourceVersion to resume from is too old (410): list again."""


#: Failures after which the loop waits and starts over with a fresh list.
_RETRIABLE = (aiohttp.ClientError, TimeoutError, OSError, ApiError, ValueError)


class ListWatch:
    """Keeps one consumer informed of one resource until cancelled."""

    def __init__(
        self,
        api_client: ApiClient,
        resource: Resource,
        consumer: Consumer,
        *,
        label_selector: str = "",
        settings: WatchSettings | None = None,
        sleep: Sleep = asyncio.sleep,
        observer: WatchObserver | None = None,
    ) -> None:
        self.resource = resource
        self._api = api_client
        self._consumer = consumer
        self._observer = observer or _Unobserved()
        self._selector = label_selector
        self._settings = settings or WatchSettings()
        self._sleep = sleep
        self._backoff = self._settings.backoff_initial
        #: After an error or a 410 streak, until the watch works again (see `_recovered`).
        self._failing = False
        #: The kind answered 404 (its CRD is not installed), until it is served.
        self._not_served = False
        #: 410s in a row, with no watch progress in between (see `_progressed`).
        self._expired = 0

    async def run(self) -> None:
        self._backoff = self._settings.backoff_initial
        while True:
            phase = "listing"
            try:
                version = await self._list()
                phase = "watching"
                while True:
                    version = await self._watch(version)
            except _Gone:
                self._observer.watch_restart(self.resource.kind, "expired")
                self._expired += 1
                if self._expired == 1:
                    # Compaction (or a watch cache's window) passed the version: normal, and
                    # a fresh list is all it takes.
                    log.info("watch of %s expired (410 Gone); listing again", self._describe())
                    continue
                await self._retry(f"{phase} {self._describe()} got 410 Gone {self._expired} times in a row")
            except _NotServed:
                self._observer.watch_restart(self.resource.kind, "not_served")
                # Nothing of it can exist: say so (so the source can sync without it) and
                # look again now and then, in case its CRD is installed later.
                if not self._not_served:
                    log.warning(
                        "Kubernetes API %s does not serve %s (is its CRD installed?); checking every %gs",
                        self._host(),
                        self.resource.api_version + "/" + self.resource.plural,
                        self._settings.backoff_max,
                    )
                self._not_served = True
                self._consumer.listed(self.resource, [])
                await self._sleep(self._settings.backoff_max)
            except _RETRIABLE as error:
                self._observer.watch_restart(self.resource.kind, "error")
                await self._retry(f"{phase} {self._describe()} failed: {_reason(error)}")

    async def _retry(self, why: str) -> None:
        """Wait the current back-off, then double it. The first failure is one line; the
        retries after it are debug lines (an API down for an hour is not a thousand
        errors), and `_recovered` is the line that ends it."""
        wait = self._backoff
        if not self._failing:
            self._failing = True
            self._observer.watch_failing(self.resource.kind, True)
            log.error(
                "Kubernetes API %s: %s; retrying with back-off from %gs up to %gs",
                self._host(),
                why,
                wait,
                self._settings.backoff_max,
            )
        else:
            log.debug("Kubernetes API %s: %s; retrying in %gs", self._host(), why, wait)
        self._observer.watch_backoff(self.resource.kind, wait)
        await self._sleep(wait)
        self._backoff = min(self._backoff * 2, self._settings.backoff_max)

    def _opened(self) -> None:
        """A watch stream is open: the API answers lists and watches again. Only now is the
        back-off reset: an API that lists but fails every watch (a 500, a proxy in the way)
        would otherwise be listed again, everything of the kind, every `backoff_initial`.
        Not in a streak of 410s, though: an API that opens the stream only to end it with
        an ERROR 410 event is what the back-off is for; there only `_progressed` counts.
        (One 410 before is routine and changes nothing here: an error after it, then a
        stream that opens, is a recovery like any other.)"""
        if self._expired < 2:
            self._recovered()

    def _progressed(self) -> None:
        """The watch delivered an event or was ended cleanly by the server: it works."""
        self._expired = 0
        self._recovered()

    def _recovered(self) -> None:
        if self._backoff != self._settings.backoff_initial or self._failing:
            self._observer.watch_backoff(self.resource.kind, 0.0)
        self._backoff = self._settings.backoff_initial
        if self._failing:
            self._failing = False
            self._observer.watch_failing(self.resource.kind, False)
            log.info("watching %s works again", self._describe())
        if self._not_served:
            self._not_served = False
            log.info("Kubernetes API %s serves %s now", self._host(), self._describe())

    # --- list ---------------------------------------------------------------------------

    async def _list(self) -> str:
        items: list[Mapping[str, Any]] = []
        token = ""
        while True:
            query: list[tuple[str, Any]] = [("limit", self._settings.page_size)]
            if token:
                query.append(("continue", token))
            if self._selector:
                query.append(("labelSelector", self._selector))
            limits = aiohttp.ClientTimeout(total=self._settings.request_timeout)
            try:
                response = await self._get(query, limits)
            except ApiError as error:
                if error.status == 410:  # the continue token expired
                    raise _Gone from None
                if error.status == 404:
                    raise _NotServed from None
                raise
            try:
                body = await response.json(content_type=None)
            finally:
                response.release()
            if not isinstance(body, Mapping) or not isinstance(body.get("items") or [], list):
                raise ValueError(f"not a list of {self.resource.plural}")
            items.extend(item for item in body.get("items") or [] if isinstance(item, Mapping))
            metadata = body.get("metadata") or {}
            token = str(metadata.get("continue") or "")
            if not token:
                self._consumer.listed(self.resource, items)
                return str(metadata.get("resourceVersion") or "")

    # --- watch --------------------------------------------------------------------------

    async def _watch(self, version: str) -> str:
        """Follow one watch stream; the resourceVersion to resume from when it ends."""
        settings = self._settings
        query: list[tuple[str, Any]] = [
            ("watch", True),
            ("allowWatchBookmarks", True),
            ("timeoutSeconds", settings.timeout_seconds),
        ]
        if version:
            query.append(("resourceVersion", version))
        if self._selector:
            query.append(("labelSelector", self._selector))
        connect = settings.request_timeout
        try:
            # aiohttp's connect timeouts end once connected: a server that accepts and never
            # answers would hold this watch (and the kind) for ever without the outer bound.
            async with asyncio.timeout(connect):
                response = await self._get(
                    query, aiohttp.ClientTimeout(connect=connect, sock_connect=connect)
                )
        except TimeoutError:
            raise _WatchFailure(f"no answer within {connect:g}s") from None
        except ApiError as error:
            if error.status == 410:
                raise _Gone from None
            raise _WatchFailure(str(error)) from None
        self._opened()
        try:
            buffer = b""
            while True:
                try:
                    async with asyncio.timeout(settings.read_timeout):
                        chunk = await response.content.readany()
                except TimeoutError:
                    raise _WatchFailure(f"no data for {settings.read_timeout:g}s") from None
                except aiohttp.ClientError as error:
                    raise _WatchFailure(_reason(error)) from None
                if not chunk:
                    self._progressed()
                    return version  # the server ended the stream (timeoutSeconds): resume
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        version = self._event(line, version)
        finally:
            response.close()

    def _event(self, line: bytes, version: str) -> str:
        try:
            event = json.loads(line)
        except ValueError:
            raise _WatchFailure("malformed watch event") from None
        if not isinstance(event, Mapping):
            raise _WatchFailure("malformed watch event")
        kind, obj = event.get("type"), event.get("object")
        obj = obj if isinstance(obj, Mapping) else {}
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Gone
            raise _WatchFailure(f"error event {code}: {obj.get('message', '')}")
        metadata = obj.get("metadata")
        new_version = metadata.get("resourceVersion") if isinstance(metadata, Mapping) else None
        if kind in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            self._progressed()
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._observer.watch_event(self.resource.kind, kind)
            self._consumer.changed(self.resource, kind, obj)
        elif kind != "BOOKMARK":
            log.warning("watch of %s: skipping an event of unknown type %r", self._describe(), kind)
            return version
        return str(new_version) if new_version else version

    # --- HTTP ---------------------------------------------------------------------------

    async def _get(self, query: list[tuple[str, Any]], limits: aiohttp.ClientTimeout) -> ClientResponse:
        """A GET of the resource's collection; the response, still unread, if it succeeded."""
        response: aiohttp.ClientResponse = await self._api.call_api(
            self.resource.path,
            "GET",
            query_params=query,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=limits,
        )
        if response.status >= 300:
            try:
                text = await response.text()
            finally:
                response.release()
            raise ApiError(response.status, _status_message(text))
        return response

    def _describe(self) -> str:
        return self.resource.plural + (f" ({self._selector})" if self._selector else "")

    def _host(self) -> str:
        return str(getattr(self._api.configuration, "host", ""))


class _WatchFailure(ValueError):
    """A watch stream broke: connection lost, silent too long, or an error event."""


def _status_message(text: str) -> str:
    try:
        status = json.loads(text)
    except ValueError:
        return text.strip()[:200]
    if isinstance(status, Mapping) and isinstance(status.get("message"), str):
        return str(status["message"])
    return text.strip()[:200]


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError) and not str(error):
        return "timed out"
    return str(error) or type(error).__name__
