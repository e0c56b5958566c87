"""The store: sync gating, debounce (window and maximum wait) on a fake clock, and problems."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from meshcp.model.core import ServiceAccount
from meshcp.model.meta import Meta, ObjectRef, frozen_map
from meshcp.model.state import MeshState, Problem
from meshcp.runtime.store import Store
from meshcp.sources.events import Delete, Invalid, Resolved, Synced, Upsert

WINDOW = 2.0
MAX_WAIT = 5.0


class FakeTime:
    """A clock that moves only when told, and sleepers it wakes as it passes their deadline."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._slept = asyncio.Event()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + delay, future))
        self._slept.set()
        await future

    def advance(self, delta: float) -> None:
        self.now += delta
        due = [future for deadline, future in self.sleepers if deadline <= self.now]
        self.sleepers = [(deadline, future) for deadline, future in self.sleepers if deadline > self.now]
        for future in due:
            future.set_result(None)

    async def asleep(self) -> float:
        """Wait until someone sleeps; return the earliest deadline."""
        async with asyncio.timeout(1):
            while not self.sleepers:
                self._slept.clear()
                await self._slept.wait()
        return min(deadline for deadline, _ in self.sleepers)


def account(name: str, **labels: str) -> ServiceAccount:
    return ServiceAccount(Meta(name, "shop", frozen_map(labels)))


def ref(name: str) -> ObjectRef:
    return ObjectRef("ServiceAccount", "shop", name)


def problem(name: str, reason: str = "bad") -> Problem:
    return Problem(ref(name), reason, f"{name}.yaml:1")


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def store(time: FakeTime) -> Store:
    store = Store(window=WINDOW, max_wait=MAX_WAIT, clock=time.clock, sleep=time.sleep)
    store.expect("files")
    return store


async def first_state(store: Store) -> tuple[AsyncGenerator[MeshState, None], MeshState]:
    store.apply(Synced("files"))
    states = store.states()
    return states, await asyncio.wait_for(anext(states), 1)


async def let_run() -> None:
    """Give other tasks a chance: only for asserting that something did NOT happen."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_nothing_before_every_source_is_synced_then_the_first_state_at_once(
    store: Store, time: FakeTime
) -> None:
    store.expect("kubernetes")
    states = store.states()
    pending = asyncio.ensure_future(anext(states))
    store.apply(Upsert(account("web")))
    store.apply(Synced("files"))
    await let_run()
    assert not pending.done()

    store.apply(Upsert(account("db")))
    store.apply(Synced("kubernetes"))
    state = await asyncio.wait_for(pending, 1)
    assert time.sleepers == []  # no debounce wait before the first state
    assert state.revision == 1
    assert set(state.objects) == {ref("web"), ref("db")}
    await states.aclose()


async def test_an_empty_mesh_is_still_served_once_synced(store: Store) -> None:
    states, state = await first_state(store)
    assert state.revision == 1 and dict(state.objects) == {}
    await states.aclose()


async def test_a_state_follows_a_quiet_window(store: Store, time: FakeTime) -> None:
    states, _ = await first_state(store)
    store.apply(Upsert(account("web")))
    pending = asyncio.ensure_future(anext(states))
    assert await time.asleep() == WINDOW

    time.advance(1.0)
    store.apply(Upsert(account("db")))  # the window restarts at t=1
    time.advance(1.0)
    assert await time.asleep() == 3.0
    assert not pending.done()

    time.advance(1.0)
    state = await asyncio.wait_for(pending, 1)
    assert state.revision == 2
    assert set(state.objects) == {ref("web"), ref("db")}
    await states.aclose()


async def test_a_steady_trickle_is_cut_at_the_maximum_wait_after_the_bursts_first_event(
    store: Store, time: FakeTime
) -> None:
    states, _ = await first_state(store)
    store.apply(Upsert(account("a0")))  # t=0: the burst starts
    pending = asyncio.ensure_future(anext(states))
    assert await time.asleep() == 2.0
    time.advance(1.5)
    store.apply(Upsert(account("a1")))  # t=1.5
    time.advance(0.5)  # t=2: the window now ends at 3.5
    assert await time.asleep() == 3.5
    time.advance(1.5)
    store.apply(Upsert(account("a2")))  # t=3.5: the window would end at 5.5 ...
    assert await time.asleep() == MAX_WAIT  # ... but the burst is cut at 0 + 5
    assert not pending.done()
    time.advance(1.5)
    state = await asyncio.wait_for(pending, 1)
    assert set(state.objects) == {ref("a0"), ref("a1"), ref("a2")}
    assert state.revision == 2
    await states.aclose()


async def test_changes_that_change_nothing_make_no_state(store: Store, time: FakeTime) -> None:
    store.apply(Upsert(account("web")))
    states, first = await first_state(store)
    store.apply(Upsert(account("web")))  # the same object again
    store.apply(Delete(ref("never-there")))
    store.apply(Resolved(ref("no-problem")))
    pending = asyncio.ensure_future(anext(states))
    time.advance(await time.asleep() - time.now)
    await let_run()
    assert not pending.done()  # settled, found nothing new, waits for the next event

    store.apply(Upsert(account("web", tier="front")))
    time.advance(await time.asleep() - time.now)
    state = await asyncio.wait_for(pending, 1)
    assert state.revision == first.revision + 1
    assert state.objects[ref("web")] == account("web", tier="front")
    await states.aclose()


async def test_problems_are_kept_by_ref_until_resolved_upserted_or_deleted(
    store: Store, time: FakeTime
) -> None:
    states, _ = await first_state(store)

    async def settled() -> MeshState:
        pending = asyncio.ensure_future(anext(states))
        time.advance(await time.asleep() - time.now)
        return await asyncio.wait_for(pending, 1)

    store.apply(Invalid(problem("a", "first")))
    store.apply(Invalid(problem("b")))
    store.apply(Invalid(problem("c")))
    store.apply(Invalid(problem("d")))
    store.apply(Invalid(problem("a", "second")))  # replaces the first for the same ref
    state = await settled()
    assert state.problems == (problem("a", "second"), problem("b"), problem("c"), problem("d"))
    assert dict(state.objects) == {}

    store.apply(Resolved(ref("a")))
    store.apply(Upsert(account("b")))  # a valid version resolves its problem
    store.apply(Delete(ref("c")))  # so does deleting it
    state = await settled()
    assert state.problems == (problem("d"),)
    assert set(state.objects) == {ref("b")}
    await states.aclose()


async def test_an_invalid_version_keeps_the_old_object(store: Store, time: FakeTime) -> None:
    store.apply(Upsert(account("web", version="1")))
    states, first = await first_state(store)
    store.apply(Invalid(problem("web", "metadata.labels.version: must be a string")))
    pending = asyncio.ensure_future(anext(states))
    time.advance(await time.asleep() - time.now)
    state = await asyncio.wait_for(pending, 1)
    assert state.objects[ref("web")] == account("web", version="1")
    assert state.problems == (problem("web", "metadata.labels.version: must be a string"),)
    assert first.problems == ()  # states are immutable snapshots
    await states.aclose()


async def test_the_default_clock_is_the_event_loops() -> None:
    store = Store(window=0.01, max_wait=0.05)
    store.expect("files")
    store.apply(Synced("files"))
    states = store.states()
    await asyncio.wait_for(anext(states), 1)
    store.apply(Upsert(account("web")))
    state = await asyncio.wait_for(anext(states), 1)
    assert set(state.objects) == {ref("web")}
    await states.aclose()


def test_window_longer_than_max_wait_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        Store(window=2, max_wait=1)
