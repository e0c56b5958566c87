"""What both ADS stream kinds share: outgoing responses, NACK records, the observer."""

from __future__ import annotations

import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from meshcp._proto.envoy.config.core.v3 import Node
from meshcp._proto.google.rpc import Status


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One framed response, ready for the wire."""

    type_url: str
    nonce: str
    version: str
    payload: bytes
    names: tuple[str, ...]
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """A rejected response, kept for the debug endpoint and logs."""

    nonce: str
    version: str
    message: str
    names: tuple[str, ...]
    at: float = field(default_factory=time.time)


class Observer(Protocol):
    """Receives protocol events (metrics and logs); must not block."""

    def on_ack(self, type_url: str, latency: float) -> None: ...

    def on_nack(self, node_id: str, type_url: str, nack: Nack) -> None: ...

    def on_stale(self, type_url: str) -> None: ...

    def on_response(self, outgoing: Outgoing) -> None: ...


class NullObserver:
    """An observer that records nothing (tests of the pure protocol)."""

    def on_ack(self, type_url: str, latency: float) -> None:
        pass

    def on_nack(self, node_id: str, type_url: str, nack: Nack) -> None:
        pass

    def on_stale(self, type_url: str) -> None:
        pass

    def on_response(self, outgoing: Outgoing) -> None:
        pass


_T = TypeVar("_T", bound=Hashable)


class Interner(Generic[_T]):
    """Hands out one shared object per distinct value.

    Thousands of streams subscribe to, and are sent, the same name sets; each stream
    keeping its own equal copy was most of its memory. Bounded: when full it starts
    over, which only means later equal values get a new shared object.
    """

    __slots__ = ("_limit", "_values")

    def __init__(self, limit: int = 4096) -> None:
        self._values: dict[_T, _T] = {}
        self._limit = limit

    def __call__(self, value: _T) -> _T:
        found = self._values.get(value)
        if found is None:
            if len(self._values) >= self._limit:
                self._values.clear()
            found = self._values[value] = value
        return found


@dataclass(slots=True)
class Shared:
    """Values thousands of streams hold equal copies of, interned once per server.

    Per server, not per module: two servers in one process (or two tests) share nothing,
    and nothing outlives the server that filled it.
    """

    #: Subscribed name sets (SotW and delta).
    subscriptions: Interner[frozenset[str]] = field(default_factory=Interner)
    #: Names of sent responses (kept for NACK records).
    sent_names: Interner[tuple[str, ...]] = field(default_factory=Interner)


def error_message(status: Status | None) -> str | None:
    """The NACK message of a request's `error_detail`, or None for an ACK."""
    if status is None or (not status.code and not status.message):
        return None
    return status.message or f"error code {status.code}"


@dataclass(slots=True)
class Sent:
    """Bookkeeping of the last response of one type on one stream."""

    nonce: str = ""
    version: str = ""
    names: tuple[str, ...] = ()
    #: `Snapshot.created` of the content sent: push latency runs from there to the ACK.
    created: float = 0.0
    outstanding: bool = False
    acked_version: str = ""
    nack: Nack | None = None

    def settle(
        self, nonce: str, error: str | None, node: Node | None, type_url: str, observer: Observer
    ) -> bool | None:
        """Apply an ACK or NACK of the latest response (`nonce` already checked as current).

        Returns True for an ACK, False for a NACK, None when nothing was awaiting one
        (a later request repeating the same nonce to change its subscription).
        """
        was_outstanding, self.outstanding = self.outstanding, False
        if not was_outstanding:
            return None
        if error is None:
            self.acked_version = self.version
            observer.on_ack(type_url, max(0.0, time.monotonic() - self.created))
            return True
        self.nack = Nack(nonce, self.version, error, self.names)
        observer.on_nack(node.id if node is not None else "", type_url, self.nack)
        return False

    def record(self, outgoing: Outgoing, created: float, intern: Interner[tuple[str, ...]]) -> None:
        self.nonce = outgoing.nonce
        self.version = outgoing.version
        self.names = intern(outgoing.names)
        self.created = created
        self.outstanding = True

    def status(self) -> dict[str, object]:
        nack = self.nack
        return {
            "version_sent": self.version,
            "version_acked": self.acked_version,
            "nonce": self.nonce,
            "awaiting_ack": self.outstanding,
            "last_nack": None
            if nack is None
            else {
                "version": nack.version,
                "message": nack.message,
                "resources": list(nack.names),
                "at": nack.at,
            },
        }
