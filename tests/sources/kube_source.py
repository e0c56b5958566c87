"""The Kubernetes source running against the emulator, for its tests: started with a given
API server address, its events collected, its backoff sleeps recorded (and held when a
test says so), and waits on the watch requests it makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from meshcp.sources.events import Delete, Event, Invalid, Resolved, Synced, Upsert
from meshcp.sources.kubernetes import KubernetesSource
from meshcp.sources.kubernetes_watch import Resource, WatchObserver, WatchSettings
from tests.sources.kube_fixtures import Emulator
from tests.sources.kube_objects import url_of

TIMEOUT = 10.0


class Collector:
    """The emit callback: events into a queue, taken with timeouts."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    def __call__(self, event: Event) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> Event:
        async with asyncio.timeout(TIMEOUT):
            return await self.queue.get()

    async def until(self, predicate: Callable[[Event], bool]) -> list[Event]:
        """Every event up to and including the first that matches."""
        events: list[Event] = []
        while True:
            event = await self.next()
            events.append(event)
            if predicate(event):
                return events

    def drain(self) -> list[Event]:
        events = []
        while not self.queue.empty():
            events.append(self.queue.get_nowait())
        return events


def is_synced(event: Event) -> bool:
    return isinstance(event, Synced)


def upsert_of(name: str) -> Callable[[Event], bool]:
    return lambda event: isinstance(event, Upsert) and event.obj.ref.name == name


class Sleeps:
    """The source's backoff sleep: records each wait; a test may hold the next one."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.called = asyncio.Condition()
        self.gate: asyncio.Event | None = None

    async def __call__(self, seconds: float) -> None:
        async with self.called:
            self.waits.append(seconds)
            self.called.notify_all()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(TIMEOUT), self.called:
            await self.called.wait_for(lambda: len(self.waits) >= count)


async def start(
    host: str,
    collector: Collector,
    sleeps: Sleeps | None = None,
    settings: WatchSettings | None = None,
    observer: WatchObserver | None = None,
) -> tuple[asyncio.Task[None], Sleeps]:
    sleeps = sleeps or Sleeps()

    async def factory() -> ApiClient:
        return ApiClient(Configuration(host=host))

    source = KubernetesSource(
        collector,
        api_client_factory=factory,
        sleep=sleeps,
        settings=settings or WatchSettings(page_size=2),
        observer=observer,
    )
    return asyncio.create_task(source.run()), sleeps


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def wait_watches(k: Emulator, resource: Resource, count: int) -> None:
    """Until `count` watch requests of `resource` have arrived (the source lists and emits
    synchronously before each watch request, so everything of that list has been emitted)."""
    async with asyncio.timeout(TIMEOUT):
        await k.wait_watches(url_of(resource), count)


def refs(events: list[Event]) -> list[tuple[str, str]]:
    out = []
    for event in events:
        match event:
            case Upsert(obj=obj):
                out.append(("upsert", str(obj.ref)))
            case Delete(ref=ref):
                out.append(("delete", str(ref)))
            case Invalid(problem=problem):
                out.append(("invalid", str(problem.ref)))
            case Resolved(ref=ref):
                out.append(("resolved", str(ref)))
            case Synced(source=name):
                out.append(("synced", name))
    return out
