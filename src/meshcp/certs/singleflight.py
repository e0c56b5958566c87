"""Coalescing concurrent calls for the same key into one.

When a hundred proxies of one service account connect at once, they must share one
certificate: one issuance, not a hundred, and one key, so all of them present the same
certificate. No background task is spawned: the first caller does the work and the
others wait for its result, so the work lives exactly as long as someone wants it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LeaderCancelled(Exception):
    """The caller doing the work was cancelled; a waiting caller takes over."""


class SingleFlight(Generic[K, V]):
    """Runs at most one call per key at a time and shares its outcome."""

    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Future[V]] = {}
        self._waiting: dict[K, int] = {}

    def in_flight(self, key: K) -> bool:
        return key in self._flights

    def waiting(self, key: K) -> int:
        """How many callers are waiting for the call in flight for `key` (for metrics)."""
        return self._waiting.get(key, 0)

    async def do(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        """The result of `call()`, or of the call already running for `key`.

        Exceptions are shared too. If the caller doing the work is cancelled, the others
        are not: one of them starts the call again.
        """
        while (flight := self._flights.get(key)) is not None:
            self._waiting[key] = self._waiting.get(key, 0) + 1
            try:
                # shield: a waiter being cancelled must not cancel the shared future.
                return await asyncio.shield(flight)
            except _LeaderCancelled:
                continue
            finally:
                self._waiting[key] -= 1
                if not self._waiting[key]:
                    del self._waiting[key]
        flight = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        try:
            result = await call()
        except asyncio.CancelledError:
            self._fail(flight, _LeaderCancelled())
            raise
        except BaseException as exc:
            self._fail(flight, exc)
            raise
        else:
            flight.set_result(result)
            return result
        finally:
            del self._flights[key]

    @staticmethod
    def _fail(flight: asyncio.Future[V], exc: BaseException) -> None:
        flight.set_exception(exc)
        # Mark it retrieved: with no waiters, asyncio would otherwise log it as lost.
        flight.exception()
