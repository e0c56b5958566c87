"""Readiness: the controller serves nothing until every source has synced once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class Readiness:
    """The set of sources that have not reported their first full sync yet, and of parts
    that are down for now (retrying).

    A cold start must never push an empty mesh: the ADS writer waits on `wait()` (the
    first sync only) and /readyz answers from `ready`. A part that is down after the first
    sync (the Kubernetes API unreachable) turns `ready` false, so that new proxies go to a
    replica that follows the mesh, but does not hold back `wait()`: proxies already here
    keep being served the last state seen, which is better than nothing.
    """

    def __init__(self, pending: Iterable[str] = ()) -> None:
        self._pending = set(pending)
        self._synced: set[str] = set()
        self._down: dict[str, str] = {}
        self._event = asyncio.Event()
        if not self._pending:
            self._event.set()

    @property
    def ready(self) -> bool:
        return self._event.is_set() and not self._down

    @property
    def pending(self) -> list[str]:
        return sorted(self._pending | {f"{part} ({why})" for part, why in self._down.items()})

    def down(self, part: str, why: str) -> None:
        """`part` cannot do its job for now and retries (`why`: a few words): not ready
        until `up`, though streams are still served (see the class docstring)."""
        self._down[part] = why

    def up(self, part: str) -> None:
        """`part` works again."""
        self._down.pop(part, None)

    def expect(self, source: str) -> None:
        """Register a source that must sync before anything is served (a readiness that was
        only vacuously true, with nothing to wait for, becomes false until it syncs)."""
        if source not in self._synced:
            self._pending.add(source)
            self._event.clear()

    def fail(self, part: str) -> None:
        """A part the controller cannot serve without stopped for good: not ready again
        (`/readyz` names it), whatever synced before."""
        self._pending.add(f"{part} (failed)")
        self._event.clear()

    def mark_synced(self, source: str) -> None:
        self._synced.add(source)
        self._pending.discard(source)
        if not self._pending:
            self._event.set()

    async def wait(self) -> None:
        await self._event.wait()
