"""Kubernetes Events for objects meshcp skipped, so `kubectl describe` shows users why.

An invalid or conflicting SMI object is reported where users look first: a Warning event
on the object itself (reason `MeshcpInvalid`), besides the log line, the metric and
/debug/problems. Events are posted in the background; a failure to post is logged and
never affects the mesh.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from meshcp.model.state import Problem
from meshcp.sources.kubernetes import RESOURCES

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient, CoreV1Api, CoreV1Event

log = logging.getLogger("meshcp.kubernetes.events")

REASON = "MeshcpInvalid"
COMPONENT = "meshcp-controller"
_API_VERSIONS = {r.kind: f"{r.group}/{r.version}" if r.group else r.version for r in RESOURCES}


def event_for(problem: Problem, now: datetime.datetime) -> CoreV1Event | None:
    """The Warning event for a problem of an API object (None for files and documents)."""
    # Imported here, as in meshcp.kube.client: a controller on files never pays for it.
    from kubernetes_asyncio.client import CoreV1Event, V1EventSource, V1ObjectMeta, V1ObjectReference

    ref = problem.ref
    api_version = _API_VERSIONS.get(ref.kind)
    if api_version is None:
        return None
    namespace = ref.namespace or "default"
    digest = hashlib.sha256(f"{ref}|{problem.reason}".encode()).hexdigest()[:10]
    return CoreV1Event(
        metadata=V1ObjectMeta(name=f"{ref.name}.meshcp-{digest}", namespace=namespace),
        involved_object=V1ObjectReference(
            api_version=api_version, kind=ref.kind, name=ref.name, namespace=ref.namespace or None
        ),
        reason=REASON,
        message=problem.reason,
        type="Warning",
        source=V1EventSource(component=COMPONENT),
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )


class EventRecorder:
    """Posts one Warning event per new problem; `report` never blocks."""

    def __init__(
        self,
        api_client_factory: Callable[[], Awaitable[ApiClient]],
        *,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        """`leading`: whether this replica leads; the others post nothing (every replica
        sees the same problems, and one event each is what users should get)."""
        self._factory = api_client_factory
        self._leading = leading
        self._queue: asyncio.Queue[Problem] = asyncio.Queue()
        self.posted = 0

    def report(self, problem: Problem) -> None:
        if self._leading():
            self._queue.put_nowait(problem)

    async def drain(self) -> None:
        """Until every reported problem has been handled (posted, or given up on)."""
        await self._queue.join()

    async def run(self) -> None:
        from kubernetes_asyncio.client import CoreV1Api

        async with await self._factory() as api_client:
            core = CoreV1Api(api_client)
            while True:
                problem = await self._queue.get()
                try:
                    if self._leading():  # queued while leading, and still leading
                        await self._post(core, problem)
                finally:
                    self._queue.task_done()

    async def _post(self, core: CoreV1Api, problem: Problem) -> None:
        from kubernetes_asyncio.client.rest import ApiException

        event = event_for(problem, datetime.datetime.now(datetime.UTC))
        if event is None:
            return
        try:
            await core.create_namespaced_event(event.metadata.namespace, event)
            self.posted += 1
        except ApiException as error:
            if error.status != 409:  # 409: the same event was posted before
                log.warning("could not post an event for %s: %s", problem.ref, error.reason)
        except OSError as error:
            log.warning("could not post an event for %s: %s", problem.ref, error)
