"""A bound on the response bytes the server is writing at once, over all streams.

A response is framed for its stream (the shared body plus its nonce, then grpclib's
message prefix: two copies) before it is written, and stays in memory until the
connection has taken all of it. When thousands of proxies ask at once (a cold start,
a change every proxy holds) and each response is large (a permissive mesh: ~1 MB per
proxy), every stream would hold its copies while the connections drain, and the
controller's peak memory would grow with proxies x response size. Streams instead wait
for room before they frame anything, in arrival order; what is written per second does
not change (the connections drain at the rate the proxies read), only how much waits
in memory.

The bound is soft by one turn: a stream given room frames everything due for it and
counts it, even past the limit; the next stream waits until the bytes written bring the
total under the limit again.
"""

from __future__ import annotations

import asyncio
from collections import deque

#: Default limit: enough for a few hundred typical responses in flight.
DEFAULT_SEND_BUDGET = 64 * 1024 * 1024


class SendBudget:
    """Counts the bytes being written; `room` waits, first come first served, for the
    count to fall under `limit`. After `room`, the caller must call `hold` exactly once
    (with 0 when it sent nothing), then `release` what it held once written."""

    def __init__(self, limit: int = DEFAULT_SEND_BUDGET) -> None:
        if limit < 1:
            raise ValueError("the send budget must be at least 1 byte")
        self.limit = limit
        #: Bytes counted and not yet released.
        self.held = 0
        #: The highest `held` seen (for /metrics and the benchmarks).
        self.peak = 0
        #: Times a stream waited for room.
        self.waits = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        #: A stream was given room and has not said yet what it holds: nobody else is let
        #: go until it does, so two streams never both pass on the same room.
        self._turn_taken = False

    async def room(self) -> None:
        """Return once this caller may frame and count its responses."""
        if not self._turn_taken and not self._waiters and self.held < self.limit:
            self._turn_taken = True
            return
        self.waits += 1
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # Given the turn as it was cancelled: hand the turn on.
                self._turn_taken = False
                self._let_go()
            else:
                self._waiters.remove(waiter)
            raise

    def hold(self, size: int) -> None:
        """Count `size` bytes framed after `room` (0: nothing to send); ends the turn."""
        self.held += size
        self.peak = max(self.peak, self.held)
        self._turn_taken = False
        self._let_go()

    def release(self, size: int) -> None:
        """`size` bytes held are written (or dropped with their stream)."""
        self.held -= size
        self._let_go()

    def _let_go(self) -> None:
        """Give the turn to the first waiter still waiting, if there is room."""
        while not self._turn_taken and self._waiters and self.held < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._turn_taken = True
