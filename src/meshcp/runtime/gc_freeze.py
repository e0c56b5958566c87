"""Keeping compiled configuration out of the cyclic garbage collector's walks, for the
`meshcp serve` process only.

What a reconcile round leaves behind (compiled resources, snapshots, policies) lives long
and holds no reference cycles. Profiles of large meshes showed most of a change's time in
full collections walking it, so after a round it is moved out of the collector's reach
(`gc.freeze`); reference counting still frees it. The freeze is process-wide: it also
freezes whatever else is alive at that moment, so it is a decision of the process, made by
its entry point (`cli.commands.serve`), never by a class that tests and benchmarks embed.

It is bounded: every `thaw_rounds` rounds, and at least every `thaw_seconds` even when no
round comes (a quiet mesh), the frozen objects are handed back to the collector, so a
cycle that slipped in is collected after all.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

#: Rounds between thaws, and the longest time between them.
THAW_ROUNDS = 50
THAW_SECONDS = 600.0


class GcFreeze:
    """The process's freeze policy: `after_round` from the reconcile rounds, `run` beside
    the controller for the thaws of a quiet mesh."""

    def __init__(
        self,
        thaw_rounds: int = THAW_ROUNDS,
        thaw_seconds: float = THAW_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
        freeze: Callable[[], None] = gc.freeze,
        unfreeze: Callable[[], None] = gc.unfreeze,
    ) -> None:
        self._thaw_rounds = thaw_rounds
        self._thaw_seconds = thaw_seconds
        self._clock = clock
        self._freeze = freeze
        self._unfreeze = unfreeze
        self._rounds = 0
        self._thawed = clock()
        self.thaws = 0

    def after_round(self) -> None:
        """Freeze what the round left, or thaw when a thaw is due."""
        self._rounds += 1
        if self._rounds % self._thaw_rounds == 0 or self._due():
            self._thaw()
        else:
            self._freeze()

    def tick(self) -> None:
        """Thaw if none came for `thaw_seconds` (no rounds in a quiet mesh)."""
        if self._due():
            self._thaw()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._thaw_seconds / 4)
            self.tick()

    def _due(self) -> bool:
        return self._clock() - self._thawed >= self._thaw_seconds

    def _thaw(self) -> None:
        self._unfreeze()
        self._thawed = self._clock()
        self.thaws += 1
