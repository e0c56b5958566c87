"""The store: source events in, debounced immutable `MeshState` revisions out.

Sources report every change as it happens; compiling and pushing per event would redo the
whole mesh for each line of a `kubectl apply`. The store folds events into one pending
change and hands out a new state once they settle: after `window` without events, but no
later than `max_wait` after the first event of a burst, so a steady trickle cannot starve the
proxies. Nothing is handed out before every expected source is synced: a cold start never
serves an empty or half-read mesh.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable

from meshcp.model.meta import ObjectRef
from meshcp.model.state import MeshObject, MeshState, Problem
from meshcp.sources.events import Delete, Event, Invalid, Resolved, Synced, Upsert

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class Store:
    """Applies events (synchronously, from any source task) and yields settled states.

    Problems are kept by ref: a later `Invalid` replaces the one before; `Resolved`, a valid
    `Upsert` or a `Delete` of the ref removes it. An `Invalid` never removes an object: the
    last good version stays in force while the bad one is reported.

    `check` is asked about every valid object: a problem it finds (an object the running
    controller cannot honour as it was started, `runtime.mesh_checks`) is kept for the
    object's ref while the object itself stays in force.

    `states()` is for one consumer. `clock`/`sleep` default to the event loop's; tests pass
    their own to step time without waiting for it. `mesh_name`: the controller's
    `--mesh-name`, carried by every state (`MeshState.mesh_name`).
    """

    def __init__(
        self,
        *,
        window: float,
        max_wait: float,
        clock: Clock = _loop_time,
        sleep: Sleep = asyncio.sleep,
        check: Callable[[MeshObject], Problem | None] | None = None,
        mesh_name: str | None = None,
    ) -> None:
        if window < 0 or max_wait < window:
            raise ValueError(f"need 0 <= window <= max_wait, got window={window}, max_wait={max_wait}")
        self._window = window
        self._max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self._check = check
        self._state = MeshState(mesh_name=mesh_name)
        self._pending: dict[ObjectRef, MeshObject | None] = {}  # None: delete
        self._problems: dict[ObjectRef, Problem] = {}
        self._expected: set[str] = set()
        self._synced: set[str] = set()
        self._first_event: float | None = None
        self._last_event = 0.0
        self._wake = asyncio.Event()

    def set_debounce(self, window: float, max_wait: float) -> None:
        """New debounce bounds (MeshConfig's), from the next burst of events on."""
        if window < 0 or max_wait < window:
            raise ValueError(f"need 0 <= window <= max_wait, got window={window}, max_wait={max_wait}")
        self._window, self._max_wait = window, max_wait

    @property
    def debounce(self) -> tuple[float, float]:
        return self._window, self._max_wait

    @property
    def state(self) -> MeshState:
        """The last state handed out (revision 0, empty, before the first)."""
        return self._state

    def expect(self, source: str) -> None:
        """No state is handed out until `source` has sent `Synced`. Call before `states()`."""
        self._expected.add(source)

    @property
    def synced(self) -> bool:
        return self._expected <= self._synced

    def apply(self, event: Event) -> None:
        match event:
            case Upsert(obj=obj):
                self._pending[obj.ref] = obj
                self._problems.pop(obj.ref, None)
                if self._check is not None and (problem := self._check(obj)) is not None:
                    self._problems[obj.ref] = problem
            case Delete(ref=ref):
                self._pending[ref] = None
                self._problems.pop(ref, None)
            case Invalid(problem=problem):
                self._problems[problem.ref] = problem
            case Resolved(ref=ref):
                self._problems.pop(ref, None)
            case Synced(source=source):
                self._synced.add(source)
                self._wake.set()
                return
        now = self._clock()
        if self._first_event is None:
            self._first_event = now
        self._last_event = now
        self._wake.set()

    async def states(self) -> AsyncGenerator[MeshState, None]:
        """Each settled state once; the first as soon as every expected source is synced."""
        while not self.synced:
            await self._woken()
        self._state = self._next_state() or self._state.with_changes()
        yield self._state
        while True:
            while self._first_event is None:
                await self._woken()
            await self._settle()
            state = self._next_state()
            if state is not None:
                self._state = state
                yield state

    async def _woken(self) -> None:
        self._wake.clear()
        await self._wake.wait()

    async def _settle(self) -> None:
        """Wait until `window` has passed since the last event, or `max_wait` since the first.
        Later events only move the deadline forward, so one re-check per sleep suffices."""
        while self._first_event is not None:
            deadline = min(self._last_event + self._window, self._first_event + self._max_wait)
            remaining = deadline - self._clock()
            if remaining <= 0:
                return
            await self._sleep(remaining)

    def _next_state(self) -> MeshState | None:
        """The pending changes as the next state, or None when they change nothing."""
        current = self._state.objects
        upserts = [obj for ref, obj in self._pending.items() if obj is not None and current.get(ref) != obj]
        deletes = [ref for ref, obj in self._pending.items() if obj is None and ref in current]
        problems = tuple(self._problems[ref] for ref in sorted(self._problems))
        self._pending.clear()
        self._first_event = None
        if not upserts and not deletes and problems == self._state.problems:
            return None
        return self._state.with_changes(upserts, deletes, problems)
