"""Readiness: the controller serves nothing until every source has synced once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


class Readiness:
    """The set of sources that have not reported their first full sync yet.

    A cold start must never push an empty mesh: the ADS writer waits on `wait()` and
    /readyz answers from `ready`.
    """

    def __init__(self, pending: Iterable[str] = ()) -> None:
        self._pending = set(pending)
        self._synced: set[str] = set()
        self._event = asyncio.Event()
        if not self._pending:
            self._event.set()

    @property
    def ready(self) -> bool:
        return self._event.is_set()

    @property
    def pending(self) -> list[str]:
        return sorted(self._pending)

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
